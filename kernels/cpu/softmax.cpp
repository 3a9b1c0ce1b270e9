// CPU softmax over one axis of (outer, n, inner), forward and backward.
#include "kernels/softmax.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/softmax_row.h"
#include "kernels/cpu/vec_math.h"

namespace kvc::kernels::cpu {

// inner == 1 (the last axis) runs row by row; otherwise whole rows of `inner` elements are
// combined at a time, so a middle axis needs no transpose and the loops stay contiguous (and
// vector code: kernels/cpu/vec_math.h).
template <typename T>
KVC_CPU_CLONES void softmax_forward(const T* x, T* y, int64_t outer, int64_t n, int64_t inner) {
  if (n == 0 || inner == 0) return;
  if (inner == 1) {
    for (int64_t o = 0; o < outer; ++o) {
      const T* xr = x + o * n;
      T* yr = y + o * n;
      softmax_row(xr, yr, n);
    }
    return;
  }
  std::vector<T> mx(static_cast<size_t>(inner)), sum(static_cast<size_t>(inner));
  for (int64_t o = 0; o < outer; ++o) {
    const T* xs = x + o * n * inner;
    T* ys = y + o * n * inner;
    for (int64_t i = 0; i < inner; ++i) mx[i] = xs[i];
    for (int64_t j = 1; j < n; ++j) {
      for (int64_t i = 0; i < inner; ++i)
        mx[i] = xs[j * inner + i] > mx[i] ? xs[j * inner + i] : mx[i];
    }
    for (int64_t i = 0; i < inner; ++i) sum[i] = 0;
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t i = 0; i < inner; ++i) {
        const T e = exp_lane(xs[j * inner + i] - mx[i]);
        ys[j * inner + i] = e;
        sum[i] += e;
      }
    }
    for (int64_t i = 0; i < inner; ++i) sum[i] = T(1) / sum[i];
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t i = 0; i < inner; ++i) ys[j * inner + i] *= sum[i];
    }
  }
}

template <typename T>
void softmax_backward(const T* y, const T* gy, T* gx, int64_t outer, int64_t n, int64_t inner) {
  if (n == 0 || inner == 0) return;
  if (inner == 1) {
    for (int64_t o = 0; o < outer; ++o) {
      const T* yr = y + o * n;
      const T* gr = gy + o * n;
      T* xr = gx + o * n;
      T dot = 0;
      for (int64_t j = 0; j < n; ++j) dot += yr[j] * gr[j];
      for (int64_t j = 0; j < n; ++j) xr[j] = yr[j] * (gr[j] - dot);
    }
    return;
  }
  std::vector<T> dot(static_cast<size_t>(inner));
  for (int64_t o = 0; o < outer; ++o) {
    const size_t base = static_cast<size_t>(o * n * inner);
    for (int64_t i = 0; i < inner; ++i) dot[i] = 0;
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t i = 0; i < inner; ++i)
        dot[i] += y[base + j * inner + i] * gy[base + j * inner + i];
    }
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t i = 0; i < inner; ++i) {
        const size_t k = base + static_cast<size_t>(j * inner + i);
        gx[k] = y[k] * (gy[k] - dot[i]);
      }
    }
  }
}

KVC_SOFTMAX_INSTANTIATE(float)
KVC_SOFTMAX_INSTANTIATE(double)

}  // namespace kvc::kernels::cpu
