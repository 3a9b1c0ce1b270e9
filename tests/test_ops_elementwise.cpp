// Tests of add/sub/mul/div with broadcasting, neg, scale, add_scalar: values and gradients.
#include <doctest/doctest.h>

#include <string>

#include "core/autograd.h"
#include "core/gradcheck.h"
#include "core/ops.h"
#include "tests/test_util.h"

using namespace kvc;
using kvc::test::check_gradients;
using kvc::test::param;
using kvc::test::param_uniform;

namespace {

// Naive numpy-broadcast reference: out[idx] = f(a[idx mapped], b[idx mapped]), by index math
// independent of the kernel's stride collapsing.
template <typename F>
std::vector<double> broadcast_reference(const Tensor& a, const Tensor& b, const Shape& out, F f) {
  const std::vector<double> av = a.to_vector(), bv = b.to_vector();
  const size_t nd = out.size();
  std::vector<double> r(static_cast<size_t>(numel_of(out)));
  std::vector<int64_t> idx(nd, 0);
  auto offset = [&](const Shape& s) {
    int64_t off = 0;
    for (size_t k = 0; k < s.size(); ++k) {
      const int64_t i = s[k] == 1 ? 0 : idx[k + nd - s.size()];
      off = off * s[k] + i;
    }
    return static_cast<size_t>(off);
  };
  for (size_t flat = 0; flat < r.size(); ++flat) {
    size_t rem = flat;
    for (size_t k = nd; k-- > 0;) {
      idx[k] = static_cast<int64_t>(rem % static_cast<size_t>(out[k]));
      rem /= static_cast<size_t>(out[k]);
    }
    r[flat] = f(av[offset(a.shape())], bv[offset(b.shape())]);
  }
  return r;
}

}  // namespace

TEST_CASE("ops elementwise: broadcast_shapes") {
  CHECK(broadcast_shapes("add", {2, 1, 3}, {4, 3}) == Shape{2, 4, 3});
  CHECK(broadcast_shapes("add", {}, {4, 3}) == Shape{4, 3});
  CHECK(broadcast_shapes("add", {5, 1}, {}) == Shape{5, 1});
  CHECK(broadcast_shapes("add", {2, 1}, {1, 3}) == Shape{2, 3});
  CHECK(broadcast_shapes("add", {1, 2, 1, 4, 8}, {3, 2, 5, 4, 8}) == Shape{3, 2, 5, 4, 8});
  CHECK_THROWS_AS(broadcast_shapes("add", {2, 3}, {4}), kvc::Error);
  CHECK_THROWS_AS(broadcast_shapes("add", Shape(9, 1), {1}), kvc::Error);
}

TEST_CASE("ops elementwise: hand-computed values") {
  const Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  const Tensor row = Tensor::from_vector({10, 20, 30}, {3});
  const Tensor col = Tensor::from_vector({2, 4}, {2, 1});
  CHECK(add(a, row).to_vector() == std::vector<double>{11, 22, 33, 14, 25, 36});
  CHECK(sub(a, row).to_vector() == std::vector<double>{-9, -18, -27, -6, -15, -24});
  CHECK(sub(row, a).to_vector() == std::vector<double>{9, 18, 27, 6, 15, 24});
  CHECK(mul(a, col).to_vector() == std::vector<double>{2, 4, 6, 16, 20, 24});
  CHECK(div(a, col).to_vector() == std::vector<double>{0.5, 1, 1.5, 1, 1.25, 1.5});
  CHECK(div(col, a).shape() == Shape{2, 3});
  CHECK(div(col.to(DType::f64), a.to(DType::f64)).to_vector() ==
        std::vector<double>{2.0 / 1, 2.0 / 2, 2.0 / 3, 4.0 / 4, 4.0 / 5, 4.0 / 6});
  // Both operands stretch: (2, 1) + (3,) -> (2, 3).
  CHECK(add(col, row).to_vector() == std::vector<double>{12, 22, 32, 14, 24, 34});
  // A shape-() scalar on either side.
  const Tensor s = Tensor::scalar(3);
  CHECK(mul(s, a).to_vector() == std::vector<double>{3, 6, 9, 12, 15, 18});
  CHECK(sub(a, s).to_vector() == std::vector<double>{-2, -1, 0, 1, 2, 3});
  CHECK(add(s, s).shape() == Shape{});
  CHECK(add(s, s).item() == 6);
  CHECK(neg(a).to_vector() == std::vector<double>{-1, -2, -3, -4, -5, -6});
  CHECK(scale(a, 0.5).to_vector() == std::vector<double>{0.5, 1, 1.5, 2, 2.5, 3});
  CHECK(add_scalar(a, -1).to_vector() == std::vector<double>{0, 1, 2, 3, 4, 5});
  CHECK((a * 2.0 + 1.0).to_vector() == std::vector<double>{3, 5, 7, 9, 11, 13});
  // Empty tensors broadcast too.
  CHECK(add(Tensor::zeros({0, 3}), row).shape() == Shape{0, 3});
}

TEST_CASE("ops elementwise: broadcast patterns against a naive reference") {
  struct Case {
    Shape a, b;
  };
  const std::vector<Case> cases = {
      {{2, 3, 4, 5, 6}, {1, 3, 1, 5, 6}},  // intrablock positions over (b, h, w, n, d)
      {{2, 3, 4, 7}, {7}},                 // bias over (..., out)
      {{7}, {2, 3, 4, 7}},                 // bias on the left
      {{2, 3, 4, 5}, {2, 1, 4, 1}},        // interleaved broadcast axes
      {{4, 1, 6}, {1, 5, 1}},              // both sides stretch
      {{3, 4, 5}, {3, 4, 1}},              // per-row scalar (inner stride 0)
      {{3, 4, 5}, {}},                     // scalar
      {{2, 1, 2, 1, 2, 1, 2, 3}, {2, 3}},  // eight axes
  };
  for (DType dt : {DType::f32, DType::f64}) {
    for (const Case& c : cases) {
      const Tensor a = Tensor::randn(c.a, 1, 0, 0, 1, TensorOptions{}.with_dtype(dt));
      const Tensor b = Tensor::rand(c.b, 2, 0, 0.5, 2.0, TensorOptions{}.with_dtype(dt));
      const Shape out = broadcast_shapes("test", c.a, c.b);
      INFO("a ", shape_str(c.a), " b ", shape_str(c.b), " ", dtype_name(dt));
      const double tol = dt == DType::f32 ? 1e-6 : 1e-14;
      CHECK(kvc::test::max_abs_diff(add(a, b).to_vector(),
                                    broadcast_reference(a, b, out, [](double x, double y) {
                                      return x + y;
                                    })) < tol * 4);
      CHECK(kvc::test::max_abs_diff(sub(a, b).to_vector(),
                                    broadcast_reference(a, b, out, [](double x, double y) {
                                      return x - y;
                                    })) < tol * 4);
      CHECK(kvc::test::max_abs_diff(mul(a, b).to_vector(),
                                    broadcast_reference(a, b, out, [](double x, double y) {
                                      return x * y;
                                    })) < tol * 8);
      CHECK(kvc::test::max_abs_diff(div(a, b).to_vector(),
                                    broadcast_reference(a, b, out, [](double x, double y) {
                                      return x / y;
                                    })) < tol * 8);
    }
  }
}

TEST_CASE("ops elementwise: gradients (float64 central differences)") {
  struct Case {
    const char* name;
    Shape a, b;
  };
  const std::vector<Case> cases = {
      {"same shape", {2, 3, 4}, {2, 3, 4}},
      {"positions (1,h,1,n,d) over (b,h,w,n,d)", {2, 2, 3, 2, 3}, {1, 2, 1, 2, 3}},
      {"bias (out) over (...,out)", {2, 3, 4}, {4}},
      {"bias on the left", {4}, {2, 3, 4}},
      {"scalar", {3, 4}, {}},
      {"both stretch", {3, 1}, {1, 4}},
      {"middle axis", {2, 3, 4}, {2, 1, 4}},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const Tensor a = param(c.a, 11);
    const Tensor b = param_uniform(c.b, 12, 0.5, 2.0);  // away from zero for div
    check_gradients([](const std::vector<Tensor>& x) { return add(x[0], x[1]); }, {a, b});
    check_gradients([](const std::vector<Tensor>& x) { return sub(x[0], x[1]); }, {a, b});
    check_gradients([](const std::vector<Tensor>& x) { return mul(x[0], x[1]); }, {a, b});
    check_gradients([](const std::vector<Tensor>& x) { return div(x[0], x[1]); }, {a, b});
    check_gradients([](const std::vector<Tensor>& x) { return div(x[1], x[0]); },
                    {param_uniform(c.a, 13, 0.5, 2.0), param(c.b, 14)});
  }
  SUBCASE("intrablock positions (h,n,d) reshaped to (1,h,1,n,d)") {
    const Tensor x = param({2, 2, 3, 4, 3}, 21);
    const Tensor pos = param({2, 4, 3}, 22);
    check_gradients(
        [](const std::vector<Tensor>& v) {
          return add(v[0], reshape(v[1], {1, 2, 1, 4, 3}));
        },
        {x, pos});
  }
  SUBCASE("only one input requires grad") {
    const Tensor a = param({3, 4}, 31);
    const Tensor b = Tensor::randn({4}, 32, 0, 0, 1, f64());
    check_gradients([](const std::vector<Tensor>& v) { return mul(v[0], v[1]); }, {a, b});
    check_gradients([](const std::vector<Tensor>& v) { return mul(v[1], v[0]); }, {a, b});
  }
  SUBCASE("unary") {
    const Tensor a = param({2, 3, 4}, 41);
    check_gradients([](const std::vector<Tensor>& v) { return neg(v[0]); }, {a});
    check_gradients([](const std::vector<Tensor>& v) { return scale(v[0], -2.5); }, {a});
    check_gradients([](const std::vector<Tensor>& v) { return add_scalar(v[0], 3.0); }, {a});
  }
}

TEST_CASE("ops elementwise: closed-form gradients") {
  // d/da sum(a * a) = 2a: the same tensor on both sides accumulates two contributions.
  const Tensor a = Tensor::from_vector({1, -2, 3}, {3}, f64().with_requires_grad(true));
  backward(sum(mul(a, a)));
  CHECK(a.grad().to_vector() == std::vector<double>{2, -4, 6});
  // d/db sum(x / b) for b of shape (1,) over x (2, 1): -sum(x) / b^2.
  const Tensor x = Tensor::from_vector({1, 3}, {2, 1}, f64());
  const Tensor b = Tensor::from_vector({2}, {1}, f64().with_requires_grad(true));
  backward(sum(div(x, b)));
  CHECK(b.grad().to_vector()[0] == doctest::Approx(-4.0 / 4.0));
  // No tape entry when nothing requires grad.
  const size_t before = Tape::current().size();
  (void)add(x, x);
  CHECK(Tape::current().size() == before);
  CHECK_FALSE(add(x, x).requires_grad());
  {
    NoGradGuard guard;
    CHECK_FALSE(add(a, a).requires_grad());
  }
}

TEST_CASE("ops elementwise: errors name the op and both shapes") {
  const Tensor a = Tensor::zeros({2, 3});
  const Tensor b = Tensor::zeros({4});
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("add"), kvc::Error);
  for (const char* op : {"add", "sub", "mul", "div"}) {
    std::string msg;
    try {
      const std::string name(op);
      if (name == "add") (void)add(a, b);
      if (name == "sub") (void)sub(a, b);
      if (name == "mul") (void)mul(a, b);
      if (name == "div") (void)div(a, b);
    } catch (const kvc::Error& e) {
      msg = e.what();
    }
    INFO(op, ": ", msg);
    CHECK(msg.find(op) == 0);
    CHECK(msg.find("(2, 3)") != std::string::npos);
    CHECK(msg.find("(4,)") != std::string::npos);
  }
  // dtype mismatch names both dtypes.
  CHECK_THROWS_WITH_AS(add(a, Tensor::zeros({2, 3}, f64())), doctest::Contains("float64"),
                       kvc::Error);
  CHECK_THROWS_AS(add(a, Tensor()), kvc::Error);
  CHECK_THROWS_AS(neg(Tensor()), kvc::Error);
}

TEST_CASE("ops elementwise: the finite-difference checker catches a wrong gradient") {
  // y = 2x recorded with a backward that claims dy/dx = 3: the checker must see it.
  const kvc::test::OpFn wrong = [](const std::vector<Tensor>& v) {
    Tensor out;
    {
      NoGradGuard guard;
      out = scale(v[0], 2.0);
    }
    const Tensor x = v[0];
    Tape::current().record("wrong", {x}, out, [x](const Tensor& g) {
      NoGradGuard guard;
      accumulate_grad(x, scale(g, 3.0));
    });
    return out;
  };
  const Tensor x = param({5}, 51);
  const std::vector<GradcheckResult> res = gradcheck([&] { return wrong({x}); }, {{"x", x}});
  CHECK(res[0].rel_l2_error == doctest::Approx(0.5).epsilon(1e-6));
  CHECK_FALSE(res[0].passed);
}
