// CUDA fills, dtype casts and Philox random streams: the same numbers as kernels/cpu/fill.cpp.
#include "core/philox.h"
#include "kernels/cuda/common.cuh"
#include "kernels/fill.h"

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

// One thread per Philox block of four elements, as the CPU loop draws them. The affine maps use
// _rn intrinsics: nvcc would otherwise fuse them into an FMA, and the CPU (no contraction under
// -std=c++17) rounds the product and the sum separately; the bits must match.
template <typename T>
__global__ void uniform_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, double low,
                               double range) {
  const int64_t blocks = (n + 3) / 4;
  KVC_GRID_LOOP(b, blocks) {
    const philox::U4 u = philox::block(seed, offset, static_cast<uint64_t>(b));
    const int64_t base = 4 * b;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (base + j < n) {
        const float u01 = philox::uniform01(philox::lane(u, static_cast<uint64_t>(j)));
        out[base + j] = static_cast<T>(__dadd_rn(low, __dmul_rn(range, static_cast<double>(u01))));
      }
    }
  }
}

// Box-Muller as philox::normal. sqrt is correctly rounded on both sides; CUDA's double log, sin
// and cos are within 1-2 ulp of glibc's, so float64 draws may differ from the CPU in the last
// bits (float32 draws almost never do).
template <typename T>
__global__ void normal_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean,
                              double stddev) {
  const int64_t blocks = (n + 3) / 4;
  KVC_GRID_LOOP(b, blocks) {
    const philox::U4 u = philox::block(seed, offset, static_cast<uint64_t>(b));
    const int64_t base = 4 * b;
#pragma unroll
    for (int pair = 0; pair < 2; ++pair) {
      if (base + 2 * pair >= n) break;
      const double u1 = philox::uniform_open0(pair ? u.z : u.x);
      const double u2 = philox::uniform_open0(pair ? u.w : u.y);
      const double r = sqrt(__dmul_rn(-2.0, log(u1)));
      const double theta = __dmul_rn(6.283185307179586, u2);
      double s, c;
      sincos(theta, &s, &c);
      out[base + 2 * pair] = static_cast<T>(__dadd_rn(mean, __dmul_rn(stddev, __dmul_rn(r, c))));
      if (base + 2 * pair + 1 < n) {
        out[base + 2 * pair + 1] =
            static_cast<T>(__dadd_rn(mean, __dmul_rn(stddev, __dmul_rn(r, s))));
      }
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
void normal(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean, double std) {
  if (n <= 0) return;
  const int64_t blocks = (n + 3) / 4;
  normal_kernel<T><<<grid_for(blocks), kThreads, 0, stream()>>>(out, n, seed, offset, mean, std);
  KVC_CUDA_CHECK(cudaGetLastError());
}

#define KVC_INSTANTIATE(T)                                                   \
  template void fill<T>(T*, int64_t, T);                                     \
  template void arange<T>(T*, int64_t);                                      \
  template void uniform<T>(T*, int64_t, uint64_t, uint64_t, double, double); \
  template void normal<T>(T*, int64_t, uint64_t, uint64_t, double, double);  \
  template void cast<T, float>(T*, const float*, int64_t);                   \
  template void cast<T, double>(T*, const double*, int64_t);
KVC_INSTANTIATE(float)
KVC_INSTANTIATE(double)
#undef KVC_INSTANTIATE

}  // namespace kvc::kernels::cuda
