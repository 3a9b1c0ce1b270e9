// Arithmetic for per-element math shared by the CPU loops and the CUDA kernels (the headers of
// kernels/math): rounding that matches across backends, and math functions by one name.
#pragma once

#include <cmath>
#include <type_traits>

#include "base/host_device.h"

namespace kvc::kernels::math {

// Rounded, never-fused products and sums: nvcc contracts a * b + c into one FMA, the CPU build
// (ISO C++17, no -ffp-contract) does not. Math whose results must match the CPU bit for bit uses
// these (T float or double): the _rn intrinsics on the device, the plain operators (already
// unfused) on the host.
template <typename T>
KVC_HOST_DEVICE T mul_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  if constexpr (std::is_same_v<T, float>) {
    return __fmul_rn(a, b);
  } else {
    return __dmul_rn(a, b);
  }
#else
  return a * b;
#endif
}

template <typename T>
KVC_HOST_DEVICE T add_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  if constexpr (std::is_same_v<T, float>) {
    return __fadd_rn(a, b);
  } else {
    return __dadd_rn(a, b);
  }
#else
  return a + b;
#endif
}

// Unqualified erf, exp, sqrt, ... in this namespace resolve to std's float and double overloads
// on the host and to CUDA's global overloads on the device: the functions each backend called
// before the math was shared, so neither backend's results change.
#if !defined(__CUDA_ARCH__)
using std::cos;
using std::erf;
using std::exp;
using std::log;
using std::sin;
using std::sqrt;
#endif

}  // namespace kvc::kernels::math
