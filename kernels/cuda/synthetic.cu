// CUDA kernels of the synthetic KV generator: the AR(1) latent scan and the random-row gather,
// producing the same bits as kernels/cpu/synthetic.cpp.
#include "kernels/cuda/common.cuh"
#include "kernels/math/synthetic.h"
#include "kernels/synthetic.h"

namespace kvc::kernels::cuda {

namespace {

// One thread per chain (batch i, latent j); neighbouring threads take neighbouring j, so each
// time step is one coalesced row. Unfused products keep the CPU's rounding.
template <typename T>
__global__ void ar1_scan_kernel(T* z, int64_t b, int64_t seq, int64_t r, math::Ar1<T> ar1) {
  KVC_GRID_LOOP(chain, b * r) {
    const int64_t i = chain / r, j = chain % r;
    T* p = z + i * seq * r + j;
    T prev = p[0];
    for (int64_t t = 1; t < seq; ++t) {
      const T cur = ar1.step(prev, p[t * r]);
      p[t * r] = cur;
      prev = cur;
    }
  }
}

template <typename T>
__global__ void gather_rows_kernel(const T* z, T* out, int64_t b, int64_t seq, int64_t r,
                                   int64_t nq, uint64_t seed, uint64_t offset, int64_t first_row) {
  KVC_GRID_LOOP(idx, b * nq * r) {
    const int64_t k = idx % r, row = idx / r;  // row = i * nq + j
    const int64_t i = row / nq;
    const int64_t t = math::random_row(seed, offset, first_row * nq + row, seq);
    out[idx] = z[(i * seq + t) * r + k];
  }
}

}  // namespace

template <typename T>
void ar1_scan(T* z, int64_t b, int64_t seq, int64_t r, double rho) {
  if (b * r <= 0 || seq <= 1) return;
  ar1_scan_kernel<T><<<grid_for(b * r, 64), 64, 0, stream()>>>(z, b, seq, r, math::Ar1<T>(rho));
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void gather_random_rows(const T* z, T* out, int64_t b, int64_t seq, int64_t r, int64_t nq,
                        uint64_t seed, uint64_t offset, int64_t first_row) {
  const int64_t n = b * nq * r;
  if (n <= 0) return;
  gather_rows_kernel<T>
      <<<grid_for(n), kThreads, 0, stream()>>>(z, out, b, seq, r, nq, seed, offset, first_row);
  KVC_CUDA_CHECK(cudaGetLastError());
}

KVC_SYNTHETIC_INSTANTIATE(float)
KVC_SYNTHETIC_INSTANTIATE(double)

}  // namespace kvc::kernels::cuda
