// The tape: gradients add over reuse, no_grad, zero_grad, freed intermediates, long chains and
// the errors of misuse, checked against hand-computed and closed-form gradients.
#include <cmath>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "tests/test_util.h"

namespace kvc {
namespace {

using Vec = std::vector<double>;

using test::check_error;

Tensor leaf(const Vec& v, const Shape& s) {
  return Tensor::from_vector(v, s, f64().with_requires_grad(true));
}

TEST_CASE("autograd: a tensor used twice gets the sum of both gradients") {
  // L = sum(x * x + 3 x) = x^2 + 3x per element: dL/dx = 2x + 3.
  Tensor x = leaf({1, -2, 0.5}, {3});
  backward(sum(add(mul(x, x), scale(x, 3.0))));
  CHECK(x.grad().to_vector() == Vec{5, -1, 4});
}

TEST_CASE("autograd: the same tensor as both inputs of one op (matmul(a, a))") {
  // L = sum(A A). dL/dA = ones A^T + A^T ones. A = [[1, 2], [3, 4]]:
  // ones A^T = [[3, 7], [3, 7]], A^T ones = [[4, 4], [6, 6]] -> [[7, 11], [9, 13]].
  Tensor a = leaf({1, 2, 3, 4}, {2, 2});
  backward(sum(matmul(a, a)));
  CHECK(a.grad().to_vector() == Vec{7, 11, 9, 13});
}

TEST_CASE("autograd: reuse across two ops that meet again (|x W|^2)") {
  // y = x W twice, L = y1 . y2 = |x W|^2, dL/dx = 2 x W W^T, dL/dW = 2 x^T (x W).
  // x = [1, 2], W = [[1, 0], [1, 1]]: x W = [3, 2]; W W^T = [[1, 1], [1, 2]];
  // dL/dx = 2 [3, 5] = [6, 10]; dL/dW = 2 [[3, 2], [6, 4]] = [[6, 4], [12, 8]].
  Tensor x = leaf({1, 2}, {1, 2});
  Tensor w = leaf({1, 0, 1, 1}, {2, 2});
  const Tensor y1 = matmul(x, w);
  const Tensor y2 = matmul(x, w);
  const Tensor l = matmul(y1, y2, false, true);  // (1, 1)
  CHECK(l.item() == 13.0);
  backward(l);
  CHECK(x.grad().to_vector() == Vec{6, 10});
  CHECK(w.grad().to_vector() == Vec{6, 4, 12, 8});
}

TEST_CASE("autograd: no_grad records nothing and outputs do not require grad") {
  Tensor x = leaf({1, 2, 3, 4}, {2, 2});
  Tape::current().clear();
  {
    NoGradGuard guard;
    CHECK_FALSE(grad_enabled());
    {
      NoGradGuard nested;
      CHECK_FALSE(grad_enabled());
    }
    CHECK_FALSE(grad_enabled());  // nesting restores the outer state, not "on"
    const Tensor y = add(matmul(x, x), x);
    CHECK(Tape::current().size() == 0);
    CHECK_FALSE(y.requires_grad());
    CHECK(y.is_leaf());
    check_error([&] { backward(sum(y)); }, {"backward", "does not require grad"});
  }
  CHECK(grad_enabled());
  const Tensor y = matmul(x, x);
  CHECK(Tape::current().size() == 1);
  CHECK(y.requires_grad());
  Tape::current().clear();
}

TEST_CASE("autograd: inputs that do not require grad record nothing") {
  Tape::current().clear();
  const Tensor a = Tensor::ones({2, 2}, f64());
  const Tensor y = mul(matmul(a, a), a);
  CHECK_FALSE(y.requires_grad());
  CHECK(Tape::current().size() == 0);
}

TEST_CASE("autograd: zero_grad drops the gradient, without it gradients accumulate") {
  Tensor x = leaf({1, 2}, {2});
  backward(sum(scale(x, 2.0)));
  CHECK(x.grad().to_vector() == Vec{2, 2});
  backward(sum(scale(x, 2.0)));
  CHECK(x.grad().to_vector() == Vec{4, 4});
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
  backward(sum(scale(x, 3.0)));
  CHECK(x.grad().to_vector() == Vec{3, 3});
}

TEST_CASE("autograd: intermediates keep no gradient and the tape is freed after backward") {
  Tensor x = leaf({1, 2, 3}, {3});
  const Tensor h = mul(x, x);
  const Tensor l = sum(h);
  CHECK(Tape::current().size() == 2);
  CHECK_FALSE(h.is_leaf());
  backward(l);
  CHECK(Tape::current().size() == 0);
  CHECK_FALSE(h.grad().defined());
  CHECK_FALSE(l.grad().defined());  // a non-leaf root keeps none either
  CHECK(x.grad().to_vector() == Vec{2, 4, 6});
}

TEST_CASE("autograd: an op's saved state is freed once its backward ran, before earlier ops'") {
  // y = 1.5 (2 x) through two hand-recorded ops; the later one's closure alone holds a saved
  // tensor, which must be gone by the time the earlier op's backward runs.
  Tensor x = leaf({1, 2}, {2});
  std::weak_ptr<TensorImpl> saved_by_later;
  bool freed_before_earlier_ran = false;
  Tensor h = Tensor::from_vector({2, 4}, {2}, f64());
  Tape::current().record("double", {x}, h,
                         [x, &saved_by_later, &freed_before_earlier_ran](const Tensor& g) {
                           freed_before_earlier_ran = saved_by_later.expired();
                           accumulate_grad(x, scale(g, 2.0));
                         });
  Tensor y = Tensor::from_vector({3, 6}, {2}, f64());
  {
    const Tensor saved = Tensor::zeros({1000}, f64());
    saved_by_later = saved.impl_ptr();
    Tape::current().record("times1.5", {h}, y,
                           [h, saved](const Tensor& g) { accumulate_grad(h, scale(g, 1.5)); });
  }
  CHECK_FALSE(saved_by_later.expired());  // the tape holds it until its op's backward
  backward(sum(y));
  CHECK(freed_before_earlier_ran);
  CHECK(x.grad().to_vector() == Vec{3, 3});
}

TEST_CASE("autograd: an intermediate is freed once the ops that read it ran, its gradient kept") {
  // y = sum(3 (2 a)^2): a -> b (hand-recorded, checks) -> mid = b * b -> 3 mid -> sum. Only the
  // tape holds mid; it must be gone when b's op runs, its gradient having reached mul first.
  Tensor a = leaf({1, 2}, {2});
  std::weak_ptr<TensorImpl> mid_weak;
  bool mid_freed_when_b_ran = false;
  Tensor b = Tensor::from_vector({2, 4}, {2}, f64());
  Tape::current().record("double", {a}, b, [a, &mid_weak, &mid_freed_when_b_ran](const Tensor& g) {
    mid_freed_when_b_ran = mid_weak.expired();
    accumulate_grad(a, scale(g, 2.0));
  });
  Tensor loss;
  {
    const Tensor mid = mul(b, b);
    mid_weak = mid.impl_ptr();
    loss = sum(scale(mid, 3.0));
  }
  b = Tensor();
  CHECK_FALSE(mid_weak.expired());
  backward(loss);
  CHECK(mid_freed_when_b_ran);
  CHECK(a.grad().to_vector() == Vec{24, 48});  // 3 * 2b * 2 = 24 a
}

TEST_CASE("autograd: a leaf root's gradient is the seed") {
  Tensor x = leaf({1, 2}, {2});
  backward(x, Tensor::from_vector({5, 7}, {2}, f64()));
  CHECK(x.grad().to_vector() == Vec{5, 7});
}

TEST_CASE("autograd: backward through a long chain (x W^100, closed form)") {
  // W = diag(a, b): x W^100 1 = x1 a^100 + x2 b^100. d/dx = [a^100, b^100];
  // d/dW11 = 100 x1 a^99, d/dW22 = 100 x2 b^99, d/dW12 = x1 sum_j a^j b^(99-j)
  // = x1 (a^100 - b^100) / (a - b), d/dW21 = x2 (a^100 - b^100) / (a - b).
  const double a = 1.01, b = 0.99, x1 = 0.5, x2 = -1.5;
  Tensor x = leaf({x1, x2}, {1, 2});
  Tensor w = leaf({a, 0, 0, b}, {2, 2});
  Tensor y = x;
  for (int i = 0; i < 100; ++i) y = matmul(y, w);
  CHECK(Tape::current().size() == 100);
  const Tensor l = matmul(y, Tensor::ones({2, 1}, f64()));
  backward(l);
  CHECK(Tape::current().size() == 0);
  const Vec gx = x.grad().to_vector();
  CHECK(gx[0] == doctest::Approx(std::pow(a, 100)).epsilon(1e-12));
  CHECK(gx[1] == doctest::Approx(std::pow(b, 100)).epsilon(1e-12));
  const double geo = (std::pow(a, 100) - std::pow(b, 100)) / (a - b);
  const Vec gw = w.grad().to_vector();
  CHECK(gw[0] == doctest::Approx(100 * x1 * std::pow(a, 99)).epsilon(1e-12));
  CHECK(gw[1] == doctest::Approx(x1 * geo).epsilon(1e-12));
  CHECK(gw[2] == doctest::Approx(x2 * geo).epsilon(1e-12));
  CHECK(gw[3] == doctest::Approx(100 * x2 * std::pow(b, 99)).epsilon(1e-12));
}

TEST_CASE("autograd: backward on a non-scalar without a seed is an error naming the shape") {
  Tensor x = leaf({1, 2, 3, 4}, {2, 2});
  const Tensor y = matmul(x, x);
  check_error([&] { backward(y); }, {"backward", "(2, 2)", "seed"});
  Tape::current().clear();
}

TEST_CASE("autograd: a seed of the wrong shape is an error naming both shapes") {
  Tensor x = leaf({1, 2, 3, 4}, {2, 2});
  const Tensor y = matmul(x, x);
  check_error([&] { backward(y, Tensor::ones({4}, f64())); }, {"backward", "(4,)", "(2, 2)"});
  Tape::current().clear();
}

TEST_CASE("autograd: a second backward after the tape was freed is an error") {
  Tensor x = leaf({1, 2}, {2});
  const Tensor l = sum(mul(x, x));
  backward(l);
  check_error([&] { backward(l); }, {"backward", "freed"});
  CHECK(x.grad().to_vector() == Vec{2, 4});  // unchanged by the failed call
}

TEST_CASE("autograd: accumulate_grad checks shape and dtype") {
  Tensor x = leaf({1, 2, 3}, {3});
  check_error(
      [&] {
        accumulate_grad(x, Tensor::ones({1, 3}, f64()));
      },
      {"accumulate_grad", "(1, 3)", "(3,)"});
  check_error([&] { accumulate_grad(x, Tensor::ones({3}, f32())); },
              {"accumulate_grad", "float32", "float64"});
  CHECK_FALSE(x.grad().defined());
  accumulate_grad(x, Tensor::ones({3}, f64()));
  accumulate_grad(x, Tensor::ones({3}, f64()));
  CHECK(x.grad().to_vector() == Vec{2, 2, 2});
}

TEST_CASE("autograd: accumulate_grad copies a gradient that another handle shares") {
  // accumulate_grad hands a buffer on without a copy only when no other handle shares it; here
  // `view` does, so the later in-place accumulation must not write through to it.
  Tensor x = leaf({1, 2}, {2});
  Tensor g = Tensor::from_vector({1, 1}, {2}, f64());
  const Tensor view = g.detach();
  accumulate_grad(x, g);
  accumulate_grad(x, g);
  CHECK(view.to_vector() == Vec{1, 1});
  CHECK(x.grad().to_vector() == Vec{2, 2});
}

// A reshape's gradient is a view of the gradient being handed on; it may become the input's
// gradient without a copy, but only once, and later additions must not write through it into
// another tensor's gradient or into the seed.
TEST_CASE("autograd: gradients handed on without a copy never alias another gradient") {
  Tensor x = leaf({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor y = leaf({1, 1, 1, 1, 1, 1}, {6});
  const Tensor c = Tensor::from_vector({1, -2, 3, -4, 5, -6}, {6}, f64());
  // d/dx of sum(c * (reshape(x) + reshape(x) + y)) = 2c; d/dy = c.
  const Tensor rx = reshape(x, {6});
  const Tensor loss = sum(mul(add(add(rx, reshape(x, {6})), y), c));
  backward(loss);
  CHECK(x.grad().to_vector() == Vec{2, -4, 6, -8, 10, -12});
  CHECK(y.grad().to_vector() == Vec{1, -2, 3, -4, 5, -6});
  CHECK(x.grad().impl()->storage != y.grad().impl()->storage);

  // add(a, b) hands the same gradient to both: each gets its own buffer.
  Tensor a = leaf({1, 2}, {2});
  Tensor b = leaf({3, 4}, {2});
  const Tensor seed = Tensor::from_vector({0.5, -1}, {2}, f64());
  backward(reshape(add(a, b), {2}), seed);
  CHECK(a.grad().impl()->storage != b.grad().impl()->storage);
  a.grad().fill_(7.0);  // writing one gradient changes neither the other nor the seed
  CHECK(b.grad().to_vector() == Vec{0.5, -1});
  CHECK(seed.to_vector() == Vec{0.5, -1});

  // A tensor that is both inputs of one add, behind a reshape: 2g, and g itself unchanged.
  Tensor z = leaf({1, 2, 3}, {3});
  const Tensor rz = reshape(z, {3, 1});
  const Tensor g = Tensor::from_vector({1, 10, 100}, {3, 1}, f64());
  backward(add(rz, rz), g);
  CHECK(z.grad().to_vector() == Vec{2, 20, 200});
  CHECK(g.to_vector() == Vec{1, 10, 100});
}

TEST_CASE("autograd: grad_buffer hands out a fresh buffer, then the same one to accumulate") {
  Tensor x = leaf({1, 2}, {2});
  bool acc = true;
  Tensor g = grad_buffer(x, &acc);
  CHECK_FALSE(acc);
  g.fill_(3.0);
  Tensor g2 = grad_buffer(x, &acc);
  CHECK(acc);
  CHECK(g2.same(x.grad()));
  CHECK(x.grad().to_vector() == Vec{3, 3});
}

}  // namespace
}  // namespace kvc
