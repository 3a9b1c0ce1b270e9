// Tests of reshape, permute and narrow: values by index math, gradients by finite differences.
#include <doctest/doctest.h>

#include "core/autograd.h"
#include "core/ops.h"
#include "tests/test_util.h"

using namespace kvc;
using kvc::test::check_gradients;
using kvc::test::param;

TEST_CASE("ops shape: reshape") {
  const Tensor x = Tensor::arange(24);
  const Tensor y = reshape(x, {2, -1, 4});
  CHECK(y.shape() == Shape{2, 3, 4});
  CHECK(y.raw_data() == x.raw_data());  // a view: no copy
  CHECK(y.to_vector() == x.to_vector());
  CHECK(reshape(x, {-1}).shape() == Shape{24});
  CHECK(reshape(reshape(x, {4, 6}), {2, 2, 2, 3}).shape() == Shape{2, 2, 2, 3});
  CHECK(reshape(Tensor::scalar(5), {1, 1}).shape() == Shape{1, 1});
  CHECK(reshape(Tensor::zeros({0, 4}), {-1, 2}).shape() == Shape{0, 2});
  CHECK_THROWS_WITH_AS(reshape(x, {5, -1}), doctest::Contains("(24,)"), kvc::Error);
  CHECK_THROWS_WITH_AS(reshape(x, {-1, -1}), doctest::Contains("reshape"), kvc::Error);
  CHECK_THROWS_WITH_AS(reshape(x, {5, 5}), doctest::Contains("(5, 5)"), kvc::Error);
  CHECK_THROWS_AS(reshape(x, {-2, -12}), kvc::Error);
}

TEST_CASE("ops shape: permute values") {
  // x[i, j, k] = 100 i + 10 j + k over (2, 3, 4); out = x.permute(2, 0, 1): out[k, i, j].
  std::vector<double> vals;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) vals.push_back(100 * i + 10 * j + k);
  for (DType dt : {DType::f32, DType::f64}) {
    const Tensor x = Tensor::from_vector(vals, {2, 3, 4}, TensorOptions{}.with_dtype(dt));
    const Tensor y = permute(x, {2, 0, 1});
    CHECK(y.shape() == Shape{4, 2, 3});
    std::vector<double> expect;
    for (int k = 0; k < 4; ++k)
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) expect.push_back(100 * i + 10 * j + k);
    CHECK(y.to_vector() == expect);
    // A middle-axis swap, with negative axes: out[i, k, j].
    const Tensor z = permute(x, {0, -1, 1});
    CHECK(z.shape() == Shape{2, 4, 3});
    expect.clear();
    for (int i = 0; i < 2; ++i)
      for (int k = 0; k < 4; ++k)
        for (int j = 0; j < 3; ++j) expect.push_back(100 * i + 10 * j + k);
    CHECK(z.to_vector() == expect);
    CHECK(permute(x, {0, 1, 2}).to_vector() == vals);
  }
  // (b, h, w, n, d) -> (b, h, d, w, n), the conv layout, with size-1 axes mixed in.
  const Tensor big = Tensor::arange(2 * 1 * 3 * 4 * 5, f64());
  const Tensor x5 = reshape(big, {2, 1, 3, 4, 5});
  const Tensor y5 = permute(x5, {0, 1, 4, 2, 3});
  const std::vector<double> yv = y5.to_vector();
  size_t at = 0;
  bool all = true;
  for (int b = 0; b < 2; ++b)
    for (int d = 0; d < 5; ++d)
      for (int w = 0; w < 3; ++w)
        for (int n = 0; n < 4; ++n) all = all && yv[at++] == ((b * 3 + w) * 4 + n) * 5 + d;
  CHECK(all);
}

TEST_CASE("ops shape: narrow values") {
  const Tensor x = reshape(Tensor::arange(24, f64()), {2, 3, 4});
  const Tensor y = narrow(x, 1, 1, 2);  // x[:, 1:3, :]
  CHECK(y.shape() == Shape{2, 2, 4});
  std::vector<double> expect;
  for (int i = 0; i < 2; ++i)
    for (int j = 1; j < 3; ++j)
      for (int k = 0; k < 4; ++k) expect.push_back(12 * i + 4 * j + k);
  CHECK(y.to_vector() == expect);
  CHECK(narrow(x, -1, 3, 1).to_vector() == std::vector<double>{3, 7, 11, 15, 19, 23});
  CHECK(narrow(x, 0, 2, 0).shape() == Shape{0, 3, 4});
  CHECK_THROWS_WITH_AS(narrow(x, 1, 2, 2), doctest::Contains("(2, 3, 4)"), kvc::Error);
  CHECK_THROWS_AS(narrow(x, 3, 0, 1), kvc::Error);
  CHECK_THROWS_AS(narrow(x, 0, -1, 1), kvc::Error);
}

TEST_CASE("ops shape: permute errors") {
  const Tensor x = Tensor::zeros({2, 3, 4});
  CHECK_THROWS_WITH_AS(permute(x, {0, 1}), doctest::Contains("(2, 3, 4)"), kvc::Error);
  CHECK_THROWS_WITH_AS(permute(x, {0, 1, 1}), doctest::Contains("repeats"), kvc::Error);
  CHECK_THROWS_AS(permute(x, {0, 1, 3}), kvc::Error);
}

TEST_CASE("ops shape: gradients (float64 central differences)") {
  const Tensor x = param({2, 3, 4, 2}, 5);
  check_gradients([](const std::vector<Tensor>& v) { return reshape(v[0], {6, -1}); }, {x});
  check_gradients([](const std::vector<Tensor>& v) { return permute(v[0], {0, 2, 1, 3}); }, {x});
  check_gradients([](const std::vector<Tensor>& v) { return permute(v[0], {3, 0, 2, 1}); }, {x});
  check_gradients([](const std::vector<Tensor>& v) { return narrow(v[0], 1, 1, 2); }, {x});
  check_gradients([](const std::vector<Tensor>& v) { return narrow(v[0], -1, 0, 1); }, {x});
  // A chain: reshape then permute then narrow, so gradients pass through each adjoint.
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return narrow(permute(reshape(v[0], {6, 8}), {1, 0}), 0, 2, 5);
      },
      {x});
}
