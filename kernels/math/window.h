// Per-element index math of the window kernels, one definition for kernels/cpu/window.cpp and
// kernels/cuda/window.cu.
#pragma once

#include <cmath>
#include <cstdint>

#include "base/host_device.h"

namespace kvc::kernels::math {

// The windows [first, last] (inclusive; empty when first > last) that hold token t: window i
// covers [i * stride, i * stride + n), and there are w of them.
struct WindowRange {
  int64_t first, last;
};
KVC_HOST_DEVICE WindowRange windows_holding(int64_t t, int64_t w, int64_t n, int64_t stride) {
  const int64_t lo = t - n + 1;  // the earliest start whose window still reaches t
  WindowRange r;
  r.first = lo <= 0 ? 0 : (lo + stride - 1) / stride;
  r.last = t / stride < w - 1 ? t / stride : w - 1;
  return r;
}

// clamp(floor((pos - first) / step) + 1, 0, limit) for a position held as a float.
template <typename T>
KVC_HOST_DEVICE int32_t visible_count(T pos, int64_t first, int64_t step, int64_t limit) {
  const int64_t p = static_cast<int64_t>(floor(static_cast<double>(pos)));
  if (p < first) return 0;
  const int64_t c = (p - first) / step + 1;
  return static_cast<int32_t>(c < limit ? c : limit);
}

}  // namespace kvc::kernels::math
