// CPU softmax-pool over the middle axis of (outer, n, inner), forward and backward.
#include "kernels/softmax_pool.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/vec_math.h"

namespace kvc::kernels::cpu {

namespace {

// For one outer slice (n rows of `inner` columns), per column: the weights
// a = softmax over the rows of scale * logits (written to `a`, n * inner) and the pooled value
// y = sum over the rows of a * x. `mx` and `sum` are scratch of `inner` each. The loops run over
// whole rows, so they stay contiguous, and no two buffers overlap: vector code
// (kernels/cpu/vec_math.h).
template <typename T>
KVC_CPU_CLONES void pool_slice(const T* __restrict__ x, const T* __restrict__ l, int64_t n,
                               int64_t inner, T scale, T* __restrict__ a, T* __restrict__ mx,
                               T* __restrict__ sum, T* __restrict__ y) {
  for (int64_t i = 0; i < inner; ++i) mx[i] = scale * l[i];
  for (int64_t j = 1; j < n; ++j) {
    const T* lr = l + j * inner;
    for (int64_t i = 0; i < inner; ++i) mx[i] = scale * lr[i] > mx[i] ? scale * lr[i] : mx[i];
  }
  for (int64_t i = 0; i < inner; ++i) sum[i] = y[i] = T(0);
  for (int64_t j = 0; j < n; ++j) {
    const T* lr = l + j * inner;
    const T* xr = x + j * inner;
    T* ar = a + j * inner;
    for (int64_t i = 0; i < inner; ++i) {
      const T e = exp_lane(scale * lr[i] - mx[i]);
      ar[i] = e;
      sum[i] += e;
      y[i] += e * xr[i];
    }
  }
  for (int64_t i = 0; i < inner; ++i) {
    sum[i] = T(1) / sum[i];
    y[i] *= sum[i];
  }
  for (int64_t j = 0; j < n; ++j) {
    T* ar = a + j * inner;
    for (int64_t i = 0; i < inner; ++i) ar[i] *= sum[i];
  }
}

}  // namespace

template <typename T>
void softmax_pool_forward(const T* x, const T* logits, T* y, T* weights, int64_t outer, int64_t n,
                          int64_t inner, T scale) {
  if (outer == 0 || inner == 0) return;
  const size_t m = static_cast<size_t>(inner);
  std::vector<T> a(weights ? 0 : m * static_cast<size_t>(n)), mx(m), sum(m);
  for (int64_t o = 0; o < outer; ++o) {
    const int64_t base = o * n * inner;
    pool_slice(x + base, logits + base, n, inner, scale, weights ? weights + base : a.data(),
               mx.data(), sum.data(), y + o * inner);
  }
}

template <typename T>
KVC_CPU_CLONES void softmax_pool_backward(const T* x, const T* logits, const T* weights,
                                          const T* gy, T* gx, T* glogits, int64_t outer, int64_t n,
                                          int64_t inner, T scale, bool acc_x, bool acc_logits) {
  if (outer == 0 || inner == 0) return;
  const size_t m = static_cast<size_t>(inner);
  std::vector<T> scratch(weights ? 0 : m * static_cast<size_t>(n)), mx(m), sum(m), y(m);
  for (int64_t o = 0; o < outer; ++o) {
    const int64_t base = o * n * inner;
    const T* g = gy + o * inner;
    const T* a = weights ? weights + base : nullptr;
    if (weights) {  // y again from the kept weights: n * inner multiply-adds, no exp
      for (int64_t i = 0; i < inner; ++i) y[i] = T(0);
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t i = 0; i < inner; ++i) y[i] += a[j * inner + i] * x[base + j * inner + i];
      }
    } else {
      pool_slice(x + base, logits + base, n, inner, scale, scratch.data(), mx.data(), sum.data(),
                 y.data());
      a = scratch.data();
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t row = base + j * inner;
      const T* ar = a + j * inner;
      if (gx) {
        T* r = gx + row;
        for (int64_t i = 0; i < inner; ++i) r[i] = (acc_x ? r[i] : T(0)) + g[i] * ar[i];
      }
      if (glogits) {
        T* r = glogits + row;
        const T* xr = x + row;
        for (int64_t i = 0; i < inner; ++i) {
          r[i] = (acc_logits ? r[i] : T(0)) + scale * ar[i] * g[i] * (xr[i] - y[i]);
        }
      }
    }
  }
}

KVC_SOFTMAX_POOL_INSTANTIATE(float)
KVC_SOFTMAX_POOL_INSTANTIATE(double)

}  // namespace kvc::kernels::cpu
