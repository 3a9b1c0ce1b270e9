// A small central-difference gradient checker for op tests (until core/gradcheck lands).
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/tensor.h"
#include "tests/test_util.h"

namespace kvc::test {

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

// The loss is L = sum(f(inputs) * R) for a fixed random R of f's output shape. The analytical
// gradient is backward(f(inputs), seed = R); the numerical one perturbs each element of each
// float64 CPU input by +-eps. Returns, per input, ||analytic - numeric|| / ||numeric|| (the
// test_util rel_error), or -1 for inputs that do not require grad.
inline std::vector<double> fd_errors(const OpFn& f, const std::vector<Tensor>& inputs,
                                     double eps = 1e-6, uint64_t seed = 4242) {
  for (const Tensor& t : inputs) {
    REQUIRE(t.dtype() == DType::f64);
    REQUIRE(t.device().is_cpu());
    t.impl()->grad.reset();
  }
  Tensor out = f(inputs);
  const Tensor r = Tensor::randn(out.shape(), seed, 0, 0.0, 1.0, f64());
  const std::vector<double> rv = r.to_vector();
  backward(out, r);

  auto loss = [&]() {
    NoGradGuard guard;
    const std::vector<double> o = f(inputs).to_vector();
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * rv[i];
    return s;
  };
  std::vector<double> errors;
  for (const Tensor& t : inputs) {
    if (!t.requires_grad()) {
      errors.push_back(-1);
      continue;
    }
    REQUIRE(t.grad().defined());
    const std::vector<double> analytic = t.grad().to_vector();
    std::vector<double> numeric(analytic.size());
    double* p = t.data<double>();
    for (size_t i = 0; i < numeric.size(); ++i) {
      const double saved = p[i];
      p[i] = saved + eps;
      const double lp = loss();
      p[i] = saved - eps;
      const double lm = loss();
      p[i] = saved;
      numeric[i] = (lp - lm) / (2 * eps);
    }
    errors.push_back(rel_error(analytic, numeric));
  }
  return errors;
}

// CHECKs every differentiable input's gradient against central differences.
inline void check_gradients(const OpFn& f, const std::vector<Tensor>& inputs, double tol = 1e-7) {
  const std::vector<double> errors = fd_errors(f, inputs);
  for (size_t i = 0; i < errors.size(); ++i) {
    if (errors[i] < 0) continue;
    INFO("input ", i, " of shape ", shape_str(inputs[i].shape()), ": relative error ", errors[i]);
    CHECK(errors[i] < tol);
  }
}

// A float64 CPU tensor of N(0, 1) values (or U[low, high) when uniform) that requires grad.
inline Tensor param(const Shape& shape, uint64_t seed) {
  return Tensor::randn(shape, seed, 0, 0.0, 1.0, f64()).set_requires_grad(true);
}
inline Tensor param_uniform(const Shape& shape, uint64_t seed, double low, double high) {
  return Tensor::rand(shape, seed, 0, low, high, f64()).set_requires_grad(true);
}

}  // namespace kvc::test
