// Per-element math and row reductions for the CPU kernels' inner loops, written so that the
// compiler turns the loops around them into vector code: std::exp is a library call per element,
// and a float max or sum carried from one element to the next is a chain the compiler may not
// reorder, so loops built on either run one value at a time. On x86-64 the functions that run
// these loops are also built for AVX2 (KVC_CPU_CLONES) and pick their build when the program
// starts: both builds do the same IEEE operations in the same order (no fused multiply-add: the
// library is compiled with -ffp-contract=off), so their results are bit-identical and the wider
// one is only faster.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

// GCC on x86-64 Linux (GNU ifuncs): a function marked with it is built twice, for AVX2 and FMA
// machines (x86-64-v3) and for the baseline, and the loader binds the build the CPU can run.
// Elsewhere it is one build for the target the compiler was given.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    defined(__has_attribute)
#if __has_attribute(target_clones)
#define KVC_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
#endif
#ifndef KVC_CPU_CLONES
#define KVC_CPU_CLONES
#endif

namespace kvc::kernels::cpu {

namespace vec_detail {
inline int32_t bits_of(float f) {
  int32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace vec_detail

// exp(x) in float32 without a branch or a call. x = q ln 2 + s with q = round(x / ln 2) and |s|
// <= ln 2 / 2 (ln 2 in two parts, Cody and Waite's reduction); e^s from Cephes' degree-6
// polynomial; 2^q applied as 2^(q / 2) 2^(q - q / 2), each a normal float, so that results down
// to the subnormals round once, as std::exp's do. At most 0.99 ulp from exp over every third
// float32 from -110 to 90 (the unit test checks a sparser sweep against 1 ulp). exp(-inf) = 0,
// exp(+inf) = inf and NaN stays NaN; 0 below -103.98 and inf above 88.73, where the float32
// result rounds to them.
inline float exp_f32(float x) {
  using vec_detail::bits_of;
  using vec_detail::float_of;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  // Adding 1.5 * 2^23 rounds to an integer held in the low bits of the mantissa.
  constexpr float kRound = 12582912.0f;
  float t = x * kLog2e;
  t = t < -151.0f ? -151.0f : t;  // the comparisons let NaN through unchanged
  t = t > 129.0f ? 129.0f : t;
  const float shifted = t + kRound;
  const float q = shifted - kRound;
  const int32_t qi = bits_of(shifted) - bits_of(kRound);
  float s = x - q * kLn2Hi;
  s = s - q * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * s + 1.3981999507e-3f;
  p = p * s + 8.3334519073e-3f;
  p = p * s + 4.1665795894e-2f;
  p = p * s + 1.6666665459e-1f;
  p = p * s + 5.0000001201e-1f;
  const float es = p * s * s + s + 1.0f;
  const int32_t q1 = qi / 2, q2 = qi - q1;  // each in [-76, 65] (anything for a NaN x)
  // 2^k is the float with exponent field k + 127: shifted as unsigned, defined for any bits.
  const auto pow2 = [](int32_t k) { return float_of(static_cast<uint32_t>(k + 127) << 23); };
  float r = es * pow2(q1) * pow2(q2);
  r = x < -104.0f ? 0.0f : r;  // -inf: s would be -inf and r NaN
  r = x > 89.0f ? std::numeric_limits<float>::infinity() : r;
  return r;
}

// exp for a kernel's element type: float32 as above; float64 (the reference and gradient checks)
// keeps the library's.
template <typename T>
inline T exp_lane(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return exp_f32(x);
  } else {
    return std::exp(x);
  }
}

// Eight partial results over x[0, n), lane u taking the elements u, u + 8, ..., then combined in
// a fixed order: independent chains the compiler can keep in vector registers.
constexpr int kRowLanes = 8;

// max(start, x[0], ..., x[n - 1]) with x[j] > m ? x[j] : m at each step, so NaN in x is passed
// over (the exp of it then makes the row NaN).
template <typename T>
inline T row_max(const T* x, int64_t n, T start) {
  T lane[kRowLanes];
  for (int u = 0; u < kRowLanes; ++u) lane[u] = start;
  int64_t j = 0;
  for (; j + kRowLanes <= n; j += kRowLanes) {
    for (int u = 0; u < kRowLanes; ++u) lane[u] = x[j + u] > lane[u] ? x[j + u] : lane[u];
  }
  T m = start;
  for (int u = 0; u < kRowLanes; ++u) m = lane[u] > m ? lane[u] : m;
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// y[j] = exp(x[j] - shift) for j < n (y may be x), and their sum.
template <typename T>
inline T exp_row_sum(const T* x, T* y, int64_t n, T shift) {
  for (int64_t j = 0; j < n; ++j) y[j] = exp_lane(x[j] - shift);
  T lane[kRowLanes] = {};
  int64_t j = 0;
  for (; j + kRowLanes <= n; j += kRowLanes) {
    for (int u = 0; u < kRowLanes; ++u) lane[u] += y[j + u];
  }
  T sum = 0;
  for (int u = 0; u < kRowLanes; ++u) sum += lane[u];
  for (; j < n; ++j) sum += y[j];
  return sum;
}

}  // namespace kvc::kernels::cpu
