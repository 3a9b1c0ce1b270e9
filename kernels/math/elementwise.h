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

// The GPU's one-instruction reciprocal and base-2 exponential (rcp.approx.ftz, ex2.approx.ftz:
// about 1 and 2 ulp, subnormal inputs and results flushed to 0); the library's on the host.
KVC_HOST_DEVICE float approx_rcp(float v) {
#ifdef __CUDA_ARCH__
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
#else
  return 1.0f / v;
#endif
}
KVC_HOST_DEVICE float approx_exp2(float v) {
#ifdef __CUDA_ARCH__
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
#else
  return std::exp2(v);
#endif
}

// GELU in float32 for the bf16 MLP kernels (their GELU values are rounded to bfloat16), from
// erfc's exponential form: with h = erfc(|x| / sqrt 2) / 2, the normal CDF's tail on |x|'s side,
//   GELU(x) = x Phi(x) = max(x, 0) - |x| h   for either sign of x,
//   h = t 2^(Q(t) - log2(e) x^2 / 2),  t = 1 / (1 + |x| / (2 sqrt 2)),
// Q of degree 7 in base-2 units with erfc's 1/2 folded in and Q(1) = -1 exactly (h(0) = 1/2), a
// minimax fit over |x| <= 12 (tools/fit_gelu_erfc.py prints these coefficients). One reciprocal,
// one exponential, no branch: about 17 instructions on the GPU where 0.5 x (1 + erf(x / sqrt 2))
// takes about 30, and accurate where 1 + erf cancels (x < -3). The exponent's x^2 is exact for a
// bfloat16 x. Against double precision at every bfloat16 |x| <= 12, on the host: GELU within
// 1.3e-6 relative for |x| <= 5 and 3.8e-6 beyond (x^2's share of the exponent, up to 100 there,
// carries float32's rounding), the same bfloat16 everywhere, the derivative within 4.7e-7.
struct GeluErfcParts {
  float x2;  // x^2
  float h;   // erfc(|x| / sqrt 2) / 2
};
KVC_HOST_DEVICE GeluErfcParts gelu_erfc_parts(float x) {
  const float x2 = x * x;
  const float t = approx_rcp(fmaf(0.35355339059327376220f, fabsf(x), 1.0f));
  float q = -0.253472865f;
  q = fmaf(q, t, 1.01026654f);
  q = fmaf(q, t, -1.31412065f);
  q = fmaf(q, t, 0.382523566f);
  q = fmaf(q, t, 0.00877099764f);
  q = fmaf(q, t, 0.547980666f);
  q = fmaf(q, t, 1.44396615f);
  q = fmaf(q, t, -2.82591438f);
  return {x2, t * approx_exp2(fmaf(-0.72134752044448170368f, x2, q))};  // log2(e) / 2
}
// GELU(x) from its parts: max(x, 0) - |x| h.
KVC_HOST_DEVICE float gelu_erfc_from(float x, const GeluErfcParts& p) {
  return fmaf(-fabsf(x), p.h, fmaxf(x, 0.0f));
}
KVC_HOST_DEVICE float gelu_erfc(float x) { return gelu_erfc_from(x, gelu_erfc_parts(x)); }

// gy GELU'(x) = gy (Phi(x) + x phi(x)), and GELU(x) in *act, as gelu_erfc computes it. phi(x) =
// 2^(log2(1 / sqrt(2 pi)) - log2(e) x^2 / 2): its constant folded into the exponent.
KVC_HOST_DEVICE float gelu_erfc_with_backward(float x, float gy, float* act) {
  const GeluErfcParts p = gelu_erfc_parts(x);
  *act = gelu_erfc_from(x, p);
  const float cdf = x >= 0.0f ? 1.0f - p.h : p.h;
  const float pdf = approx_exp2(fmaf(-0.72134752044448170368f, p.x2, -1.32574806473615936f));
  return gy * fmaf(x, pdf, cdf);
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
