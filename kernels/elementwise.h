// Elementwise kernels: broadcast binary ops, axpby, outer products, activations and dropout,
// forward and backward.
#pragma once

#include <cstdint>

namespace kvc::kernels {

enum class BinaryOp : uint8_t { add, sub, mul, div };

constexpr int kMaxDims = 8;

// How out[i] finds its operands under numpy broadcasting: out has `ndim` axes of `shape`;
// a_stride/b_stride are each operand's element strides per out axis (0 along broadcast axes).
struct BroadcastIndex {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t a_stride[kMaxDims] = {};
  int64_t b_stride[kMaxDims] = {};
};

#define KVC_ELEMENTWISE_KERNELS                                                                   \
  /* out[i] = a[.] op b[.], n = numel(out) */                                                     \
  template <typename T>                                                                           \
  void binary(BinaryOp op, const T* a, const T* b, T* out, int64_t n,                             \
              const BroadcastIndex& index);                                                       \
  /* y = alpha * x + beta * y (beta == 0 ignores y's old contents, NaN included) */               \
  template <typename T>                                                                           \
  void axpby(T* y, const T* x, int64_t n, T alpha, T beta);                                       \
  /* out[g] (rows, cols) = x[g] (rows) y[g] (cols)^T + beta out[g], g < groups (beta == 0         \
     ignores out's old contents): a rank-1 weight gradient at memory speed, not a k = 1 GEMM */   \
  template <typename T>                                                                           \
  void outer(const T* x, const T* y, T* out, int64_t groups, int64_t rows, int64_t cols, T beta); \
  template <typename T>                                                                           \
  void relu_forward(const T* x, T* y, int64_t n);                                                 \
  /* gx = gy * (y > 0), from the forward's output */                                              \
  template <typename T>                                                                           \
  void relu_backward(const T* y, const T* gy, T* gx, int64_t n);                                  \
  /* exact GELU: 0.5 x (1 + erf(x / sqrt 2)) */                                                   \
  template <typename T>                                                                           \
  void gelu_forward(const T* x, T* y, int64_t n);                                                 \
  template <typename T>                                                                           \
  void gelu_backward(const T* x, const T* gy, T* gx, int64_t n);                                  \
  /* inverted dropout; the mask is philox::keep(seed, offset, i, p), never stored */              \
  template <typename T>                                                                           \
  void dropout_forward(const T* x, T* y, int64_t n, float p, uint64_t seed, uint64_t offset);     \
  template <typename T>                                                                           \
  void dropout_backward(const T* gy, T* gx, int64_t n, float p, uint64_t seed, uint64_t offset);

namespace cpu {
KVC_ELEMENTWISE_KERNELS
}
namespace cuda {
KVC_ELEMENTWISE_KERNELS
}
#undef KVC_ELEMENTWISE_KERNELS

// The explicit instantiations of every launcher above for dtype T, expanded by each backend.
#define KVC_ELEMENTWISE_INSTANTIATE(T)                                                       \
  template void binary<T>(BinaryOp, const T*, const T*, T*, int64_t, const BroadcastIndex&); \
  template void axpby<T>(T*, const T*, int64_t, T, T);                                       \
  template void outer<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, T);              \
  template void relu_forward<T>(const T*, T*, int64_t);                                      \
  template void relu_backward<T>(const T*, const T*, T*, int64_t);                           \
  template void gelu_forward<T>(const T*, T*, int64_t);                                      \
  template void gelu_backward<T>(const T*, const T*, T*, int64_t);                           \
  template void dropout_forward<T>(const T*, T*, int64_t, float, uint64_t, uint64_t);        \
  template void dropout_backward<T>(const T*, T*, int64_t, float, uint64_t, uint64_t);

}  // namespace kvc::kernels
