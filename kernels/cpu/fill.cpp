// CPU fills, dtype casts and Philox random streams (uniform, normal).
#include "kernels/fill.h"

#include <cmath>

#include "core/philox.h"

namespace kvc::kernels::cpu {

template <typename T>
void fill(T* out, int64_t n, T value) {
  for (int64_t i = 0; i < n; ++i) out[i] = value;
}

template <typename T>
void arange(T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(i);
}

template <typename To, typename From>
void cast(To* out, const From* in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<To>(in[i]);
}

// One Philox block yields four words; drawing them a block at a time gives exactly
// philox::uniform(seed, offset, i) for each i at a quarter of the cost.
template <typename T>
void uniform(T* out, int64_t n, uint64_t seed, uint64_t offset, double low, double high) {
  const double range = high - low;
  for (int64_t base = 0; base < n; base += 4) {
    const philox::U4 u = philox::block(seed, offset, static_cast<uint64_t>(base) >> 2);
    const int64_t m = n - base < 4 ? n - base : 4;
    for (int64_t j = 0; j < m; ++j) {
      const float u01 = philox::uniform01(philox::lane(u, static_cast<uint64_t>(j)));
      out[base + j] = static_cast<T>(low + range * static_cast<double>(u01));
    }
  }
}

// Mirrors philox::normal: per block, words (x, y) give elements 4k, 4k+1 (cos, sin halves) and
// (z, w) give 4k+2, 4k+3, so each Box-Muller pair is computed once.
template <typename T>
void normal(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean, double std) {
  for (int64_t base = 0; base < n; base += 4) {
    const philox::U4 u = philox::block(seed, offset, static_cast<uint64_t>(base) >> 2);
    const int64_t m = n - base < 4 ? n - base : 4;
    for (int64_t pair = 0; 2 * pair < m; ++pair) {
      const double u1 = philox::uniform_open0(pair ? u.z : u.x);
      const double u2 = philox::uniform_open0(pair ? u.w : u.y);
      const double r = std::sqrt(-2.0 * std::log(u1));
      const double theta = 6.283185307179586 * u2;
      out[base + 2 * pair] = static_cast<T>(mean + std * (r * std::cos(theta)));
      if (2 * pair + 1 < m)
        out[base + 2 * pair + 1] = static_cast<T>(mean + std * (r * std::sin(theta)));
    }
  }
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

}  // namespace kvc::kernels::cpu
