// Per-element math of the synthetic KV generator, one definition for kernels/cpu/synthetic.cpp
// and kernels/cuda/synthetic.cu, rounded alike so both backends produce the same bits.
#pragma once

#include <cmath>
#include <cstdint>

#include "base/philox.h"
#include "kernels/math/fp.h"

namespace kvc::kernels::math {

// The AR(1) recurrence z_t = rho z_{t-1} + sqrt(1 - rho^2) e_t with its coefficients rounded
// once to T on the host.
template <typename T>
struct Ar1 {
  T a, c;
  explicit Ar1(double rho)
      : a(static_cast<T>(rho)), c(static_cast<T>(std::sqrt(1.0 - rho * rho))) {}
  KVC_HOST_DEVICE T step(T prev, T cur) const { return add_rn(mul_rn(a, prev), mul_rn(c, cur)); }
};

// The latent position that query `row` (= batch * nq + query) reads:
// min(seq - 1, floor(philox::uniform(seed, offset, row) * seq)).
KVC_HOST_DEVICE int64_t random_row(uint64_t seed, uint64_t offset, int64_t row, int64_t seq) {
  const double u = philox::uniform(seed, offset, static_cast<uint64_t>(row));
  const int64_t t = static_cast<int64_t>(mul_rn(u, static_cast<double>(seq)));
  return t > seq - 1 ? seq - 1 : t;
}

}  // namespace kvc::kernels::math
