// Finite-difference gradient check (float64) of any function of tensors, on any device.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace kvc {

// Defaults suit float64 with central differences at eps 1e-6: truncation error is O(eps^2) and
// rounding error about 1e-16 * |f| / eps, so a correct gradient typically agrees to 1e-9 or
// better, while a wrong one is off by O(1).
struct GradcheckOptions {
  double eps = 1e-6;   // central-difference step
  double atol = 1e-6;  // element passes when |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-5;
  double rel_floor = 1e-3;  // rel error = |a - n| / max(|a|, |n|, rel_floor): no blow-up near 0
  uint64_t seed = 0;        // Philox seed of the random projection R
};

struct GradcheckResult {
  std::string tensor;          // the input's name
  double max_abs_error = 0.0;  // max over elements of |analytic - numeric|
  double max_rel_error = 0.0;  // max over elements of the rel error above
  double rel_l2_error = 0.0;   // ||analytic - numeric|| / ||numeric|| over the tensor (a zero
                               // numeric gradient: ||analytic - numeric||)
  bool passed = true;
  bool reached = false;      // backward produced a gradient for it (else analytic counts as zero)
  int64_t worst_index = -1;  // flat index of the element with the largest abs error
  double worst_analytic = 0.0, worst_numeric = 0.0;  // the two gradients there
};

// Checks d/d(input) of L = sum(f() * R), R a fixed Philox uniform(-1, 1) tensor of f()'s shape,
// for every element of every input: the analytic gradient (one backward) against central
// differences (2 evaluations of f per element, under NoGradGuard). Inputs must be float64; they
// are made to require grad for the check, and their values, requires_grad flags and gradients
// are restored afterwards. f must be deterministic. Returns one result per input, in order.
std::vector<GradcheckResult> gradcheck(const std::function<Tensor()>& f,
                                       const std::vector<std::pair<std::string, Tensor>>& inputs,
                                       const GradcheckOptions& opt = {});

// True when every result passed.
bool all_passed(const std::vector<GradcheckResult>& results);

}  // namespace kvc
