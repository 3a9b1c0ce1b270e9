// Helpers shared by the tests: relative errors, finite differences, the CUDA skip.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/tensor.h"

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

// CUDA tests begin with KVC_REQUIRE_CUDA(). Without a usable GPU the test prints one line
// starting with "KVC_SKIP" and returns; ctest's SKIP_REGULAR_EXPRESSION reports it as skipped,
// never as passed.
#define KVC_REQUIRE_CUDA()                                                              \
  do {                                                                                  \
    if (!::kvc::cuda_available()) {                                                     \
      std::printf("KVC_SKIP: CUDA test skipped: %s\n",                                  \
                  ::kvc::cuda_unavailable_reason().c_str());                            \
      std::fflush(stdout);                                                              \
      return;                                                                           \
    }                                                                                   \
  } while (0)

}  // namespace kvc::test
