// Per-element math of the elementwise kernels, one definition for kernels/cpu/elementwise.cpp
// and kernels/cuda/elementwise.cu: exact GELU and its derivative (and the bf16 MLP kernels' form
// of them), the dropout scale, and the axis merging of a broadcast index.
#pragma once

#include <cstdint>

#include "base/error.h"
#include "kernels/elementwise.h"
#include "kernels/math/fp.h"

namespace kvc::kernels::math {

// 0.5 x (1 + erf(x / sqrt 2)).
template <typename T>
KVC_HOST_DEVICE T gelu(T x) {
  const T inv_sqrt2 = T(0.70710678118654752440);
  return T(0.5) * x * (T(1) + erf(x * inv_sqrt2));
}

// d/dx [x Phi(x)] = Phi(x) + x phi(x), Phi the normal CDF and phi its density; times gy.
template <typename T>
KVC_HOST_DEVICE T gelu_backward(T x, T gy) {
  const T inv_sqrt2 = T(0.70710678118654752440);
  const T inv_sqrt_2pi = T(0.39894228040143267794);
  const T cdf = T(0.5) * (T(1) + erf(x * inv_sqrt2));
  const T pdf = inv_sqrt_2pi * exp(T(-0.5) * x * x);
  return gy * (cdf + x * pdf);
}

// gelu_backward(x, gy), with gelu(x) in *act from the same erf: the bits of the two apart (the
// same expressions; erf, the costly part, once).
template <typename T>
KVC_HOST_DEVICE T gelu_with_backward(T x, T gy, T* act) {
  const T inv_sqrt2 = T(0.70710678118654752440);
  const T inv_sqrt_2pi = T(0.39894228040143267794);
  const T one_plus_erf = T(1) + erf(x * inv_sqrt2);
  *act = T(0.5) * x * one_plus_erf;
  const T cdf = T(0.5) * one_plus_erf;
  const T pdf = inv_sqrt_2pi * exp(T(-0.5) * x * x);
  return gy * (cdf + x * pdf);
}

// GELU in float32 from erfc's exponential form, for the bf16 MLP kernels (their GELU values are
// rounded to bfloat16): Phi(x) = erfc(-x / sqrt 2) / 2 with erfc(z) = t exp(-z^2 + P(t)), t = 1 /
// (1 + z / 2), |z| taken and reflected, P of degree 9 (a Chebyshev fit of relative error below
// 1.2e-7 for every z >= 0, Numerical Recipes' erfcc). Against 0.5 x (1 + erf(x / sqrt 2)) in
// float32: one polynomial, no branch and about a quarter fewer instructions on the GPU; and
// accurate where 1 + erf cancels (x < -3: relative error 3% at x = -5, all of it below -5.6,
// where that form gives 0). exp(-z^2) is phi's too. On the GPU the reciprocal and exponentials
// are the hardware's approximations (2 ulp each); on the host the library's.
KVC_HOST_DEVICE float gelu_erfc_phi(float x, float* e_half_x2) {
  const float z = (x < 0.0f ? -x : x) * 0.70710678118654752440f;
  const float mz2 = -z * z;  // -x^2 / 2
#ifdef __CUDA_ARCH__
  const float t = __fdividef(1.0f, fmaf(0.5f, z, 1.0f));
#else
  const float t = 1.0f / std::fma(0.5f, z, 1.0f);
#endif
  float p = 0.17087277f;
  p = fmaf(p, t, -0.82215223f);
  p = fmaf(p, t, 1.48851587f);
  p = fmaf(p, t, -1.13520398f);
  p = fmaf(p, t, 0.27886807f);
  p = fmaf(p, t, -0.18628806f);
  p = fmaf(p, t, 0.09678418f);
  p = fmaf(p, t, 0.37409196f);
  p = fmaf(p, t, 1.00002368f);
  p = fmaf(p, t, -1.26551223f);
#ifdef __CUDA_ARCH__
  const float half_erfc = 0.5f * t * __expf(mz2 + p);
  if (e_half_x2) *e_half_x2 = __expf(mz2);
#else
  const float half_erfc = 0.5f * t * std::exp(mz2 + p);
  if (e_half_x2) *e_half_x2 = std::exp(mz2);
#endif
  return x >= 0.0f ? 1.0f - half_erfc : half_erfc;  // Phi(x)
}

// GELU(x) = x Phi(x), as gelu_erfc_phi computes Phi.
KVC_HOST_DEVICE float gelu_erfc(float x) { return x * gelu_erfc_phi(x, nullptr); }

// gy GELU'(x) = gy (Phi(x) + x phi(x)) with GELU(x) in *act, as gelu_erfc_phi computes them.
KVC_HOST_DEVICE float gelu_erfc_with_backward(float x, float gy, float* act) {
  float e = 0.0f;
  const float phi_cdf = gelu_erfc_phi(x, &e);
  *act = x * phi_cdf;
  return gy * fmaf(x, 0.39894228040143267794f * e, phi_cdf);
}

// The inverted-dropout scale 1 / (1 - p), computed once on the host in T: both backends
// multiply by the same bits.
template <typename T>
inline T dropout_scale(float p) {
  KVC_CHECK(p >= 0.0f && p < 1.0f, "dropout: p = ", p, " is outside [0, 1)");
  return T(1) / (T(1) - static_cast<T>(p));
}

// The broadcast index with size-1 axes dropped and adjacent axes merged wherever both operands
// step through them as one run: a same-shape op becomes one axis, a bias over (..., out) two with
// b's inner stride 1 and outer stride 0. Fewer axes mean a tighter inner loop on the CPU and
// fewer divisions per element on the GPU. An index with zero b strides merges on a alone.
inline BroadcastIndex collapse(const BroadcastIndex& idx) {
  BroadcastIndex c;
  for (int i = 0; i < idx.ndim; ++i) {
    if (idx.shape[i] == 1) continue;
    if (c.ndim > 0) {
      const int j = c.ndim - 1;
      const int64_t s = idx.shape[i];
      if (c.a_stride[j] == idx.a_stride[i] * s && c.b_stride[j] == idx.b_stride[i] * s) {
        c.shape[j] *= s;
        c.a_stride[j] = idx.a_stride[i];
        c.b_stride[j] = idx.b_stride[i];
        continue;
      }
    }
    c.shape[c.ndim] = idx.shape[i];
    c.a_stride[c.ndim] = idx.a_stride[i];
    c.b_stride[c.ndim] = idx.b_stride[i];
    ++c.ndim;
  }
  return c;
}

}  // namespace kvc::kernels::math
