// CUDA kernels of the synthetic KV generator: the AR(1) latent scan and the random-row gather,
// producing the same bits as kernels/cpu/synthetic.cpp.
#include <cmath>

#include "core/philox.h"
#include "kernels/cuda/common.cuh"
#include "kernels/synthetic.h"

namespace kvc::kernels::cuda {

namespace {

// One thread per chain (batch i, latent j); neighbouring threads take neighbouring j, so each
// time step is one coalesced row. Unfused products keep the CPU's rounding.
template <typename T>
__global__ void ar1_scan_kernel(T* z, int64_t b, int64_t seq, int64_t r, T a, T c) {
  KVC_GRID_LOOP(chain, b * r) {
    const int64_t i = chain / r, j = chain % r;
    T* p = z + i * seq * r + j;
    T prev = p[0];
    for (int64_t t = 1; t < seq; ++t) {
      const T cur = add_rn(mul_rn(a, prev), mul_rn(c, p[t * r]));
      p[t * r] = cur;
      prev = cur;
    }
  }
}

template <typename T>
__global__ void gather_rows_kernel(const T* z, T* out, int64_t b, int64_t seq, int64_t r,
                                   int64_t nq, uint64_t seed, uint64_t offset) {
  KVC_GRID_LOOP(idx, b * nq * r) {
    const int64_t k = idx % r, row = idx / r;  // row = i * nq + j
    const int64_t i = row / nq;
    const double u = philox::uniform(seed, offset, static_cast<uint64_t>(row));
    int64_t t = static_cast<int64_t>(__dmul_rn(u, static_cast<double>(seq)));
    if (t > seq - 1) t = seq - 1;
    out[idx] = z[(i * seq + t) * r + k];
  }
}

}  // namespace

template <typename T>
void ar1_scan(T* z, int64_t b, int64_t seq, int64_t r, double rho) {
  if (b * r <= 0 || seq <= 1) return;
  const T a = static_cast<T>(rho), c = static_cast<T>(std::sqrt(1.0 - rho * rho));
  ar1_scan_kernel<T><<<grid_for(b * r, 64), 64, 0, stream()>>>(z, b, seq, r, a, c);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void gather_random_rows(const T* z, T* out, int64_t b, int64_t seq, int64_t r, int64_t nq,
                        uint64_t seed, uint64_t offset) {
  const int64_t n = b * nq * r;
  if (n <= 0) return;
  gather_rows_kernel<T>
      <<<grid_for(n), kThreads, 0, stream()>>>(z, out, b, seq, r, nq, seed, offset);
  KVC_CUDA_CHECK(cudaGetLastError());
}

#define KVC_INSTANTIATE(T)                                                                        \
  template void ar1_scan<T>(T*, int64_t, int64_t, int64_t, double);                               \
  template void gather_random_rows<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, uint64_t, \
                                      uint64_t);
KVC_INSTANTIATE(float)
KVC_INSTANTIATE(double)
#undef KVC_INSTANTIATE

}  // namespace kvc::kernels::cuda
