// The library gradcheck: passes a correct gradient, catches wrong ones (and where), rejects
// float32, restores its inputs and leaves no tape behind.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/gradcheck.h"
#include "core/ops.h"
#include "tests/test_util.h"

namespace kvc {
namespace {

using Vec = std::vector<double>;

// y = x^2 elementwise (CPU, float64), recording a backward that returns
// factor * x * gy, plus `bump` added to element `bump_index` only. factor 2, bump 0 is correct.
Tensor square_custom(const Tensor& x, double factor, double bump = 0.0, int64_t bump_index = -1) {
  Tensor y = Tensor::empty(x.shape(), x.options());
  const double* xp = x.data<double>();
  double* yp = y.data<double>();
  for (int64_t i = 0; i < x.numel(); ++i) yp[i] = xp[i] * xp[i];
  Tape::current().record("square_custom", {x}, y, [x, factor, bump, bump_index](const Tensor& gy) {
    Tensor gx = Tensor::empty(x.shape(), x.options());
    const double* xp = x.data<double>();
    const double* g = gy.data<double>();
    double* out = gx.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      out[i] = factor * xp[i] * g[i] + (i == bump_index ? bump : 0.0);
    }
    accumulate_grad(x, gx);
  });
  return y;
}

TEST_CASE("gradcheck: a correct custom gradient passes") {
  Tensor x = Tensor::from_vector({0.5, -1.0, 2.0, 0.25}, {2, 2}, f64());
  const auto res = gradcheck([&] { return square_custom(x, 2.0); }, {{"x", x}});
  REQUIRE(res.size() == 1);
  CHECK(res[0].tensor == "x");
  CHECK(res[0].passed);
  CHECK(res[0].max_abs_error < 1e-8);
  CHECK(res[0].max_rel_error < 1e-8);
  CHECK(res[0].rel_l2_error < 1e-8);
  CHECK(res[0].reached);
  CHECK(all_passed(res));
}

TEST_CASE("gradcheck: a deliberately wrong gradient fails") {
  Tensor x = Tensor::from_vector({0.5, -1.0, 2.0, 0.25}, {2, 2}, f64());
  const auto res = gradcheck([&] { return square_custom(x, 3.0); }, {{"x", x}});
  REQUIRE(res.size() == 1);
  CHECK_FALSE(res[0].passed);
  CHECK_FALSE(all_passed(res));
  CHECK(res[0].max_abs_error > 0.01);
  // 3x vs 2x: the relative error is (3 - 2) / 3 wherever the gradient is not tiny.
  CHECK(res[0].max_rel_error == doctest::Approx(1.0 / 3.0).epsilon(1e-6));
  // Norm-wise: ||3x - 2x|| / ||2x|| = 1/2.
  CHECK(res[0].rel_l2_error == doctest::Approx(0.5).epsilon(1e-6));
}

TEST_CASE("gradcheck: an input the backward never reaches is reported") {
  // y = 2a; b does not enter y, so no gradient reaches it and its analytic gradient counts as 0.
  Tensor a = Tensor::from_vector({1, 2}, {2}, f64());
  Tensor b = Tensor::from_vector({3, 4}, {2}, f64());
  const auto res = gradcheck([&] { return scale(a, 2.0); }, {{"a", a}, {"b", b}});
  REQUIRE(res.size() == 2);
  CHECK(res[0].reached);
  CHECK(res[0].passed);
  CHECK_FALSE(res[1].reached);
  CHECK(res[1].passed);
  CHECK(res[1].rel_l2_error == 0.0);
}

TEST_CASE("gradcheck: a wrong gradient in one element is caught and located") {
  Tensor x = Tensor::from_vector({0.5, -1.0, 2.0, 0.25, 1.5}, {5}, f64());
  const auto res = gradcheck([&] { return square_custom(x, 2.0, 1e-4, 3); }, {{"x", x}});
  CHECK_FALSE(res[0].passed);
  CHECK(res[0].worst_index == 3);
  // The bump is added after the seed is applied: analytic - numeric is the bump itself.
  CHECK(res[0].max_abs_error == doctest::Approx(1e-4).epsilon(1e-3));
  CHECK(res[0].worst_analytic - res[0].worst_numeric == doctest::Approx(1e-4).epsilon(1e-3));
}

TEST_CASE("gradcheck: reports per input, in order, and only the wrong one fails") {
  // f = square_custom(a, wrong) + matmul(b, c): a fails, b and c pass.
  Tensor a = Tensor::from_vector({1, 2, 3, 4}, {2, 2}, f64());
  Tensor b = Tensor::randn({2, 3}, 1, 0, 0.0, 1.0, f64());
  Tensor c = Tensor::randn({3, 2}, 2, 0, 0.0, 1.0, f64());
  const auto res = gradcheck([&] { return add(square_custom(a, 2.5), matmul(b, c)); },
                             {{"a", a}, {"b", b}, {"c", c}});
  REQUIRE(res.size() == 3);
  CHECK(res[0].tensor == "a");
  CHECK(res[1].tensor == "b");
  CHECK(res[2].tensor == "c");
  CHECK_FALSE(res[0].passed);
  CHECK(res[1].passed);
  CHECK(res[2].passed);
}

TEST_CASE("gradcheck: an input the function does not use has zero gradient and passes") {
  Tensor x = Tensor::from_vector({1, 2}, {2}, f64());
  Tensor unused = Tensor::from_vector({3}, {1}, f64());
  const auto res = gradcheck([&] { return square_custom(x, 2.0); }, {{"x", x}, {"u", unused}});
  CHECK(res[1].passed);
  CHECK(res[1].max_abs_error == 0.0);
}

TEST_CASE("gradcheck: restores values, requires_grad and gradients, leaves no tape") {
  Tensor x = Tensor::from_vector({0.1, 0.2, 0.3}, {3}, f64());
  Tensor w = Tensor::from_vector({1, 2, 3}, {3}, f64().with_requires_grad(true));
  w.set_grad(Tensor::from_vector({7, 7, 7}, {3}, f64()));
  Tape::current().clear();
  const auto res = gradcheck([&] { return mul(x, w); }, {{"x", x}, {"w", w}});
  CHECK(all_passed(res));
  CHECK(x.to_vector() == Vec{0.1, 0.2, 0.3});  // bit-exact: the original values are written back
  CHECK(w.to_vector() == Vec{1, 2, 3});
  CHECK_FALSE(x.requires_grad());
  CHECK_FALSE(x.grad().defined());
  CHECK(w.requires_grad());
  CHECK(w.grad().to_vector() == Vec{7, 7, 7});
  CHECK(Tape::current().size() == 0);
  CHECK(grad_enabled());
}

TEST_CASE("gradcheck: NaN in the analytic gradient fails") {
  Tensor x = Tensor::from_vector({1, 2}, {2}, f64());
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const auto res = gradcheck([&] { return square_custom(x, 2.0, nan, 0); }, {{"x", x}});
  CHECK_FALSE(res[0].passed);
}

TEST_CASE("gradcheck: float32 inputs and float32 outputs are rejected with a clear error") {
  Tensor x32 = Tensor::ones({2, 3});
  bool thrown = false;
  try {
    gradcheck([&] { return x32; }, {{"weight", x32}});
  } catch (const Error& e) {
    thrown = true;
    const std::string msg = e.what();
    CHECK(msg.find("gradcheck") != std::string::npos);
    CHECK(msg.find("weight") != std::string::npos);
    CHECK(msg.find("float32") != std::string::npos);
    CHECK(msg.find("(2, 3)") != std::string::npos);
  }
  CHECK(thrown);
  Tensor x = Tensor::ones({2}, f64());
  CHECK_THROWS_AS(gradcheck([&] { return x.to(DType::f32); }, {{"x", x}}), Error);
  CHECK_FALSE(x.requires_grad());  // restored even when the check throws
}

TEST_CASE("gradcheck: works on CUDA inputs") {
  KVC_REQUIRE_CUDA();
  Tensor a = Tensor::randn({2, 3}, 1, 0, 0.0, 1.0, f64().with_device(Device::cuda()));
  Tensor b = Tensor::randn({3, 2}, 2, 0, 0.0, 1.0, f64().with_device(Device::cuda()));
  const auto res = gradcheck([&] { return matmul(a, b, false, false); }, {{"a", a}, {"b", b}});
  CHECK(all_passed(res));
}

}  // namespace
}  // namespace kvc
