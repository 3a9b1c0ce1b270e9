// CPU kernels of the synthetic KV generator: AR(1) scan and random-row gather.
#include "kernels/synthetic.h"

#include <cstring>

#include "kernels/math/synthetic.h"

namespace kvc::kernels::cpu {

template <typename T>
void ar1_scan(T* z, int64_t b, int64_t seq, int64_t r, double rho) {
  const math::Ar1<T> ar1(rho);
  for (int64_t i = 0; i < b; ++i) {
    T* chain = z + i * seq * r;
    // Row by row: the r chains of a step sit side by side, so the inner loop is contiguous.
    for (int64_t t = 1; t < seq; ++t) {
      const T* prev = chain + (t - 1) * r;
      T* cur = chain + t * r;
      for (int64_t j = 0; j < r; ++j) cur[j] = ar1.step(prev[j], cur[j]);
    }
  }
}

template <typename T>
void gather_random_rows(const T* z, T* out, int64_t b, int64_t seq, int64_t r, int64_t nq,
                        uint64_t seed, uint64_t offset, int64_t first_row) {
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t j = 0; j < nq; ++j) {
      const int64_t t = math::random_row(seed, offset, (first_row + i) * nq + j, seq);
      std::memcpy(out + (i * nq + j) * r, z + (i * seq + t) * r, sizeof(T) * r);
    }
  }
}

KVC_SYNTHETIC_INSTANTIATE(float)
KVC_SYNTHETIC_INSTANTIATE(double)

}  // namespace kvc::kernels::cpu
