// Per-block math of the Philox fills, one definition for kernels/cpu/fill.cpp and
// kernels/cuda/fill.cu: each writes the (up to) four elements that one Philox block yields, so
// both backends draw philox::uniform / philox::normal(seed, offset, i) at a quarter of the cost.
#pragma once

#include <cstdint>

#include "base/philox.h"
#include "kernels/math/fp.h"

namespace kvc::kernels::math {

#if defined(__CUDA_ARCH__)
#define KVC_UNROLL _Pragma("unroll")
#else
#define KVC_UNROLL
#endif

// out[base + j] = low + range * uniform01(word j of u) for j < 4 and base + j < n. Rounded
// products and sums: the affine map gives the same bits on both backends.
template <typename T>
KVC_HOST_DEVICE void uniform_block(T* out, int64_t n, int64_t base, const philox::U4& u, double low,
                                   double range) {
  KVC_UNROLL
  for (int j = 0; j < 4; ++j) {
    if (base + j < n) {
      const float u01 = philox::uniform01(philox::lane(u, static_cast<uint64_t>(j)));
      out[base + j] = static_cast<T>(add_rn(low, mul_rn(range, static_cast<double>(u01))));
    }
  }
}

// Box-Muller as philox::normal: words (x, y) give elements base, base + 1 (cosine and sine
// halves) and (z, w) give base + 2, base + 3, so each pair's logarithm is taken once. sqrt is
// correctly rounded on both backends; CUDA's double log, sin and cos are within 1-2 ulp of
// glibc's, so float64 draws may differ from the CPU in the last bits (float32 draws almost never
// do).
template <typename T>
KVC_HOST_DEVICE void normal_block(T* out, int64_t n, int64_t base, const philox::U4& u, double mean,
                                  double stddev) {
  KVC_UNROLL
  for (int pair = 0; pair < 2; ++pair) {
    if (base + 2 * pair >= n) break;
    const double u1 = philox::uniform_open0(pair ? u.z : u.x);
    const double u2 = philox::uniform_open0(pair ? u.w : u.y);
    const double r = sqrt(mul_rn(-2.0, log(u1)));
    const double theta = mul_rn(6.283185307179586, u2);
    double s, c;
#if defined(__CUDA_ARCH__)
    sincos(theta, &s, &c);
#else
    s = sin(theta);
    c = cos(theta);
#endif
    out[base + 2 * pair] = static_cast<T>(add_rn(mean, mul_rn(stddev, mul_rn(r, c))));
    if (base + 2 * pair + 1 < n) {
      out[base + 2 * pair + 1] = static_cast<T>(add_rn(mean, mul_rn(stddev, mul_rn(r, s))));
    }
  }
}

// The elements of stream block `block` (elements 4 * block .. 4 * block + 3) that fall in
// [first, first + n), written to out[element - first]: a draw that starts inside a block.
template <typename T>
KVC_HOST_DEVICE void normal_block_from(T* out, int64_t n, uint64_t first, uint64_t block,
                                       const philox::U4& u, double mean, double stddev) {
  T four[4];
  normal_block(four, 4, 0, u, mean, stddev);
  KVC_UNROLL
  for (int j = 0; j < 4; ++j) {
    const uint64_t element = 4 * block + static_cast<uint64_t>(j);
    if (element >= first && element < first + static_cast<uint64_t>(n)) {
      out[element - first] = four[j];
    }
  }
}

#undef KVC_UNROLL

}  // namespace kvc::kernels::math
