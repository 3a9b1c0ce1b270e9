// Per-element math of the elementwise kernels, one definition for kernels/cpu/elementwise.cpp
// and kernels/cuda/elementwise.cu: exact GELU and its derivative, the dropout scale, and the
// axis merging of a broadcast index.
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
