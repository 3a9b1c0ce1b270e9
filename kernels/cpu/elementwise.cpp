// CPU elementwise kernels: broadcast binary ops, axpby, ReLU, exact GELU, Philox dropout.
#include "kernels/elementwise.h"

#include <cmath>

#include "core/error.h"
#include "core/philox.h"

namespace kvc::kernels::cpu {

namespace {

// The broadcast index with size-1 axes dropped and adjacent axes merged wherever both operands
// step through them as one run: a same-shape op becomes one axis, a bias over (..., out) two
// with b's inner stride 1 and outer stride 0. The innermost axis then runs as a tight loop.
BroadcastIndex collapse(const BroadcastIndex& idx) {
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

template <typename T, typename F>
void binary_loop(F f, const T* a, const T* b, T* out, int64_t n, const BroadcastIndex& index) {
  if (n == 0) return;
  const BroadcastIndex c = collapse(index);
  if (c.ndim == 0) {
    out[0] = f(a[0], b[0]);
    return;
  }
  const int last = c.ndim - 1;
  const int64_t m = c.shape[last];
  const int64_t sa = c.a_stride[last], sb = c.b_stride[last];
  int64_t counter[kMaxDims] = {};
  int64_t ao = 0, bo = 0;
  for (int64_t base = 0; base < n; base += m) {
    const T* pa = a + ao;
    const T* pb = b + bo;
    T* po = out + base;
    if (sa == 1 && sb == 1) {
      for (int64_t k = 0; k < m; ++k) po[k] = f(pa[k], pb[k]);
    } else if (sa == 1 && sb == 0) {
      const T bv = pb[0];
      for (int64_t k = 0; k < m; ++k) po[k] = f(pa[k], bv);
    } else if (sa == 0 && sb == 1) {
      const T av = pa[0];
      for (int64_t k = 0; k < m; ++k) po[k] = f(av, pb[k]);
    } else {
      for (int64_t k = 0; k < m; ++k) po[k] = f(pa[k * sa], pb[k * sb]);
    }
    // Step the outer axes like an odometer, updating both operand offsets incrementally.
    for (int d = last - 1; d >= 0; --d) {
      ao += c.a_stride[d];
      bo += c.b_stride[d];
      if (++counter[d] < c.shape[d]) break;
      ao -= c.a_stride[d] * c.shape[d];
      bo -= c.b_stride[d] * c.shape[d];
      counter[d] = 0;
    }
  }
}

}  // namespace

template <typename T>
void binary(BinaryOp op, const T* a, const T* b, T* out, int64_t n, const BroadcastIndex& index) {
  KVC_CHECK(index.ndim >= 0 && index.ndim <= kMaxDims, "binary: ", index.ndim,
            " axes exceed the maximum of ", kMaxDims);
  switch (op) {
    case BinaryOp::add:
      return binary_loop([](T x, T y) { return x + y; }, a, b, out, n, index);
    case BinaryOp::sub:
      return binary_loop([](T x, T y) { return x - y; }, a, b, out, n, index);
    case BinaryOp::mul:
      return binary_loop([](T x, T y) { return x * y; }, a, b, out, n, index);
    case BinaryOp::div:
      return binary_loop([](T x, T y) { return x / y; }, a, b, out, n, index);
  }
  KVC_FAIL("binary: unknown op ", static_cast<int>(op));
}

template <typename T>
void axpby(T* y, const T* x, int64_t n, T alpha, T beta) {
  if (beta == T(0)) {
    for (int64_t i = 0; i < n; ++i) y[i] = alpha * x[i];
  } else if (alpha == T(1) && beta == T(1)) {
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = alpha * x[i] + beta * y[i];
  }
}

template <typename T>
void relu_forward(const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
}

template <typename T>
void relu_backward(const T* y, const T* gy, T* gx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gx[i] = y[i] > T(0) ? gy[i] : T(0);
}

template <typename T>
void gelu_forward(const T* x, T* y, int64_t n) {
  const T inv_sqrt2 = T(0.70710678118654752440);
  for (int64_t i = 0; i < n; ++i) y[i] = T(0.5) * x[i] * (T(1) + std::erf(x[i] * inv_sqrt2));
}

// d/dx [x Phi(x)] = Phi(x) + x phi(x), Phi the normal CDF and phi its density.
template <typename T>
void gelu_backward(const T* x, const T* gy, T* gx, int64_t n) {
  const T inv_sqrt2 = T(0.70710678118654752440);
  const T inv_sqrt_2pi = T(0.39894228040143267794);
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    const T cdf = T(0.5) * (T(1) + std::erf(v * inv_sqrt2));
    const T pdf = inv_sqrt_2pi * std::exp(T(-0.5) * v * v);
    gx[i] = gy[i] * (cdf + v * pdf);
  }
}

namespace {

// out[i] = keep_i ? in[i] / (1 - p) : 0 with keep_i = philox::keep(seed, offset, i, p); one
// Philox block serves four elements. Forward and backward are the same masked scaling.
template <typename T>
void masked_scale(const T* in, T* out, int64_t n, float p, uint64_t seed, uint64_t offset) {
  KVC_CHECK(p >= 0.0f && p < 1.0f, "dropout: p = ", p, " is outside [0, 1)");
  const T s = T(1) / (T(1) - static_cast<T>(p));
  auto one = [&](uint32_t word, int64_t i) {
    out[i] = philox::uniform01(word) >= p ? in[i] * s : T(0);
  };
  const int64_t full = n / 4 * 4;
  for (int64_t base = 0; base < full; base += 4) {
    const philox::U4 u = philox::block(seed, offset, static_cast<uint64_t>(base) >> 2);
    one(u.x, base);
    one(u.y, base + 1);
    one(u.z, base + 2);
    one(u.w, base + 3);
  }
  if (full < n) {
    const philox::U4 u = philox::block(seed, offset, static_cast<uint64_t>(full) >> 2);
    for (int64_t i = full; i < n; ++i) one(philox::lane(u, static_cast<uint64_t>(i)), i);
  }
}

}  // namespace

template <typename T>
void dropout_forward(const T* x, T* y, int64_t n, float p, uint64_t seed, uint64_t offset) {
  masked_scale(x, y, n, p, seed, offset);
}

template <typename T>
void dropout_backward(const T* gy, T* gx, int64_t n, float p, uint64_t seed, uint64_t offset) {
  masked_scale(gy, gx, n, p, seed, offset);
}

#define KVC_INSTANTIATE(T)                                                                   \
  template void binary<T>(BinaryOp, const T*, const T*, T*, int64_t, const BroadcastIndex&); \
  template void axpby<T>(T*, const T*, int64_t, T, T);                                       \
  template void relu_forward<T>(const T*, T*, int64_t);                                      \
  template void relu_backward<T>(const T*, const T*, T*, int64_t);                           \
  template void gelu_forward<T>(const T*, T*, int64_t);                                      \
  template void gelu_backward<T>(const T*, const T*, T*, int64_t);                           \
  template void dropout_forward<T>(const T*, T*, int64_t, float, uint64_t, uint64_t);        \
  template void dropout_backward<T>(const T*, T*, int64_t, float, uint64_t, uint64_t);
KVC_INSTANTIATE(float)
KVC_INSTANTIATE(double)
#undef KVC_INSTANTIATE

}  // namespace kvc::kernels::cpu
