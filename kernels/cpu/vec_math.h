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

// log(x) in float64 for a positive normal x, without a branch (fdlibm's e_log.c: x = 2^e m with
// m in [sqrt(2) / 2, sqrt(2)), log m = 2 atanh(f / (2 + f)) for f = m - 1 by its polynomial, in the
// form it takes for large f, here for every f). Within 1 ulp of glibc's log over 4.3 million
// inputs (b + 1) 2^-32 (the Box-Muller draws' u1).
inline double log_f64(double x) {
  constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kLg1 = 6.666666666666735130e-01, kLg2 = 3.999999999940941908e-01,
                   kLg3 = 2.857142874366239149e-01, kLg4 = 2.222219843214978396e-01,
                   kLg5 = 1.818357216161805012e-01, kLg6 = 1.531383769920937332e-01,
                   kLg7 = 1.479819860511658591e-01;
  constexpr double kSqrt2 = 1.41421356237309504880;
  uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  // The exponent field as a double: its bits under 2^52's exponent, less 2^52 (no int64
  // conversion, which SSE2 and AVX2 lack as vector instructions).
  const uint64_t e_bits = (b >> 52) | 0x4330000000000000ull;
  const uint64_t m_bits = (b & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull;
  double e, m;
  std::memcpy(&e, &e_bits, sizeof e);
  std::memcpy(&m, &m_bits, sizeof m);
  e -= 4503599627370496.0 + 1023.0;
  const bool halve = m > kSqrt2;
  m = halve ? m * 0.5 : m;
  e = halve ? e + 1.0 : e;
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s, w = z * z;
  const double r =
      z * (kLg1 + w * (kLg3 + w * (kLg5 + w * kLg7))) + w * (kLg2 + w * (kLg4 + w * kLg6));
  const double hfsq = 0.5 * f * f;
  return e * kLn2Hi - ((hfsq - (s * (hfsq + r) + e * kLn2Lo)) - f);
}

// sin and cos of x in [0, 2 pi] (a little past it too), without a branch: fdlibm's reduction by
// the nearest multiple n of pi / 2 (pi / 2 in three parts, the reduced argument kept with its
// tail) and its sin and cos kernels on [-pi / 4, pi / 4], then the quadrant's swap and signs.
// Within 1 ulp of glibc's sin and cos over 4.3 million inputs 2 pi (b + 1) 2^-32 (the Box-Muller
// draws' angles).
inline void sincos_2pi(double x, double* sin_out, double* cos_out) {
  constexpr double kInvPio2 = 6.36619772367581382433e-01;
  constexpr double kPio2_1 = 1.57079632673412561417e+00, kPio2_2 = 6.07710050630396597660e-11,
                   kPio2_2t = 2.02226624879595063154e-21;
  constexpr double kS1 = -1.66666666666666324348e-01, kS2 = 8.33333333332248946124e-03,
                   kS3 = -1.98412698298579493134e-04, kS4 = 2.75573137070700676789e-06,
                   kS5 = -2.50507602534068634195e-08, kS6 = 1.58969099521155010221e-10;
  constexpr double kC1 = 4.16666666666666019037e-02, kC2 = -1.38888888888741095749e-03,
                   kC3 = 2.48015872894767294178e-05, kC4 = -2.75573143513906633035e-07,
                   kC5 = 2.08757232129817482790e-09, kC6 = -1.13596475577881948265e-11;
  constexpr double kRound = 6755399441055744.0;       // 1.5 * 2^52: adding it rounds to an integer
  const double n = (x * kInvPio2 + kRound) - kRound;  // 0, 1, 2, 3 or 4
  // x - n pio2_1 is exact (n pio2_1 has 36 bits, and the two are within a factor 2), as is
  // n pio2_2; the last step carries what rounding t - w dropped.
  const double t = x - n * kPio2_1;
  double w = n * kPio2_2;
  const double r = t - w;
  w = n * kPio2_2t - ((t - r) - w);
  const double hi = r - w, lo = (r - hi) - w;  // the reduced argument hi + lo
  const double z = hi * hi, v = z * hi;
  const double rs = kS2 + z * (kS3 + z * (kS4 + z * (kS5 + z * kS6)));
  const double s = hi - ((z * (0.5 * lo - v * rs) - lo) - v * kS1);
  const double z2 = z * z;
  const double rc = z * (kC1 + z * (kC2 + z * kC3)) + z2 * z2 * (kC4 + z * (kC5 + z * kC6));
  const double hz = 0.5 * z, one_hz = 1.0 - hz;
  const double c = one_hz + (((1.0 - one_hz) - hz) + (z * rc - hi * lo));
  // Quadrant n: sin, cos = (s, c), (c, -s), (-s, -c), (-c, s), (s, c).
  const bool swap = n == 1.0 || n == 3.0;
  const bool sin_negative = n == 2.0 || n == 3.0;
  const bool cos_negative = n == 1.0 || n == 2.0;
  const double sv = swap ? c : s, cv = swap ? s : c;
  *sin_out = sin_negative ? -sv : sv;
  *cos_out = cos_negative ? -cv : cv;
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
