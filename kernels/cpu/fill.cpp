// CPU fills, dtype casts and Philox random streams (uniform, normal).
#include "kernels/fill.h"

#include "base/philox.h"
#include "kernels/math/fill.h"

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

// One Philox block at a time: exactly philox::uniform(seed, offset, i) for each i.
template <typename T>
void uniform(T* out, int64_t n, uint64_t seed, uint64_t offset, double low, double high) {
  const double range = high - low;
  for (int64_t base = 0; base < n; base += 4) {
    const philox::U4 u = philox::block(seed, offset, static_cast<uint64_t>(base) >> 2);
    math::uniform_block(out, n, base, u, low, range);
  }
}

template <typename T>
void normal(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean, double std,
            uint64_t first) {
  if (n <= 0) return;
  if (first % 4 == 0) {  // out starts on a block: whole blocks
    for (int64_t base = 0; base < n; base += 4) {
      const uint64_t block = first / 4 + (static_cast<uint64_t>(base) >> 2);
      math::normal_block(out, n, base, philox::block(seed, offset, block), mean, std);
    }
    return;
  }
  const uint64_t last_block = (first + static_cast<uint64_t>(n) - 1) / 4;
  for (uint64_t block = first / 4; block <= last_block; ++block) {
    math::normal_block_from(out, n, first, block, philox::block(seed, offset, block), mean, std);
  }
}

KVC_FILL_INSTANTIATE(float)
KVC_FILL_INSTANTIATE(double)

}  // namespace kvc::kernels::cpu
