// Tests of sum, mean and sum_to: values against loops, gradients against finite differences.
#include <doctest/doctest.h>

#include "core/autograd.h"
#include "core/ops.h"
#include "tests/test_util.h"

using namespace kvc;
using kvc::test::check_gradients;
using kvc::test::param;

TEST_CASE("ops reduce: sum and mean values") {
  // x[i, j, k] = 12 i + 4 j + k for shape (2, 3, 4).
  const Tensor x = reshape(Tensor::arange(24, f64()), {2, 3, 4});
  CHECK(sum(x).shape() == Shape{});
  CHECK(sum(x).item() == 276);  // 23 * 24 / 2
  CHECK(mean(x).item() == 11.5);
  // Over axis 1 (a middle axis): sum_j (12 i + 4 j + k) = 36 i + 12 + 3 k.
  const Tensor s1 = sum(x, 1);
  CHECK(s1.shape() == Shape{2, 4});
  std::vector<double> expect;
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 4; ++k) expect.push_back(36 * i + 12 + 3 * k);
  CHECK(s1.to_vector() == expect);
  CHECK(sum(x, -2, true).shape() == Shape{2, 1, 4});
  CHECK(sum(x, -2, true).to_vector() == expect);
  // Mean over the last axis: 12 i + 4 j + 1.5.
  const Tensor m2 = mean(x, -1);
  CHECK(m2.shape() == Shape{2, 3});
  expect.clear();
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) expect.push_back(12 * i + 4 * j + 1.5);
  CHECK(m2.to_vector() == expect);
  // Over axis 0: 12 + 8 j + 2 k, then mean halves it.
  const Tensor m0 = mean(x, 0, true);
  CHECK(m0.shape() == Shape{1, 3, 4});
  expect.clear();
  for (int j = 0; j < 3; ++j)
    for (int k = 0; k < 4; ++k) expect.push_back(6 + 4 * j + k);
  CHECK(m0.to_vector() == expect);
  // float32 sums of many elements stay accurate: 1e6 * 0.1.
  CHECK(sum(Tensor::full({1000000}, 0.1)).item() == doctest::Approx(1e5).epsilon(1e-6));
  CHECK(sum(Tensor::full({1000, 1000}, 0.1), 0).to_vector()[7] ==
        doctest::Approx(100).epsilon(1e-5));
}

TEST_CASE("ops reduce: sum_to values") {
  const Tensor x = reshape(Tensor::arange(24, f64()), {2, 3, 4});
  // To (3, 1): sum over i and k of 12 i + 4 j + k = 2*4*4 j + 4*12 + 2*6 = 32 j + 60.
  const Tensor a = sum_to(x, {3, 1});
  CHECK(a.shape() == Shape{3, 1});
  CHECK(a.to_vector() == std::vector<double>{60, 92, 124});
  // To (4,): sum over i, j = 6 * k + 3*12 + 2*12 = 6 k + 60.
  CHECK(sum_to(x, {4}).to_vector() == std::vector<double>{60, 66, 72, 78});
  // To (2, 1, 4): 36 i + 12 + 3 k, as sum over axis 1.
  CHECK(sum_to(x, {2, 1, 4}).to_vector() == sum(x, 1).to_vector());
  CHECK(sum_to(x, {}).item() == 276);
  CHECK(sum_to(x, {1, 1, 1}).shape() == Shape{1, 1, 1});
  CHECK(sum_to(x, {1, 1, 1}).item() == 276);
  CHECK(sum_to(x, {2, 3, 4}).same(x));
  // Eight axes with alternating reduced axes.
  const Tensor y = Tensor::ones({2, 3, 2, 3, 2, 3, 2, 3});
  const Tensor z = sum_to(y, {2, 1, 2, 1, 2, 1, 2, 1});
  CHECK(z.shape() == Shape{2, 1, 2, 1, 2, 1, 2, 1});
  for (double v : z.to_vector()) CHECK(v == 81);
}

TEST_CASE("ops reduce: gradients (float64 central differences)") {
  const Tensor x = param({3, 4, 5}, 7);
  check_gradients([](const std::vector<Tensor>& v) { return sum(v[0]); }, {x});
  check_gradients([](const std::vector<Tensor>& v) { return mean(v[0]); }, {x});
  for (int64_t axis : {0, 1, 2, -1, -2}) {
    INFO("axis ", axis);
    for (bool keep : {false, true}) {
      check_gradients([=](const std::vector<Tensor>& v) { return sum(v[0], axis, keep); }, {x});
      check_gradients([=](const std::vector<Tensor>& v) { return mean(v[0], axis, keep); }, {x});
    }
  }
  for (const Shape& target : {Shape{4, 1}, Shape{5}, Shape{3, 1, 5}, Shape{}, Shape{1, 4, 5}}) {
    INFO("sum_to ", shape_str(target));
    check_gradients([=](const std::vector<Tensor>& v) { return sum_to(v[0], target); }, {x});
  }
}

TEST_CASE("ops reduce: closed-form gradients") {
  Tensor x = Tensor::zeros({2, 3}, f64().with_requires_grad(true));
  backward(sum(mean(x, 1)));  // each element gets 1/3
  for (double g : x.grad().to_vector()) CHECK(g == doctest::Approx(1.0 / 3.0));
  x.zero_grad();
  backward(sum_to(x, {3}), Tensor::from_vector({1, 2, 3}, {3}, f64()));
  CHECK(x.grad().to_vector() == std::vector<double>{1, 2, 3, 1, 2, 3});
}

TEST_CASE("ops reduce: errors") {
  const Tensor x = Tensor::zeros({2, 3});
  CHECK_THROWS_WITH_AS(sum(x, 2), doctest::Contains("(2, 3)"), kvc::Error);
  CHECK_THROWS_WITH_AS(mean(x, -3), doctest::Contains("mean"), kvc::Error);
  CHECK_THROWS_WITH_AS(sum_to(x, {4}), doctest::Contains("(4,)"), kvc::Error);
  CHECK_THROWS_AS(sum_to(x, {1, 2, 3}), kvc::Error);
  CHECK_THROWS_AS(sum(Tensor()), kvc::Error);
}
