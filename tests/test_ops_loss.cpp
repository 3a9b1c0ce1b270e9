// Tests of mse_loss: hand-computed values, closed-form and finite-difference gradients, errors.
#include <doctest/doctest.h>

#include "core/autograd.h"
#include "core/ops.h"
#include "tests/test_util.h"

using namespace kvc;
using kvc::test::check_gradients;
using kvc::test::param;

TEST_CASE("ops loss: mse values") {
  const Tensor p = Tensor::from_vector({1, 2, 3, 4}, {2, 2});
  const Tensor t = Tensor::from_vector({1, 0, 0, 2}, {2, 2});
  const Tensor l = mse_loss(p, t);
  CHECK(l.shape() == Shape{});
  CHECK(l.item() == doctest::Approx((0 + 4 + 9 + 4) / 4.0));
  CHECK(mse_loss(t, t).item() == 0);
}

TEST_CASE("ops loss: mse gradients") {
  // d/dp mean((p - t)^2) = 2 (p - t) / n, scaled by the upstream gradient (3 here).
  const Tensor p = Tensor::from_vector({1, 2, 3, 4}, {4}, f64().with_requires_grad(true));
  const Tensor t = Tensor::from_vector({0, 2, 5, 3}, {4}, f64().with_requires_grad(true));
  backward(scale(mse_loss(p, t), 3.0));
  CHECK(p.grad().to_vector() == std::vector<double>{1.5, 0, -3, 1.5});
  CHECK(t.grad().to_vector() == std::vector<double>{-1.5, 0, 3, -1.5});
  check_gradients([](const std::vector<Tensor>& v) { return mse_loss(v[0], v[1]); },
                  {param({2, 3, 4}, 1), param({2, 3, 4}, 2)});
  check_gradients([](const std::vector<Tensor>& v) { return mse_loss(v[0], v[1]); },
                  {param({5, 3}, 3), Tensor::randn({5, 3}, 4, 0, 0, 1, f64())});
}

TEST_CASE("ops loss: mse errors name both shapes") {
  CHECK_THROWS_WITH_AS(mse_loss(Tensor::zeros({2, 3}), Tensor::zeros({3, 2})),
                       doctest::Contains("(2, 3)"), kvc::Error);
  CHECK_THROWS_WITH_AS(mse_loss(Tensor::zeros({2, 3}), Tensor::zeros({3})),
                       doctest::Contains("(3,)"), kvc::Error);
  CHECK_THROWS_AS(mse_loss(Tensor::zeros({2}), Tensor::zeros({2}, f64())), kvc::Error);
}
