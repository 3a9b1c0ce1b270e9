// CPU softmax-pool over the middle axis of (outer, n, inner), forward and backward.
#include "kernels/softmax_pool.h"

#include <cmath>
#include <vector>

namespace kvc::kernels::cpu {

namespace {

// For one outer slice (n rows of `inner` columns), per column: e = exp(scale * logits - max)
// for every row (n * inner scratch, in cache), the reciprocal of the softmax denominator and
// the pooled value y. Backward reuses e rather than calling exp a second time. The loops run
// over whole rows, so they stay contiguous.
template <typename T>
void pool_stats(const T* x, const T* l, int64_t n, int64_t inner, T scale, T* e, T* mx, T* inv,
                T* y) {
  for (int64_t i = 0; i < inner; ++i) mx[i] = scale * l[i];
  for (int64_t j = 1; j < n; ++j) {
    const T* lr = l + j * inner;
    for (int64_t i = 0; i < inner; ++i) mx[i] = scale * lr[i] > mx[i] ? scale * lr[i] : mx[i];
  }
  for (int64_t i = 0; i < inner; ++i) inv[i] = y[i] = T(0);
  for (int64_t j = 0; j < n; ++j) {
    const T* lr = l + j * inner;
    const T* xr = x + j * inner;
    T* er = e + j * inner;
    for (int64_t i = 0; i < inner; ++i) {
      er[i] = std::exp(scale * lr[i] - mx[i]);
      inv[i] += er[i];
      y[i] += er[i] * xr[i];
    }
  }
  for (int64_t i = 0; i < inner; ++i) {
    inv[i] = T(1) / inv[i];
    y[i] *= inv[i];
  }
}

// Scratch for pool_stats: e (n * inner), then max and 1/sum (inner each).
template <typename T>
struct PoolScratch {
  PoolScratch(int64_t n, int64_t inner)
      : inner_(inner), buf(static_cast<size_t>((n + 2) * inner)) {}
  T* e() { return buf.data() + 2 * inner_; }
  T* mx() { return buf.data(); }
  T* inv() { return buf.data() + inner_; }
  int64_t inner_;
  std::vector<T> buf;
};

}  // namespace

template <typename T>
void softmax_pool_forward(const T* x, const T* logits, T* y, int64_t outer, int64_t n,
                          int64_t inner, T scale) {
  if (outer == 0 || inner == 0) return;
  PoolScratch<T> s(n, inner);
  for (int64_t o = 0; o < outer; ++o) {
    const int64_t base = o * n * inner;
    pool_stats(x + base, logits + base, n, inner, scale, s.e(), s.mx(), s.inv(), y + o * inner);
  }
}

template <typename T>
void softmax_pool_backward(const T* x, const T* logits, const T* gy, T* gx, T* glogits,
                           int64_t outer, int64_t n, int64_t inner, T scale, bool acc_x,
                           bool acc_logits) {
  if (outer == 0 || inner == 0) return;
  PoolScratch<T> s(n, inner);
  std::vector<T> y(static_cast<size_t>(inner));
  T* inv = s.inv();
  for (int64_t o = 0; o < outer; ++o) {
    const int64_t base = o * n * inner;
    const T* g = gy + o * inner;
    pool_stats(x + base, logits + base, n, inner, scale, s.e(), s.mx(), inv, y.data());
    for (int64_t j = 0; j < n; ++j) {
      const int64_t row = base + j * inner;
      const T* er = s.e() + j * inner;
      if (gx) {
        T* r = gx + row;
        for (int64_t i = 0; i < inner; ++i) {
          r[i] = (acc_x ? r[i] : T(0)) + g[i] * er[i] * inv[i];
        }
      }
      if (glogits) {
        T* r = glogits + row;
        const T* xr = x + row;
        for (int64_t i = 0; i < inner; ++i) {
          r[i] = (acc_logits ? r[i] : T(0)) + scale * er[i] * inv[i] * g[i] * (xr[i] - y[i]);
        }
      }
    }
  }
}

#define KVC_INSTANTIATE(T)                                                                  \
  template void softmax_pool_forward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, T); \
  template void softmax_pool_backward<T>(const T*, const T*, const T*, T*, T*, int64_t,     \
                                         int64_t, int64_t, T, bool, bool);
KVC_INSTANTIATE(float)
KVC_INSTANTIATE(double)
#undef KVC_INSTANTIATE

}  // namespace kvc::kernels::cpu
