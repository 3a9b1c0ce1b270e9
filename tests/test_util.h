// Helpers shared by the tests: relative errors, error-message checks, finite-difference gradient
// checks through the library gradcheck, the CUDA skip.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "base/error.h"
#include "core/gradcheck.h"
#include "core/tensor.h"
#include "kernels/precision.h"

namespace kvc::test {

// ||a - b|| / ||b|| over all elements (b is the reference); 0 when both are zero.
inline double rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

inline double rel_error(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  return rel_error(a.to_vector(), b.to_vector());
}

inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(a[i] - b[i]));
  return m;
}

// Checks that f throws kvc::Error whose message contains every one of `parts`.
template <typename F>
void check_error(F&& f, const std::vector<std::string>& parts) {
  bool thrown = false;
  try {
    f();
  } catch (const Error& e) {
    thrown = true;
    const std::string msg = e.what();
    for (const std::string& p : parts) {
      INFO("message: ", msg, " | expected to contain: ", p);
      CHECK(msg.find(p) != std::string::npos);
    }
  }
  CHECK(thrown);
}

// A float64 CPU tensor of N(0, 1) values (or U[low, high) when uniform) that requires grad.
inline Tensor param(const Shape& shape, uint64_t seed) {
  return Tensor::randn(shape, seed, 0, 0.0, 1.0, f64()).set_requires_grad(true);
}
inline Tensor param_uniform(const Shape& shape, uint64_t seed, double low, double high) {
  return Tensor::rand(shape, seed, 0, low, high, f64()).set_requires_grad(true);
}

// Fails the test, showing every result, when any gradcheck result failed or (when given) has an
// element whose absolute error reaches max_abs.
inline void require_gradcheck(const std::vector<GradcheckResult>& results,
                              double max_abs = std::numeric_limits<double>::infinity()) {
  for (const GradcheckResult& r : results) {
    INFO(r.tensor, ": max abs err ", r.max_abs_error, ", max rel err ", r.max_rel_error,
         ", worst element ", r.worst_index, " analytic ", r.worst_analytic, " numeric ",
         r.worst_numeric);
    CHECK(r.passed);
    if (max_abs < std::numeric_limits<double>::infinity()) CHECK(r.max_abs_error < max_abs);
  }
}

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

// The library gradcheck of f(inputs) over the float64 CPU inputs that require grad (the others
// stay constants): backward must reach each, and each must pass the library's element-wise
// tolerances and have a norm-wise relative error ||analytic - numeric|| / ||numeric|| (rel_error
// above) below tol.
inline void check_gradients(const OpFn& f, const std::vector<Tensor>& inputs, double tol = 1e-7) {
  std::vector<std::pair<std::string, Tensor>> checked;
  for (size_t i = 0; i < inputs.size(); ++i) {
    REQUIRE(inputs[i].dtype() == DType::f64);
    REQUIRE(inputs[i].device().is_cpu());
    if (inputs[i].requires_grad()) {
      checked.emplace_back(str("input ", i, " of shape ", inputs[i].shape()), inputs[i]);
    }
  }
  for (const GradcheckResult& r : gradcheck([&] { return f(inputs); }, checked)) {
    INFO(r.tensor, ": relative error ", r.rel_l2_error, ", max abs err ", r.max_abs_error,
         ", worst element ", r.worst_index, " analytic ", r.worst_analytic, " numeric ",
         r.worst_numeric);
    REQUIRE(r.reached);
    CHECK(r.rel_l2_error < tol);
    CHECK(r.passed);
  }
}

// CUDA tests begin with KVC_REQUIRE_CUDA(). Without a usable GPU the test prints one line
// starting with "KVC_SKIP" and returns; ctest's SKIP_REGULAR_EXPRESSION reports it as skipped,
// never as passed.
#define KVC_REQUIRE_CUDA()                                                                        \
  do {                                                                                            \
    if (!::kvc::cuda_available()) {                                                               \
      std::printf("KVC_SKIP: CUDA test skipped: %s\n", ::kvc::cuda_unavailable_reason().c_str()); \
      std::fflush(stdout);                                                                        \
      return;                                                                                     \
    }                                                                                             \
  } while (0)

#ifdef KVC_WITH_CUDA
// Sets the CUDA math precision (tf32, bf16) for one scope and restores the one before.
struct PrecisionScope {
  kernels::MathPrecision saved = kernels::cuda::math_precision();
  explicit PrecisionScope(kernels::MathPrecision p) { kernels::cuda::set_math_precision(p); }
  ~PrecisionScope() { kernels::cuda::set_math_precision(saved); }
  PrecisionScope(const PrecisionScope&) = delete;
  PrecisionScope& operator=(const PrecisionScope&) = delete;
};
#endif

}  // namespace kvc::test
