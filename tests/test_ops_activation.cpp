// Tests of softmax, relu, gelu and dropout: closed forms, Philox masks, finite differences.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "base/philox.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "kernels/math/elementwise.h"
#include "tests/test_train_util.h"
#include "tests/test_util.h"

using namespace kvc;
using kvc::test::check_gradients;
using kvc::test::param;

TEST_CASE("ops activation: softmax values") {
  const Tensor x = Tensor::from_vector({1, 2, 3, 0, 0, 0}, {2, 3}, f64());
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  const std::vector<double> expect = {std::exp(1.0) / z, std::exp(2.0) / z, std::exp(3.0) / z,
                                      1.0 / 3,           1.0 / 3,           1.0 / 3};
  CHECK(kvc::test::max_abs_diff(softmax(x, 1).to_vector(), expect) < 1e-15);
  CHECK(kvc::test::max_abs_diff(softmax(x, -1).to_vector(), expect) < 1e-15);
  // Over axis 0 of (2, 3): pairs (1, 0), (2, 0), (3, 0) -> e^a / (e^a + 1).
  const std::vector<double> col = softmax(x, 0).to_vector();
  for (int j = 0; j < 3; ++j) {
    const double a = j + 1;
    CHECK(col[j] == doctest::Approx(std::exp(a) / (std::exp(a) + 1)).epsilon(1e-14));
    CHECK(col[3 + j] == doctest::Approx(1 / (std::exp(a) + 1)).epsilon(1e-14));
  }
  // Large logits do not overflow (max subtraction), in float32 too.
  const std::vector<double> big = softmax(Tensor::from_vector({1000, 1001}, {2}), 0).to_vector();
  CHECK(big[0] == doctest::Approx(1 / (1 + std::exp(1.0))).epsilon(1e-6));
  CHECK(big[1] == doctest::Approx(std::exp(1.0) / (1 + std::exp(1.0))).epsilon(1e-6));
  // A middle axis of (b, h, n, d): every (b, h, :, d) column sums to one and matches exp/sum.
  const Tensor y = Tensor::randn({2, 3, 5, 4}, 3, 0, 0, 2, f64());
  const std::vector<double> yv = y.to_vector(), sv = softmax(y, 2).to_vector();
  double worst = 0;
  for (int o = 0; o < 6; ++o) {
    for (int i = 0; i < 4; ++i) {
      double den = 0;
      for (int j = 0; j < 5; ++j) den += std::exp(yv[(o * 5 + j) * 4 + i]);
      for (int j = 0; j < 5; ++j) {
        const size_t k = static_cast<size_t>((o * 5 + j) * 4 + i);
        worst = std::fmax(worst, std::fabs(sv[k] - std::exp(yv[k]) / den));
      }
    }
  }
  CHECK(worst < 1e-15);
  CHECK_THROWS_WITH_AS(softmax(y, 4), doctest::Contains("(2, 3, 5, 4)"), kvc::Error);
}

TEST_CASE("ops activation: relu and gelu values") {
  const Tensor x = Tensor::from_vector({-3, -1, 0, 1, 2}, {5}, f64());
  CHECK(relu(x).to_vector() == std::vector<double>{0, 0, 0, 1, 2});
  // x * Phi(x) with Phi from tables: Phi(1) = 0.841344746068543, Phi(2) = 0.977249868051821,
  // Phi(3) = 0.998650101968370.
  const std::vector<double> expect = {-3 * (1 - 0.998650101968370), -(1 - 0.841344746068543), 0,
                                      0.841344746068543, 2 * 0.977249868051821};
  CHECK(kvc::test::max_abs_diff(gelu(x).to_vector(), expect) < 1e-14);
  CHECK(kvc::test::max_abs_diff(gelu(x.to(DType::f32)).to_vector(), expect) < 1e-6);
  // GELU'(0) = 1/2 and GELU'(1) = Phi(1) + phi(1) = 0.841344746 + 0.241970725.
  const Tensor p = Tensor::from_vector({0, 1}, {2}, f64().with_requires_grad(true));
  backward(sum(gelu(p)));
  CHECK(p.grad().to_vector()[0] == doctest::Approx(0.5).epsilon(1e-14));
  CHECK(p.grad().to_vector()[1] == doctest::Approx(0.841344746068543 + 0.241970724519143));
}

// The fused GELU backward (kernels/math) computes GELU and its derivative from one erf: the bits
// of the two functions apart, so a kernel that writes both agrees with the ones that write each.
TEST_CASE("ops activation: gelu_with_backward gives gelu's and gelu_backward's bits") {
  for (const float x :
       {-7.5f, -3.0f, -1.0f, -0.3f, -1e-30f, 0.0f, 1e-30f, 0.4f, 1.0f, 2.5f, 9.0f}) {
    for (const float gy : {1.0f, -0.7f, 3.0e5f}) {
      float act = 0.0f;
      const float grad = kvc::kernels::math::gelu_with_backward(x, gy, &act);
      CHECK(act == kvc::kernels::math::gelu(x));
      CHECK(grad == kvc::kernels::math::gelu_backward(x, gy));
    }
  }
}

// The bf16 MLP kernels' GELU (erfc's exponential form, kernels/math) against the closed form in
// float64 at every finite bfloat16 value with |x| <= 12 (what those kernels read): GELU within
// 1.5e-6 relative for |x| <= 5 and 5e-6 beyond (where the exponent's x^2 / 2, up to 72, carries
// float32's rounding), the same bfloat16 value as the exact one once rounded (-0 and +0 alike),
// and the derivative within 1e-6 absolute (it crosses 0 at x = -0.75, where relative error means
// nothing). GELU(0) = 0 and GELU'(0) = 1/2 exactly: Q(1) = -1 holds in float32.
TEST_CASE("ops activation: the erfc form of GELU is float32-accurate at every bfloat16 value") {
  const auto to_bf16 = [](double v) {
    const float f = static_cast<float>(v);
    uint32_t u = 0;
    std::memcpy(&u, &f, sizeof u);
    u = ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) << 16;  // round to nearest even
    float r = 0.0f;
    std::memcpy(&r, &u, sizeof r);
    return r;
  };
  int values = 0;
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const uint32_t u = bits << 16;
    float x = 0.0f;
    std::memcpy(&x, &u, sizeof x);
    if (!std::isfinite(x) || std::fabs(x) > 12.0f) continue;
    ++values;
    const double xd = x, cdf = 0.5 * std::erfc(-xd / std::sqrt(2.0));
    const double act = xd * cdf;
    const double grad = cdf + xd * std::exp(-0.5 * xd * xd) / std::sqrt(2.0 * M_PI);
    float got_act = 0.0f;
    const float got_grad = kvc::kernels::math::gelu_erfc_with_backward(x, 1.0f, &got_act);
    CAPTURE(x);
    CHECK(got_act == kvc::kernels::math::gelu_erfc(x));
    CHECK(std::fabs(got_act - act) <= (std::fabs(x) <= 5.0f ? 1.5e-6 : 5e-6) * std::fabs(act));
    CHECK(to_bf16(got_act) == to_bf16(act));
    CHECK(std::fabs(got_grad - grad) <= 1e-6);
    CHECK(kvc::kernels::math::gelu_erfc_with_backward(x, -2.5f, &got_act) == -2.5f * got_grad);
  }
  // A sign each: 129 binades of 128 normals below 8, 65 values in [8, 12], 127 subnormals, zero.
  CHECK(values == 2 * (129 * 128 + 65 + 127 + 1));
  float act0 = 1.0f;
  CHECK(kvc::kernels::math::gelu_erfc_with_backward(0.0f, 1.0f, &act0) == 0.5f);
  CHECK(act0 == 0.0f);
}

// The polynomial in kernels/math/elementwise.h is the one tools/fit_gelu_erfc.py fits: each
// coefficient the script prints, highest power first, appears in the header in that order.
TEST_CASE("ops activation: the erfc form's coefficients are the fit's") {
  const test::TempDir dir("gelu_fit");
  const std::string python = test::python_or_skip("numpy", dir.path, "gelu fit");
  if (python.empty()) return;
  const test::RunResult r = test::run_shell(
      python + " " + std::string(KVC_SOURCE_DIR) + "/tools/fit_gelu_erfc.py", dir.path);
  REQUIRE(r.exit_code == 0);
  std::vector<std::string> coeffs;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    if (line.size() > 3 && line.compare(0, 2, "  ") == 0 && line.back() == 'f') {
      coeffs.push_back(line.substr(2));
    }
  }
  REQUIRE(coeffs.size() == 8);  // degree 7
  std::ifstream header(std::string(KVC_SOURCE_DIR) + "/kernels/math/elementwise.h");
  std::stringstream text;
  text << header.rdbuf();
  const std::string h = text.str();
  size_t at = h.find("gelu_erfc_parts(float x)");
  REQUIRE(at != std::string::npos);
  for (const std::string& c : coeffs) {
    CAPTURE(c);
    at = h.find(c, at);
    CHECK(at != std::string::npos);
    if (at == std::string::npos) break;
  }
}

TEST_CASE("ops activation: dropout") {
  const Tensor x = Tensor::ones({1000, 100}, f64());
  SUBCASE("identity without a kernel in eval or at p = 0") {
    CHECK(dropout(x, 0.5, false, 1, 0).same(x));
    CHECK(dropout(x, 0.0, true, 1, 0).same(x));
  }
  SUBCASE("p outside [0, 1) is an error") {
    CHECK_THROWS_WITH_AS(dropout(x, 1.0, true, 1, 0), doctest::Contains("dropout"), kvc::Error);
    CHECK_THROWS_AS(dropout(x, -0.1, false, 1, 0), kvc::Error);
  }
  SUBCASE("mask from Philox, inverted scaling, keep rate") {
    const double p = 0.3;
    const uint64_t seed = 77, offset = 5;
    for (DType dt : {DType::f32, DType::f64}) {
      const Tensor y = dropout(x.to(dt), p, true, seed, offset);
      const std::vector<double> yv = y.to_vector();
      int64_t kept = 0;
      bool mask_ok = true;
      for (size_t i = 0; i < yv.size(); ++i) {
        const bool keep = philox::uniform(seed, offset, i) >= static_cast<float>(p);
        kept += keep;
        const double want = keep ? 1 / (1 - p) : 0;
        mask_ok = mask_ok && std::fabs(yv[i] - want) < 1e-6;
      }
      CHECK(mask_ok);
      // Kept fraction within 5 standard errors of 1 - p.
      const double n = static_cast<double>(yv.size());
      CHECK(std::fabs(kept / n - (1 - p)) < 5 * std::sqrt(p * (1 - p) / n));
    }
    // Another offset draws another mask.
    CHECK(dropout(x, p, true, seed, offset + 1).to_vector() !=
          dropout(x, p, true, seed, offset).to_vector());
  }
  SUBCASE("backward replays the mask") {
    const Tensor a = Tensor::randn({37}, 9, 0, 0, 1, f64().with_requires_grad(true));
    backward(sum(dropout(a, 0.5, true, 3, 4)));
    const std::vector<double> g = a.grad().to_vector();
    for (size_t i = 0; i < g.size(); ++i) CHECK(g[i] == (philox::keep(3, 4, i, 0.5f) ? 2.0 : 0.0));
  }
}

TEST_CASE("ops activation: gradients (float64 central differences)") {
  const Tensor x = param({2, 3, 4, 5}, 17);
  for (int64_t axis : {-1, 1, 2, 0}) {
    INFO("softmax axis ", axis);
    check_gradients([=](const std::vector<Tensor>& v) { return softmax(v[0], axis); }, {x});
  }
  check_gradients([](const std::vector<Tensor>& v) { return gelu(v[0]); }, {x});
  // ReLU away from its kink: |x| >= 0.1.
  const Tensor r =
      Tensor::from_vector({-2, -0.5, -0.1, 0.1, 0.7, 3}, {2, 3}, f64()).set_requires_grad(true);
  check_gradients([](const std::vector<Tensor>& v) { return relu(v[0]); }, {r});
  check_gradients([](const std::vector<Tensor>& v) { return dropout(v[0], 0.25, true, 5, 6); },
                  {x});
  check_gradients([](const std::vector<Tensor>& v) { return dropout(v[0], 0.25, false, 5, 6); },
                  {x});
}
