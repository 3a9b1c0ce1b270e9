// CUDA window kernels: the scatter of overlapping windows back onto the sequence (a gather per
// token, no atomics), the causal visible counts and the row-masked softmax.
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/math/window.h"
#include "kernels/window.h"

namespace kvc::kernels::cuda {

namespace {

template <typename T>
__global__ void window_backward_kernel(const T* __restrict__ g, T* __restrict__ gs, int64_t bh,
                                       int64_t seq, int64_t d, int64_t w, int64_t n,
                                       int64_t stride) {
  KVC_GRID_LOOP(idx, bh * seq * d) {
    const int64_t c = idx % d, t = (idx / d) % seq, b = idx / (d * seq);
    const math::WindowRange r = math::windows_holding(t, w, n, stride);
    const T* gb = g + b * w * n * d;
    T sum = 0;
    for (int64_t i = r.first; i <= r.last; ++i) sum += gb[(i * n + (t - i * stride)) * d + c];
    gs[idx] = sum;
  }
}

// One block: the rows are few (batch * heads * queries), and the kept count needs them all.
template <typename T>
__global__ void visible_counts_kernel(const T* __restrict__ pos, int32_t* __restrict__ visible,
                                      T* __restrict__ weight, int64_t rows, int64_t rows_per_batch,
                                      int64_t nq, int64_t first, int64_t step, int64_t limit,
                                      double scale) {
  __shared__ double shared[32];
  double kept = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    const int32_t c =
        math::visible_count(pos[(r / rows_per_batch) * nq + r % nq], first, step, limit);
    visible[r] = c;
    kept += c > 0 ? 1.0 : 0.0;
  }
  if (weight == nullptr) return;
  kept = block_sum(kept, shared);
  const T w = kept > 0 ? static_cast<T>(1.0 / (kept * scale)) : T(0);
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) weight[r] = visible[r] > 0 ? w : T(0);
}

// A warp per row; y16, where not null, gets the bf16 bits of y (see masked_softmax_forward).
template <typename T>
__global__ void masked_softmax_kernel(const T* x, T* y, int64_t rows, int64_t n,
                                      const int32_t* __restrict__ visible, uint16_t* y16) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x >> 5);
  for (int64_t row = blockIdx.x * int64_t{blockDim.x >> 5} + (threadIdx.x >> 5); row < rows;
       row += warps) {
    const T* xr = x + row * n;
    T* yr = y + row * n;
    const int64_t m = min(n, static_cast<int64_t>(visible[row]));
    T mx = -INFINITY;
    for (int64_t j = lane; j < m; j += 32) mx = max(mx, xr[j]);
    mx = warp_max(mx);
    T s = 0;
    for (int64_t j = lane; j < m; j += 32) s += exp(xr[j] - mx);
    s = warp_sum(s);
    const T inv = m > 0 ? T(1) / s : T(0);
    for (int64_t j = lane; j < n; j += 32) {
      yr[j] = j < m ? exp(xr[j] - mx) * inv : T(0);
      if (y16) store_bf16(y16 + row * n + j, yr[j]);
    }
  }
}

}  // namespace

template <typename T>
void window_backward(const T* g, T* gs, int64_t bh, int64_t seq, int64_t d, int64_t w, int64_t n,
                     int64_t stride) {
  const int64_t total = bh * seq * d;
  if (total <= 0) return;
  window_backward_kernel<T>
      <<<grid_for(total), kThreads, 0, stream()>>>(g, gs, bh, seq, d, w, n, stride);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void visible_counts(const T* pos, int32_t* visible, T* weight, int64_t rows, int64_t rows_per_batch,
                    int64_t nq, int64_t first, int64_t step, int64_t limit, double scale) {
  if (rows <= 0) return;
  visible_counts_kernel<T><<<1, 1024, 0, stream()>>>(pos, visible, weight, rows, rows_per_batch, nq,
                                                     first, step, limit, scale);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void masked_softmax_forward(const T* x, T* y, int64_t rows, int64_t n, const int32_t* visible) {
  if (rows <= 0 || n <= 0) return;
  // The bf16 copy of y on the way where an open SharedBf16Copies lists it (the attention's
  // probabilities, for its bf16 P V product).
  const Bf16Fill y16 = bf16_fill_for(y, rows * n);
  masked_softmax_kernel<T><<<grid_for(rows * 32, kThreads), kThreads, 0, stream()>>>(
      x, y, rows, n, visible, reinterpret_cast<uint16_t*>(y16.p));
  KVC_CUDA_CHECK(cudaGetLastError());
}

KVC_WINDOW_INSTANTIATE(float)
KVC_WINDOW_INSTANTIATE(double)

}  // namespace kvc::kernels::cuda
