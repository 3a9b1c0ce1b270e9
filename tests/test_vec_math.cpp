// The CPU kernels' vector-friendly math (kernels/cpu/vec_math.h): exp_f32 against the float64
// exponential rounded to float32, at its limits and over a sweep of float32 inputs; the row
// reductions against their one-element-at-a-time definitions; the float64 log and sin/cos of the
// Box-Muller draws against the library's, and float32 normal draws against the stream's float64
// definition (philox::normal).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "base/philox.h"
#include "core/tensor.h"
#include "kernels/cpu/vec_math.h"
#include "tests/test_util.h"

namespace kvc {
namespace {

using kernels::cpu::exp_f32;

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// The distance from `got` to the exact exp(x), in units of the last place of the float32 nearest
// to it (subnormals: of 2^-149).
double ulps_from_exp(float got, float x) {
  const double want = std::exp(static_cast<double>(x));
  const float near = static_cast<float>(want);
  const double ulp = std::nextafter(near, std::numeric_limits<float>::infinity()) - near;
  return std::fabs(static_cast<double>(got) - want) / ulp;
}

TEST_CASE("cpu vec_math: exp_f32 is within 1 ulp of exp over float32, and exact at its limits") {
  // Every 1009th float32 bit pattern with -110 <= x <= 90: the negative and the positive ones,
  // normal and subnormal results, the rounding to 0 and to infinity.
  int64_t checked = 0, subnormal = 0;
  double worst = 0;
  for (uint64_t u = 0; u <= 0xFFFFFFFFu; u += 1009) {
    const float x = from_bits(static_cast<uint32_t>(u));
    if (!(x >= -110.0f && x <= 90.0f)) continue;
    const float got = exp_f32(x);
    const double want = std::exp(static_cast<double>(x));
    if (want >= std::numeric_limits<float>::max() * (1.0 + 0x1p-25)) {  // rounds to infinity
      REQUIRE(got == std::numeric_limits<float>::infinity());
    } else if (want <= 0x1p-150) {  // rounds to 0
      REQUIRE(got == 0.0f);
    } else {
      const double e = ulps_from_exp(got, x);
      if (e > worst) worst = e;
      if (want < std::numeric_limits<float>::min()) ++subnormal;
      CAPTURE(x);
      REQUIRE(e <= 1.0);
    }
    ++checked;
  }
  MESSAGE("exp_f32: ", checked, " inputs (", subnormal, " with subnormal results), worst ", worst,
          " ulp");
  CHECK(checked > 2000000);
  CHECK(subnormal > 1000);

  const float inf = std::numeric_limits<float>::infinity();
  CHECK(exp_f32(0.0f) == 1.0f);
  CHECK(exp_f32(-0.0f) == 1.0f);
  CHECK(exp_f32(-inf) == 0.0f);
  CHECK(exp_f32(inf) == inf);
  CHECK(std::isnan(exp_f32(std::numeric_limits<float>::quiet_NaN())));
  CHECK(exp_f32(-1e30f) == 0.0f);
  CHECK(exp_f32(1e30f) == inf);
  CHECK(exp_f32(88.7229f) == inf);  // exp is 3.4029e38, past the largest float32
  CHECK(std::isfinite(exp_f32(88.7228f)));
  CHECK(exp_f32(-103.98f) == 0.0f);  // below half the smallest subnormal
  CHECK(exp_f32(-103.97f) > 0.0f);
  CHECK(exp_f32(1.0f) == static_cast<float>(std::exp(1.0)));
}

TEST_CASE("cpu vec_math: row_max and exp_row_sum equal their element-by-element definitions") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const int64_t n :
       {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{8}, int64_t{9}, int64_t{64}, int64_t{257}}) {
    CAPTURE(n);
    std::vector<float> x(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) x[j] = std::sin(0.37f * static_cast<float>(j * j + 3)) * 20.0f;
    if (n > 5) x[5] = nan;  // passed over by the max, as x[j] > m is false
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
    CHECK(kernels::cpu::row_max(x.data(), n, -std::numeric_limits<float>::infinity()) == m);
    CHECK(kernels::cpu::row_max(x.data(), n, 25.0f) == 25.0f);  // above every element

    if (n > 5) x[5] = -std::numeric_limits<float>::infinity();  // a masked score: weight 0
    std::vector<float> y(static_cast<size_t>(n));
    const float shift = n > 0 ? 3.0f : 0.0f;
    const float sum = kernels::cpu::exp_row_sum(x.data(), y.data(), n, shift);
    double want_sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      CHECK(y[j] == exp_f32(x[j] - shift));
      want_sum += y[j];
    }
    CHECK(std::fabs(sum - want_sum) <= 1e-6 * want_sum);
    if (n > 5) CHECK(y[5] == 0.0f);
  }
}

// Distance in units of the last place of `want`.
double ulps64(double got, double want) {
  if (got == want) return 0;
  const double a = std::fabs(want);
  return std::fabs(got - want) / (std::nextafter(a, std::numeric_limits<double>::infinity()) - a);
}

TEST_CASE("cpu vec_math: log_f64 and sincos_2pi are within 1 ulp of the library's log, sin, cos") {
  // The Box-Muller draws' arguments: u = (b + 1) 2^-32 and 2 pi u, every 4099th 32-bit word b
  // and both ends.
  double worst_log = 0, worst_sin = 0, worst_cos = 0;
  int64_t checked = 0;
  const auto check_word = [&](uint32_t b) {
    const double u = philox::uniform_open0(b);
    const double theta = 6.283185307179586 * u;
    double s, c;
    kernels::cpu::sincos_2pi(theta, &s, &c);
    worst_log = std::max(worst_log, ulps64(kernels::cpu::log_f64(u), std::log(u)));
    worst_sin = std::max(worst_sin, ulps64(s, std::sin(theta)));
    worst_cos = std::max(worst_cos, ulps64(c, std::cos(theta)));
    ++checked;
  };
  for (uint64_t b = 0; b <= 0xFFFFFFFFull; b += 4099) check_word(static_cast<uint32_t>(b));
  check_word(0xFFFFFFFFu);  // u = 1, theta = 2 pi
  MESSAGE(checked, " arguments: worst ulps log ", worst_log, ", sin ", worst_sin, ", cos ",
          worst_cos);
  CHECK(checked > 1000000);
  CHECK(worst_log <= 1.0);
  CHECK(worst_sin <= 1.0);
  CHECK(worst_cos <= 1.0);
  CHECK(kernels::cpu::log_f64(1.0) == 0.0);
  CHECK(kernels::cpu::log_f64(0x1p-32) == std::log(0x1p-32));
  double s, c;
  kernels::cpu::sincos_2pi(0.0, &s, &c);
  CHECK((s == 0.0 && c == 1.0));
}

TEST_CASE("randn: float32 draws in whole chunks are the float64 stream rounded") {
  // 2^21 draws from a block boundary take the chunked Box-Muller (kernels/cpu/fill.cpp); each is
  // philox::normal's float64 value (the library's log, sin and cos) rounded to float32, but
  // where that value lies within an ulp or two of a rounding boundary (a few in a billion).
  const int64_t n = int64_t{1} << 21;
  const std::vector<double> got = Tensor::randn({n}, 11, 7, 0.5, 2.0).to_vector();
  int64_t differ = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float want =
        static_cast<float>(0.5 + 2.0 * philox::normal(11, 7, static_cast<uint64_t>(i)));
    if (static_cast<float>(got[i]) == want) continue;
    ++differ;
    CHECK(std::fabs(static_cast<float>(got[i]) - want) <=
          std::nextafter(std::fabs(want), 1e30f) - std::fabs(want));
  }
  MESSAGE("float32 draws other than the float64 stream's rounding: ", differ, " of ", n);
  CHECK(differ <= 2);
}

}  // namespace
}  // namespace kvc
