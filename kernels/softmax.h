// Softmax over one axis, forward and backward.
#pragma once

#include <cstdint>

namespace kvc::kernels {

#define KVC_SOFTMAX_KERNELS                                                          \
  /* x viewed as (outer, n, inner); softmax over n, max-subtracted. CUDA float32, */ \
  /* inner 1: where an open SharedBf16Copies lists y, its bf16 copy on the way */    \
  template <typename T>                                                              \
  void softmax_forward(const T* x, T* y, int64_t outer, int64_t n, int64_t inner);   \
  /* gx = y * (gy - sum_n(gy * y)) */                                                \
  template <typename T>                                                              \
  void softmax_backward(const T* y, const T* gy, T* gx, int64_t outer, int64_t n, int64_t inner);

namespace cpu {
KVC_SOFTMAX_KERNELS
}
namespace cuda {
KVC_SOFTMAX_KERNELS
}
#undef KVC_SOFTMAX_KERNELS

// The explicit instantiations of every launcher above for dtype T, expanded by each backend.
#define KVC_SOFTMAX_INSTANTIATE(T)                                           \
  template void softmax_forward<T>(const T*, T*, int64_t, int64_t, int64_t); \
  template void softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);

}  // namespace kvc::kernels
