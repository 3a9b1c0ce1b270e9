// CPU kernels of the synthetic KV generator: AR(1) scan and random-row gather.
#include "kernels/synthetic.h"

#include <cmath>
#include <cstring>

#include "core/philox.h"

namespace kvc::kernels::cpu {

template <typename T>
void ar1_scan(T* z, int64_t b, int64_t seq, int64_t r, double rho) {
  const T a = static_cast<T>(rho);
  const T c = static_cast<T>(std::sqrt(1.0 - rho * rho));
  for (int64_t i = 0; i < b; ++i) {
    T* chain = z + i * seq * r;
    // Row by row: the r chains of a step sit side by side, so the inner loop is contiguous.
    for (int64_t t = 1; t < seq; ++t) {
      const T* prev = chain + (t - 1) * r;
      T* cur = chain + t * r;
      for (int64_t j = 0; j < r; ++j) cur[j] = a * prev[j] + c * cur[j];
    }
  }
}

template <typename T>
void gather_random_rows(const T* z, T* out, int64_t b, int64_t seq, int64_t r, int64_t nq,
                        uint64_t seed, uint64_t offset) {
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t j = 0; j < nq; ++j) {
      const double u = philox::uniform(seed, offset, static_cast<uint64_t>(i * nq + j));
      int64_t t = static_cast<int64_t>(u * static_cast<double>(seq));
      if (t > seq - 1) t = seq - 1;
      std::memcpy(out + (i * nq + j) * r, z + (i * seq + t) * r, sizeof(T) * r);
    }
  }
}

#define KVC_INSTANTIATE(T)                                                                        \
  template void ar1_scan<T>(T*, int64_t, int64_t, int64_t, double);                               \
  template void gather_random_rows<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, uint64_t, \
                                      uint64_t);
KVC_INSTANTIATE(float)
KVC_INSTANTIATE(double)
#undef KVC_INSTANTIATE

}  // namespace kvc::kernels::cpu
