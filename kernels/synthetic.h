// Kernels of the synthetic KV generator (SPEC section 5): the latent AR(1) scan and the gather
// of the latent at random query positions.
#pragma once

#include <cstdint>

namespace kvc::kernels {

#define KVC_SYNTHETIC_KERNELS                                                                \
  /* z (b, seq, r), in place: on entry i.i.d. N(0, 1) draws; on exit the AR(1) chains        \
     z[:, 0, :] unchanged, z[:, t, :] = rho * z[:, t-1, :] + sqrt(1 - rho^2) * z[:, t, :].   \
     b * r independent chains, each sequential over t. */                                    \
  template <typename T>                                                                      \
  void ar1_scan(T* z, int64_t b, int64_t seq, int64_t r, double rho);                        \
  /* z (b, seq, r) -> out (b, nq, r): out[i, j, :] = z[i, t_ij, :] with                      \
     t_ij = min(seq - 1, floor(philox::uniform(seed, offset, row) * seq)), row =             \
     (first_row + i) * nq + j: z holds rows first_row.. of a larger batch (a shard). */      \
  template <typename T>                                                                      \
  void gather_random_rows(const T* z, T* out, int64_t b, int64_t seq, int64_t r, int64_t nq, \
                          uint64_t seed, uint64_t offset, int64_t first_row = 0);

namespace cpu {
KVC_SYNTHETIC_KERNELS
}
namespace cuda {
KVC_SYNTHETIC_KERNELS
}
#undef KVC_SYNTHETIC_KERNELS

// The explicit instantiations of every launcher above for dtype T, expanded by each backend.
#define KVC_SYNTHETIC_INSTANTIATE(T)                                                              \
  template void ar1_scan<T>(T*, int64_t, int64_t, int64_t, double);                               \
  template void gather_random_rows<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, uint64_t, \
                                      uint64_t, int64_t);

}  // namespace kvc::kernels
