// CUDA mean squared error: a deterministic two-pass reduction whose scalar stays on the device,
// and its gradient, which reads the upstream scalar from device memory (no host sync).
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/loss.h"

namespace kvc::kernels::cuda {

namespace {

constexpr int kLossThreads = 512;
constexpr int64_t kMinSegment = 16384;

// Block b sums (pred - target)^2 over its segment. With one block it writes the mean itself.
template <typename T>
__global__ void mse_partial_kernel(const T* pred, const T* target, double* partial, T* out,
                                   int64_t n, int64_t seg) {
  __shared__ double shared[32];
  const int64_t begin = blockIdx.x * seg, end = min(n, begin + seg);
  double acc = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const double d = static_cast<double>(pred[i]) - static_cast<double>(target[i]);
    acc += d * d;
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) {
    if (gridDim.x == 1) {
      *out = static_cast<T>(acc / static_cast<double>(n));
    } else {
      partial[blockIdx.x] = acc;
    }
  }
}

template <typename T>
__global__ void mse_final_kernel(const double* partial, int64_t parts, T* out, int64_t n) {
  __shared__ double shared[32];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < parts; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) *out = static_cast<T>(acc / static_cast<double>(n));
}

template <typename T>
__global__ void mse_backward_kernel(const T* pred, const T* target, const T* grad_out, T* gpred,
                                    T* gtarget, int64_t n) {
  const T scale = T(2) / static_cast<T>(n) * *grad_out;
  KVC_GRID_LOOP(i, n) {
    const T g = scale * (pred[i] - target[i]);
    if (gpred) gpred[i] = g;
    if (gtarget) gtarget[i] = -g;
  }
}

}  // namespace

template <typename T>
void mse_forward(const T* pred, const T* target, T* out, int64_t n) {
  if (n <= 0) {  // the mean of nothing is NaN, as in PyTorch
    const T nan = static_cast<T>(NAN);
    KVC_CUDA_CHECK(cudaMemcpyAsync(out, &nan, sizeof(T), cudaMemcpyHostToDevice, stream()));
    return;
  }
  const int64_t parts = std::min<int64_t>((n + kMinSegment - 1) / kMinSegment, 1024);
  const int64_t seg = (n + parts - 1) / parts;
  if (parts == 1) {
    mse_partial_kernel<T><<<1, kLossThreads, 0, stream()>>>(pred, target, nullptr, out, n, seg);
    KVC_CUDA_CHECK(cudaGetLastError());
    return;
  }
  Scratch partial(static_cast<size_t>(parts) * sizeof(double));
  mse_partial_kernel<T><<<static_cast<int>(parts), kLossThreads, 0, stream()>>>(
      pred, target, partial.as<double>(), out, n, seg);
  KVC_CUDA_CHECK(cudaGetLastError());
  mse_final_kernel<T><<<1, kLossThreads, 0, stream()>>>(partial.as<double>(), parts, out, n);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void mse_backward(const T* pred, const T* target, const T* grad_out, T* gpred, T* gtarget,
                  int64_t n) {
  if (n <= 0 || (!gpred && !gtarget)) return;
  mse_backward_kernel<T>
      <<<grid_for(n), kThreads, 0, stream()>>>(pred, target, grad_out, gpred, gtarget, n);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template void mse_forward<float>(const float*, const float*, float*, int64_t);
template void mse_forward<double>(const double*, const double*, double*, int64_t);
template void mse_backward<float>(const float*, const float*, const float*, float*, float*,
                                  int64_t);
template void mse_backward<double>(const double*, const double*, const double*, double*, double*,
                                   int64_t);

}  // namespace kvc::kernels::cuda
