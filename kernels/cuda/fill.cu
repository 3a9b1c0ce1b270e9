// CUDA fills, dtype casts and Philox random streams: the same numbers as kernels/cpu/fill.cpp.
#include "base/philox.h"
#include "kernels/cuda/common.cuh"
#include "kernels/fill.h"
#include "kernels/math/fill.h"

namespace kvc::kernels::cuda {

namespace {

template <typename T>
__global__ void fill_kernel(T* out, int64_t n, T value) {
  KVC_GRID_LOOP(i, n) out[i] = value;
}

template <typename T>
__global__ void arange_kernel(T* out, int64_t n) {
  KVC_GRID_LOOP(i, n) out[i] = static_cast<T>(i);
}

template <typename To, typename From>
__global__ void cast_kernel(To* out, const From* in, int64_t n) {
  KVC_GRID_LOOP(i, n) out[i] = static_cast<To>(in[i]);
}

// One thread per Philox block of four elements, as the CPU loop draws them.
template <typename T>
__global__ void uniform_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, double low,
                               double range) {
  const int64_t blocks = (n + 3) / 4;
  KVC_GRID_LOOP(b, blocks) {
    const philox::U4 u = philox::block(seed, offset, static_cast<uint64_t>(b));
    math::uniform_block(out, n, 4 * b, u, low, range);
  }
}

// Elements [first, first + n) of the stream: whole blocks when first is a multiple of 4.
template <typename T>
__global__ void normal_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean,
                              double stddev, uint64_t first) {
  const uint64_t first_block = first / 4;
  const int64_t blocks =
      static_cast<int64_t>((first + static_cast<uint64_t>(n) + 3) / 4 - first_block);
  KVC_GRID_LOOP(b, blocks) {
    const uint64_t block = first_block + static_cast<uint64_t>(b);
    const philox::U4 u = philox::block(seed, offset, block);
    if (first % 4 == 0) {
      math::normal_block(out, n, 4 * b, u, mean, stddev);
    } else {
      math::normal_block_from(out, n, first, block, u, mean, stddev);
    }
  }
}

}  // namespace

template <typename T>
void fill(T* out, int64_t n, T value) {
  if (n <= 0) return;
  fill_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(out, n, value);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void arange(T* out, int64_t n) {
  if (n <= 0) return;
  arange_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(out, n);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename To, typename From>
void cast(To* out, const From* in, int64_t n) {
  if (n <= 0) return;
  cast_kernel<To, From><<<grid_for(n), kThreads, 0, stream()>>>(out, in, n);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void uniform(T* out, int64_t n, uint64_t seed, uint64_t offset, double low, double high) {
  if (n <= 0) return;
  const int64_t blocks = (n + 3) / 4;
  uniform_kernel<T>
      <<<grid_for(blocks), kThreads, 0, stream()>>>(out, n, seed, offset, low, high - low);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void normal(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean, double std,
            uint64_t first) {
  if (n <= 0) return;
  const int64_t blocks = (n + 3) / 4 + 1;
  normal_kernel<T>
      <<<grid_for(blocks), kThreads, 0, stream()>>>(out, n, seed, offset, mean, std, first);
  KVC_CUDA_CHECK(cudaGetLastError());
}

KVC_FILL_INSTANTIATE(float)
KVC_FILL_INSTANTIATE(double)

}  // namespace kvc::kernels::cuda
