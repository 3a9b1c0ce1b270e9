// CPU elementwise kernels: broadcast binary ops, axpby, outer products, ReLU, exact GELU, Philox
// dropout.
#include "kernels/elementwise.h"

#include <cmath>

#include "base/error.h"
#include "base/philox.h"
#include "kernels/cpu/strided_walk.h"
#include "kernels/math/elementwise.h"

namespace kvc::kernels::cpu {

namespace {

template <typename T, typename F>
void binary_loop(F f, const T* a, const T* b, T* out, int64_t n, const BroadcastIndex& index) {
  for_each_run(math::collapse(index), n, [&](const StridedRun& r) {
    const T* pa = a + r.a;
    const T* pb = b + r.b;
    T* po = out + r.base;
    const int64_t m = r.len, sa = r.a_step, sb = r.b_step;
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
  });
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
void outer(const T* x, const T* y, T* out, int64_t groups, int64_t rows, int64_t cols, T beta) {
  for (int64_t g = 0; g < groups; ++g) {
    const T* yg = y + g * cols;
    for (int64_t r = 0; r < rows; ++r) {
      const T xv = x[g * rows + r];
      T* o = out + (g * rows + r) * cols;
      if (beta == T(0)) {
        for (int64_t c = 0; c < cols; ++c) o[c] = xv * yg[c];
      } else {
        for (int64_t c = 0; c < cols; ++c) o[c] = xv * yg[c] + beta * o[c];
      }
    }
  }
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
  for (int64_t i = 0; i < n; ++i) {
    const T g = gy[i];  // read whatever the sign: a select, and the loop vectorizes
    gx[i] = y[i] > T(0) ? g : T(0);
  }
}

template <typename T>
void gelu_forward(const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = math::gelu(x[i]);
}

template <typename T>
void gelu_backward(const T* x, const T* gy, T* gx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gx[i] = math::gelu_backward(x[i], gy[i]);
}

namespace {

// out[i] = keep_i ? in[i] / (1 - p) : 0 with keep_i = philox::keep(seed, offset, i, p); one
// Philox block serves four elements. Forward and backward are the same masked scaling.
template <typename T>
void masked_scale(const T* in, T* out, int64_t n, float p, uint64_t seed, uint64_t offset) {
  const T s = math::dropout_scale<T>(p);
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

KVC_ELEMENTWISE_INSTANTIATE(float)
KVC_ELEMENTWISE_INSTANTIATE(double)

}  // namespace kvc::kernels::cpu
