// CUDA softmax over one axis of (outer, n, inner), forward and backward in the same kernels:
// a warp per row for short rows, a block per long row (the forward's up to 4096 elements held in
// registers), a thread per column when inner > 1.
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/softmax.h"

namespace kvc::kernels::cuda {

namespace {

// Forward: a = x, b unused, out = softmax(x), and its bf16 bits into out16 where not null (see
// softmax_forward). Backward: a = y, b = gy, out = y * (gy - <gy, y>).
template <typename T, bool kBackward>
__global__ void softmax_warp_kernel(const T* a, const T* b, T* out, int64_t rows, int64_t n,
                                    uint16_t* out16) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x >> 5);
  for (int64_t row = blockIdx.x * int64_t{blockDim.x >> 5} + (threadIdx.x >> 5); row < rows;
       row += warps) {
    const T* pa = a + row * n;
    T* po = out + row * n;
    if constexpr (kBackward) {
      const T* pb = b + row * n;
      T dot = 0;
      for (int64_t j = lane; j < n; j += 32) dot += pa[j] * pb[j];
      dot = warp_sum(dot);
      for (int64_t j = lane; j < n; j += 32) po[j] = pa[j] * (pb[j] - dot);
    } else {
      T m = -INFINITY;
      for (int64_t j = lane; j < n; j += 32) m = max(m, pa[j]);
      m = warp_max(m);
      T s = 0;
      for (int64_t j = lane; j < n; j += 32) s += exp(pa[j] - m);
      const T inv = T(1) / warp_sum(s);
      for (int64_t j = lane; j < n; j += 32) {
        po[j] = exp(pa[j] - m) * inv;
        if (out16) store_bf16(out16 + row * n + j, po[j]);
      }
    }
  }
}

template <typename T, bool kBackward>
__global__ void softmax_block_kernel(const T* a, const T* b, T* out, int64_t rows, int64_t n,
                                     uint16_t* out16) {
  __shared__ T shared[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* pa = a + row * n;
    T* po = out + row * n;
    if constexpr (kBackward) {
      const T* pb = b + row * n;
      T dot = 0;
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) dot += pa[j] * pb[j];
      dot = block_sum(dot, shared);
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) po[j] = pa[j] * (pb[j] - dot);
    } else {
      T m = -INFINITY;
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = max(m, pa[j]);
      m = block_max(m, shared);
      T s = 0;
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += exp(pa[j] - m);
      const T inv = T(1) / block_sum(s, shared);
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        po[j] = exp(pa[j] - m) * inv;
        if (out16) store_bf16(out16 + row * n + j, po[j]);
      }
    }
  }
}

// The forward for rows of at most kThreads * kSoftmaxCached: each thread keeps its elements of
// the row in registers, so the row is read once (the block kernel reads it three times: at 16 KiB
// a row those re-reads miss L1, and the pass took twice its bandwidth time).
constexpr int kSoftmaxCached = 16;

template <typename T>
__global__ void softmax_cached_kernel(const T* x, T* out, int64_t rows, int64_t n,
                                      uint16_t* out16) {
  __shared__ T shared[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* px = x + row * n;
    T v[kSoftmaxCached];
    T m = -INFINITY;
#pragma unroll
    for (int i = 0; i < kSoftmaxCached; ++i) {
      const int64_t j = threadIdx.x + int64_t{i} * blockDim.x;
      v[i] = j < n ? px[j] : T(-INFINITY);
      m = max(m, v[i]);
    }
    m = block_max(m, shared);
    T s = 0;
#pragma unroll
    for (int i = 0; i < kSoftmaxCached; ++i) {
      const int64_t j = threadIdx.x + int64_t{i} * blockDim.x;
      v[i] = j < n ? exp(v[i] - m) : T(0);
      s += v[i];
    }
    const T inv = T(1) / block_sum(s, shared);
#pragma unroll
    for (int i = 0; i < kSoftmaxCached; ++i) {
      const int64_t j = threadIdx.x + int64_t{i} * blockDim.x;
      if (j >= n) break;
      out[row * n + j] = v[i] * inv;
      if (out16) store_bf16(out16 + row * n + j, v[i] * inv);
    }
  }
}

// inner > 1: neighbouring threads take neighbouring columns, so every pass is coalesced. The
// forward keeps a running max and rescales its sum (one read pass before the write pass).
template <typename T, bool kBackward>
__global__ void softmax_column_kernel(const T* a, const T* b, T* out, int64_t outer, int64_t n,
                                      int64_t inner) {
  const int64_t columns = outer * inner;
  KVC_GRID_LOOP(col, columns) {
    const int64_t o = col / inner, i = col % inner;
    const int64_t base = o * n * inner + i;
    if constexpr (kBackward) {
      T dot = 0;
      for (int64_t j = 0; j < n; ++j) dot += a[base + j * inner] * b[base + j * inner];
      for (int64_t j = 0; j < n; ++j) {
        const int64_t k = base + j * inner;
        out[k] = a[k] * (b[k] - dot);
      }
    } else {
      T m = -INFINITY, s = 0;
      for (int64_t j = 0; j < n; ++j) {
        const T v = a[base + j * inner];
        if (v > m) {
          s = s * exp(m - v) + T(1);
          m = v;
        } else {
          s += exp(v - m);
        }
      }
      const T inv = T(1) / s;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t k = base + j * inner;
        out[k] = exp(a[k] - m) * inv;
      }
    }
  }
}

template <typename T, bool kBackward>
void launch_softmax(const T* a, const T* b, T* out, int64_t outer, int64_t n, int64_t inner) {
  if (outer * n * inner <= 0) return;
  if (inner > 1) {
    softmax_column_kernel<T, kBackward>
        <<<grid_for(outer * inner), kThreads, 0, stream()>>>(a, b, out, outer, n, inner);
    KVC_CUDA_CHECK(cudaGetLastError());
    return;
  }
  // The forward writes the bf16 copy of its output on the way where an open SharedBf16Copies
  // lists it (the attention's probabilities, for its bf16 P V product).
  const Bf16Fill out16 = kBackward ? Bf16Fill{} : bf16_fill_for(out, outer * n);
  uint16_t* o16 = reinterpret_cast<uint16_t*>(out16.p);
  if (n <= 1024) {
    // kThreads / 32 rows per block: grid_for over one thread per row-lane.
    softmax_warp_kernel<T, kBackward>
        <<<grid_for(outer * 32, kThreads), kThreads, 0, stream()>>>(a, b, out, outer, n, o16);
  } else if (!kBackward && n <= int64_t{kThreads} * kSoftmaxCached) {
    const int blocks = static_cast<int>(std::min<int64_t>(outer, 65535));
    softmax_cached_kernel<T><<<blocks, kThreads, 0, stream()>>>(a, out, outer, n, o16);
  } else {
    const int blocks = static_cast<int>(std::min<int64_t>(outer, 65535));
    softmax_block_kernel<T, kBackward><<<blocks, kThreads, 0, stream()>>>(a, b, out, outer, n, o16);
  }
  KVC_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

template <typename T>
void softmax_forward(const T* x, T* y, int64_t outer, int64_t n, int64_t inner) {
  launch_softmax<T, false>(x, nullptr, y, outer, n, inner);
}

template <typename T>
void softmax_backward(const T* y, const T* gy, T* gx, int64_t outer, int64_t n, int64_t inner) {
  launch_softmax<T, true>(y, gy, gx, outer, n, inner);
}

KVC_SOFTMAX_INSTANTIATE(float)
KVC_SOFTMAX_INSTANTIATE(double)

}  // namespace kvc::kernels::cuda
