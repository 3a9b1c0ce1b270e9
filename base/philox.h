// Philox4x32-10 (Salmon et al., SC'11), one header for host and device code: every random number
// in kvcompress (init, synthetic data, dropout masks) is a pure function of (seed, offset, index),
// so the CPU and CUDA backends draw identical streams and a resume continues them exactly.
#pragma once

#include <cmath>
#include <cstdint>

#include "base/host_device.h"

namespace kvc {
namespace philox {

struct U4 {
  uint32_t x, y, z, w;
};

KVC_HOST_DEVICE uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// The key's increment after each round (Weyl sequence).
constexpr uint32_t kKeyStep0 = 0x9E3779B9u, kKeyStep1 = 0xBB67AE85u;

// One round on the counter words (x, y, z, w) with round key (k0, k1).
KVC_HOST_DEVICE void philox_round(uint32_t& x, uint32_t& y, uint32_t& z, uint32_t& w, uint32_t k0,
                                  uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  uint32_t hi0, hi1;
  const uint32_t lo0 = mulhilo(kM0, x, &hi0);
  const uint32_t lo1 = mulhilo(kM1, z, &hi1);
  x = hi1 ^ y ^ k0;
  y = lo1;
  z = hi0 ^ w ^ k1;
  w = lo0;
}

// The 10-round block function: counter c, key (k0, k1).
KVC_HOST_DEVICE U4 philox4x32_10(U4 c, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    philox_round(c.x, c.y, c.z, c.w, k0, k1);
    k0 += kKeyStep0;
    k1 += kKeyStep1;
  }
  return c;
}

// Four 32-bit words for block `block` of the stream (seed, offset).
KVC_HOST_DEVICE U4 block(uint64_t seed, uint64_t offset, uint64_t block) {
  const U4 c{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
             static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)};
  return philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

KVC_HOST_DEVICE uint32_t lane(const U4& u, uint64_t i) {
  switch (i & 3u) {
    case 0:
      return u.x;
    case 1:
      return u.y;
    case 2:
      return u.z;
    default:
      return u.w;
  }
}

// The 32-bit word for element i: word i%4 of block i/4.
KVC_HOST_DEVICE uint32_t bits(uint64_t seed, uint64_t offset, uint64_t i) {
  return lane(block(seed, offset, i >> 2), i);
}

// Uniform on [0, 1) with 24 bits: exact in float, so both backends compare it identically.
KVC_HOST_DEVICE float uniform01(uint32_t b) {
  return static_cast<float>(b >> 8) * 5.9604644775390625e-8f;
}

// Uniform on (0, 1], for logarithms.
KVC_HOST_DEVICE double uniform_open0(uint32_t b) {
  return (static_cast<double>(b) + 1.0) * 2.3283064365386963e-10;
}

// Element i of a uniform [0,1) stream.
KVC_HOST_DEVICE float uniform(uint64_t seed, uint64_t offset, uint64_t i) {
  return uniform01(bits(seed, offset, i));
}

// Element i of a standard normal stream: Box-Muller on the word pair of block i/2 lanes (0,1) or
// (2,3); elements 2k and 2k+1 are the cosine and sine halves of one pair.
KVC_HOST_DEVICE double normal(uint64_t seed, uint64_t offset, uint64_t i) {
  const U4 u = block(seed, offset, i >> 2);
  const bool second_pair = (i & 2u) != 0;
  const double u1 = uniform_open0(second_pair ? u.z : u.x);
  const double u2 = uniform_open0(second_pair ? u.w : u.y);
  const double r = sqrt(-2.0 * log(u1));
  const double theta = 6.283185307179586 * u2;
  return (i & 1u) ? r * sin(theta) : r * cos(theta);
}

// Dropout keep decision for element i: keep with probability 1 - p.
KVC_HOST_DEVICE bool keep(uint64_t seed, uint64_t offset, uint64_t i, float p) {
  return uniform(seed, offset, i) >= p;
}

}  // namespace philox
}  // namespace kvc
