// CUDA elementwise kernels: broadcast binary ops, axpby, outer products, ReLU, GELU and dropout,
// each forward next to its backward.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "base/philox.h"
#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"
#include "kernels/math/elementwise.h"

namespace kvc::kernels::cuda {

namespace {

template <BinaryOp Op, typename T>
__device__ __forceinline__ T apply(T a, T b) {
  if constexpr (Op == BinaryOp::add) return a + b;
  if constexpr (Op == BinaryOp::sub) return a - b;
  if constexpr (Op == BinaryOp::mul) return a * b;
  if constexpr (Op == BinaryOp::div) return a / b;
}

template <BinaryOp Op, typename T>
__global__ void binary_flat_kernel(const T* a, const T* b, T* out, int64_t n) {
  KVC_GRID_LOOP(i, n) out[i] = apply<Op>(a[i], b[i]);
}

// ndim here is after merging axes on the host, usually 1 to 4. I is the index type: uint32_t
// where every index and offset fits (nearly always), since a 64-bit division per axis and
// element is what bounds this kernel (12 us for the MLP kinds' (b, h, w, d) + (1, h, 1, d) add
// at `nsa` with int64_t, 4 MiB).
template <BinaryOp Op, typename T, typename I>
__global__ void binary_broadcast_kernel(const T* a, const T* b, T* out, I n, BroadcastIndex index) {
  const I step = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    I rest = i, ia = 0, ib = 0;
    for (int d = index.ndim - 1; d >= 0; --d) {
      const I shape = static_cast<I>(index.shape[d]);
      const I c = rest % shape;
      rest /= shape;
      ia += c * static_cast<I>(index.a_stride[d]);
      ib += c * static_cast<I>(index.b_stride[d]);
    }
    out[i] = apply<Op>(a[ia], b[ib]);
  }
}

// Whether n elements and every offset into a and b fit binary_broadcast_kernel's 32-bit indices
// (with room for the grid-stride loop's last step past n).
bool fits_32_bits(int64_t n, const BroadcastIndex& index) {
  constexpr int64_t kLimit = int64_t{1} << 31;
  int64_t last_a = 0, last_b = 0;
  for (int d = 0; d < index.ndim; ++d) {
    if (index.a_stride[d] < 0 || index.b_stride[d] < 0) return false;
    last_a += (index.shape[d] - 1) * index.a_stride[d];
    last_b += (index.shape[d] - 1) * index.b_stride[d];
  }
  return n < kLimit && last_a < kLimit && last_b < kLimit;
}

// The same with a long last axis: CTAs walk (row, chunk of the row) pairs, so a row's offsets
// cost ndim - 1 divisions once per chunk instead of ndim per element, consecutive threads touch
// consecutive elements, and a few very long rows still spread over the whole GPU. Block positions
// added to every block and per-head scales take this path.
constexpr int64_t kRowChunk = 8 * kThreads;

template <BinaryOp Op, typename T>
__global__ void binary_rows_kernel(const T* a, const T* b, T* out, int64_t rows,
                                   BroadcastIndex index) {
  const int last = index.ndim - 1;
  const int64_t inner = index.shape[last];
  const int64_t chunks = (inner + kRowChunk - 1) / kRowChunk;
  const int64_t sa = index.a_stride[last], sb = index.b_stride[last];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t rest = r, ia = 0, ib = 0;
    for (int d = last - 1; d >= 0; --d) {
      const int64_t c = rest % index.shape[d];
      rest /= index.shape[d];
      ia += c * index.a_stride[d];
      ib += c * index.b_stride[d];
    }
    T* o = out + r * inner;
    for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
      const int64_t end = min(inner, (chunk + 1) * kRowChunk);
      for (int64_t c = chunk * kRowChunk + threadIdx.x; c < end; c += blockDim.x) {
        o[c] = apply<Op>(a[ia + c * sa], b[ib + c * sb]);
      }
    }
  }
}

// Rows at least this long go to binary_rows_kernel (a shorter one would idle most of the CTA).
constexpr int64_t kMinRowLength = 256;

template <BinaryOp Op, typename T>
void launch_binary(const T* a, const T* b, T* out, int64_t n, const BroadcastIndex& raw) {
  const BroadcastIndex index = math::collapse(raw);
  if (index.ndim == 0 || (index.ndim == 1 && index.a_stride[0] == 1 && index.b_stride[0] == 1)) {
    binary_flat_kernel<Op, T><<<grid_for(n), kThreads, 0, stream()>>>(a, b, out, n);
  } else if (index.ndim >= 2 && index.shape[index.ndim - 1] >= kMinRowLength) {
    const int64_t inner = index.shape[index.ndim - 1], rows = n / inner;
    const dim3 grid(
        static_cast<unsigned>(std::min<int64_t>(rows, 65535)),
        static_cast<unsigned>(std::min<int64_t>((inner + kRowChunk - 1) / kRowChunk, 65535)));
    binary_rows_kernel<Op, T><<<grid, kThreads, 0, stream()>>>(a, b, out, rows, index);
  } else {
    if (fits_32_bits(n, index)) {
      binary_broadcast_kernel<Op, T, uint32_t>
          <<<grid_for(n), kThreads, 0, stream()>>>(a, b, out, static_cast<uint32_t>(n), index);
    } else {
      binary_broadcast_kernel<Op, T, int64_t>
          <<<grid_for(n), kThreads, 0, stream()>>>(a, b, out, n, index);
    }
  }
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
__global__ void axpby_kernel(T* y, const T* x, int64_t n, T alpha, T beta) {
  if (beta == T(0)) {
    KVC_GRID_LOOP(i, n) y[i] = alpha * x[i];
  } else {
    KVC_GRID_LOOP(i, n) y[i] = alpha * x[i] + beta * y[i];
  }
}

// A CTA row per (group, row) of out, grid-strided over rows; its threads walk the columns, four
// consecutive ones a thread where every row starts 16-byte aligned (cols % 4 == 0, float).
template <typename T, int kVec>
__global__ void outer_kernel(const T* x, const T* y, T* out, int64_t rows, int64_t all_rows,
                             int64_t cols, T beta) {
  for (int64_t r = blockIdx.y; r < all_rows; r += gridDim.y) {
    const T xv = x[r];
    const T* yg = y + (r / rows) * cols;
    T* o = out + r * cols;
    for (int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kVec; c < cols;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x * kVec) {
      if constexpr (kVec == 4) {  // float only
        const float4 yv = *reinterpret_cast<const float4*>(yg + c);
        float4 v = make_float4(xv * yv.x, xv * yv.y, xv * yv.z, xv * yv.w);
        if (beta != T(0)) {
          const float4 ov = *reinterpret_cast<const float4*>(o + c);
          v = make_float4(v.x + beta * ov.x, v.y + beta * ov.y, v.z + beta * ov.z,
                          v.w + beta * ov.w);
        }
        *reinterpret_cast<float4*>(o + c) = v;
      } else {
        o[c] = beta == T(0) ? xv * yg[c] : xv * yg[c] + beta * o[c];
      }
    }
  }
}

template <typename T>
__global__ void relu_forward_kernel(const T* x, T* y, int64_t n) {
  KVC_GRID_LOOP(i, n) y[i] = x[i] > T(0) ? x[i] : T(0);
}

template <typename T>
__global__ void relu_backward_kernel(const T* y, const T* gy, T* gx, int64_t n) {
  KVC_GRID_LOOP(i, n) gx[i] = y[i] > T(0) ? gy[i] : T(0);
}

template <typename T>
__global__ void gelu_forward_kernel(const T* x, T* y, int64_t n) {
  KVC_GRID_LOOP(i, n) y[i] = math::gelu(x[i]);
}

template <typename T>
__global__ void gelu_backward_kernel(const T* x, const T* gy, T* gx, int64_t n) {
  KVC_GRID_LOOP(i, n) gx[i] = math::gelu_backward(x[i], gy[i]);
}

// The mask is recomputed from (seed, offset, i) in both directions: nothing is stored.
template <typename T>
__global__ void dropout_kernel(const T* in, T* out, int64_t n, float p, T scale, uint64_t seed,
                               uint64_t offset) {
  KVC_GRID_LOOP(i, n) {
    out[i] = philox::keep(seed, offset, static_cast<uint64_t>(i), p) ? in[i] * scale : T(0);
  }
}

}  // namespace

template <typename T>
void binary(BinaryOp op, const T* a, const T* b, T* out, int64_t n, const BroadcastIndex& index) {
  if (n <= 0) return;
  switch (op) {
    case BinaryOp::add:
      return launch_binary<BinaryOp::add>(a, b, out, n, index);
    case BinaryOp::sub:
      return launch_binary<BinaryOp::sub>(a, b, out, n, index);
    case BinaryOp::mul:
      return launch_binary<BinaryOp::mul>(a, b, out, n, index);
    case BinaryOp::div:
      return launch_binary<BinaryOp::div>(a, b, out, n, index);
  }
  KVC_FAIL("binary: unknown op ", static_cast<int>(op));
}

template <typename T>
void axpby(T* y, const T* x, int64_t n, T alpha, T beta) {
  if (n <= 0) return;
  axpby_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(y, x, n, alpha, beta);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void outer(const T* x, const T* y, T* out, int64_t groups, int64_t rows, int64_t cols, T beta) {
  const int64_t all_rows = groups * rows;
  if (all_rows <= 0 || cols <= 0) return;
  const bool vec = std::is_same_v<T, float> && cols % 4 == 0 &&
                   reinterpret_cast<uintptr_t>(out) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(y) % 16 == 0;
  const int vec_width = vec ? 4 : 1;
  const int64_t col_blocks = (cols + int64_t{kThreads} * vec_width - 1) / (kThreads * vec_width);
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(col_blocks, 65535)),
                  static_cast<unsigned>(std::min<int64_t>(all_rows, 65535)));
  if (vec) {
    outer_kernel<T, 4><<<grid, kThreads, 0, stream()>>>(x, y, out, rows, all_rows, cols, beta);
  } else {
    outer_kernel<T, 1><<<grid, kThreads, 0, stream()>>>(x, y, out, rows, all_rows, cols, beta);
  }
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void relu_forward(const T* x, T* y, int64_t n) {
  if (n <= 0) return;
  relu_forward_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(x, y, n);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void relu_backward(const T* y, const T* gy, T* gx, int64_t n) {
  if (n <= 0) return;
  relu_backward_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(y, gy, gx, n);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void gelu_forward(const T* x, T* y, int64_t n) {
  if (n <= 0) return;
  gelu_forward_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(x, y, n);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void gelu_backward(const T* x, const T* gy, T* gx, int64_t n) {
  if (n <= 0) return;
  gelu_backward_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(x, gy, gx, n);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void dropout_forward(const T* x, T* y, int64_t n, float p, uint64_t seed, uint64_t offset) {
  const T scale = math::dropout_scale<T>(p);  // checks p; the CPU's bits
  if (n <= 0) return;
  dropout_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(x, y, n, p, scale, seed, offset);
  KVC_CUDA_CHECK(cudaGetLastError());
}

// The same kernel: the adjoint of "keep and scale" is "keep and scale".
template <typename T>
void dropout_backward(const T* gy, T* gx, int64_t n, float p, uint64_t seed, uint64_t offset) {
  dropout_forward<T>(gy, gx, n, p, seed, offset);
}

KVC_ELEMENTWISE_INSTANTIATE(float)
KVC_ELEMENTWISE_INSTANTIATE(double)

}  // namespace kvc::kernels::cuda
