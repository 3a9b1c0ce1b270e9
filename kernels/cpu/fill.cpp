// CPU fills, dtype casts and Philox random streams (uniform, normal).
#include "kernels/fill.h"

#include <cmath>
#include <type_traits>

#include "base/philox.h"
#include "kernels/cpu/vec_math.h"
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

namespace {

// Box-Muller on `pairs` word pairs as math::normal_block takes them (out[2p], out[2p + 1] the
// cosine and sine halves of pair p), in float64 with vec_math.h's log and sin/cos (each within 1
// ulp of the library's), rounded to float32: a loop the compiler vectorizes, ~5x faster than
// the library's calls on an AVX2 core. The float32 values are math::normal_block's but where
// its float64 value lies within an ulp or two of a float32 rounding boundary (none in a test's
// 2^21 draws).
KVC_CPU_CLONES void box_muller_f32(const uint32_t* __restrict__ w1, const uint32_t* __restrict__ w2,
                                   int64_t pairs, double mean, double stddev,
                                   float* __restrict__ out) {
  for (int64_t p = 0; p < pairs; ++p) {
    const double u1 = philox::uniform_open0(w1[p]);
    const double u2 = philox::uniform_open0(w2[p]);
    const double r = std::sqrt(-2.0 * log_f64(u1));
    double s, c;
    sincos_2pi(6.283185307179586 * u2, &s, &c);
    out[2 * p] = static_cast<float>(mean + stddev * (r * c));
    out[2 * p + 1] = static_cast<float>(mean + stddev * (r * s));
  }
}

// philox::block for `count` consecutive blocks from block0, the rounds run over all of them at
// once (structure of arrays: each round a loop the compiler vectorizes, 32 x 32 -> 64-bit
// products in vector lanes): words x, y, z, w of block block0 + b at [b]. philox4x32_10's rounds,
// so the same words.
KVC_CPU_CLONES void philox_blocks(uint64_t seed, uint64_t offset, uint64_t block0, int64_t count,
                                  uint32_t* __restrict__ x, uint32_t* __restrict__ y,
                                  uint32_t* __restrict__ z, uint32_t* __restrict__ w) {
  for (int64_t b = 0; b < count; ++b) {
    const uint64_t block = block0 + static_cast<uint64_t>(b);
    x[b] = static_cast<uint32_t>(block);
    y[b] = static_cast<uint32_t>(block >> 32);
    z[b] = static_cast<uint32_t>(offset);
    w[b] = static_cast<uint32_t>(offset >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    for (int64_t b = 0; b < count; ++b) philox::philox_round(x[b], y[b], z[b], w[b], k0, k1);
    k0 += philox::kKeyStep0;
    k1 += philox::kKeyStep1;
  }
}

}  // namespace

template <typename T>
void normal(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean, double std,
            uint64_t first) {
  if (n <= 0) return;
  if (first % 4 == 0) {  // out starts on a block: whole blocks
    int64_t done = 0;
    if constexpr (std::is_same_v<T, float>) {
      // Chunks of kBlocks Philox blocks: their words first, then Box-Muller over all of them at
      // once. float64 draws (the references and gradient checks) stay on the library's calls.
      constexpr int64_t kBlocks = 256;
      uint32_t x[kBlocks], y[kBlocks], z[kBlocks], w[kBlocks], w1[2 * kBlocks], w2[2 * kBlocks];
      for (; done + 4 * kBlocks <= n; done += 4 * kBlocks) {
        philox_blocks(seed, offset, first / 4 + static_cast<uint64_t>(done) / 4, kBlocks, x, y, z,
                      w);
        for (int64_t b = 0; b < kBlocks; ++b) {  // pair 2b: words (x, y); pair 2b + 1: (z, w)
          w1[2 * b] = x[b];
          w2[2 * b] = y[b];
          w1[2 * b + 1] = z[b];
          w2[2 * b + 1] = w[b];
        }
        box_muller_f32(w1, w2, 2 * kBlocks, mean, std, out + done);
      }
    }
    for (int64_t base = done; base < n; base += 4) {
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
