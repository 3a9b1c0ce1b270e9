// The Adam(W) update of one element, one definition for kernels/cpu/adam.cpp and
// kernels/cuda/adam.cu: operation for operation with rounded (unfused) products, so both
// backends produce the same bits.
#pragma once

#include <cmath>

#include "kernels/adam.h"
#include "kernels/math/fp.h"

namespace kvc::kernels::math {

// The step's scalars, computed on the host in double and then rounded once to T, as PyTorch's
// single-tensor path does.
template <typename T>
struct AdamCoeffs {
  T step_size, bc2_sqrt, beta2, one_minus_beta1, one_minus_beta2, eps, wd, decay;
  bool l2, decoupled;
};

template <typename T>
inline AdamCoeffs<T> adam_coeffs(const AdamStepArgs& args) {
  const double bc1 = 1.0 - std::pow(args.beta1, static_cast<double>(args.step));
  const double bc2 = 1.0 - std::pow(args.beta2, static_cast<double>(args.step));
  AdamCoeffs<T> c;
  c.step_size = static_cast<T>(args.lr / bc1);
  c.bc2_sqrt = static_cast<T>(std::sqrt(bc2));
  c.beta2 = static_cast<T>(args.beta2);
  c.one_minus_beta1 = static_cast<T>(1.0 - args.beta1);
  c.one_minus_beta2 = static_cast<T>(1.0 - args.beta2);
  c.eps = static_cast<T>(args.eps);
  c.wd = static_cast<T>(args.weight_decay);
  c.decay = static_cast<T>(1.0 - args.lr * args.weight_decay);
  c.l2 = !args.decoupled && args.weight_decay != 0.0;
  c.decoupled = args.decoupled && args.weight_decay != 0.0;
  return c;
}

// One element: parameter p, its (already scaled) gradient g, moments m and v, updated in place.
template <typename T>
KVC_HOST_DEVICE void adam_update(const AdamCoeffs<T>& c, T g, T& p, T& m, T& v) {
  if (c.decoupled) p = mul_rn(p, c.decay);
  if (c.l2) g = add_rn(g, mul_rn(c.wd, p));
  m = add_rn(m, mul_rn(c.one_minus_beta1, g - m));
  v = add_rn(mul_rn(c.beta2, v), mul_rn(mul_rn(c.one_minus_beta2, g), g));
  p = p - mul_rn(c.step_size, m / (sqrt(v) / c.bc2_sqrt + c.eps));
}

}  // namespace kvc::kernels::math
