// CUDA softmax-pool over the middle axis of (outer, n, inner), forward and backward: a thread per
// column (o, i), neighbouring threads on neighbouring i, so every pass over n is coalesced.
#include "kernels/cuda/common.cuh"
#include "kernels/softmax_pool.h"

namespace kvc::kernels::cuda {

namespace {

// Per column: the max of scale * logits, the reciprocal of the softmax denominator and the pooled
// value, in one pass over n with a running max (the sums rescaled when the max grows).
template <typename T>
__device__ __forceinline__ void pool_stats(const T* x, const T* l, int64_t n, int64_t inner,
                                           T scale, T* mx, T* inv, T* y) {
  T m = -INFINITY, s = 0, acc = 0;
  for (int64_t j = 0; j < n; ++j) {
    const T t = scale * l[j * inner], xv = x[j * inner];
    if (t > m) {
      const T r = exp(m - t);
      s = s * r + T(1);
      acc = acc * r + xv;
      m = t;
    } else {
      const T e = exp(t - m);
      s += e;
      acc += e * xv;
    }
  }
  *mx = m;
  *inv = T(1) / s;
  *y = acc / s;
}

template <typename T>
__global__ void softmax_pool_forward_kernel(const T* x, const T* logits, T* y, T* weights,
                                            int64_t outer, int64_t n, int64_t inner, T scale) {
  KVC_GRID_LOOP(col, outer * inner) {
    const int64_t o = col / inner, i = col % inner, base = o * n * inner + i;
    T m, inv;
    pool_stats(x + base, logits + base, n, inner, scale, &m, &inv, y + col);
    if (weights) {
      for (int64_t j = 0; j < n; ++j) {
        const int64_t k = base + j * inner;
        weights[k] = exp(scale * logits[k] - m) * inv;
      }
    }
  }
}

template <typename T>
__global__ void softmax_pool_backward_kernel(const T* x, const T* logits, const T* weights,
                                             const T* gy, T* gx, T* glogits, int64_t outer,
                                             int64_t n, int64_t inner, T scale, bool acc_x,
                                             bool acc_logits) {
  KVC_GRID_LOOP(col, outer * inner) {
    const int64_t o = col / inner, i = col % inner, base = o * n * inner + i;
    T m = 0, inv = 0, y = 0;
    if (weights) {
      for (int64_t j = 0; j < n; ++j) y += weights[base + j * inner] * x[base + j * inner];
    } else {
      pool_stats(x + base, logits + base, n, inner, scale, &m, &inv, &y);
    }
    const T g = gy[col];
    for (int64_t j = 0; j < n; ++j) {
      const int64_t k = base + j * inner;
      const T a = weights ? weights[k] : exp(scale * logits[k] - m) * inv;
      if (gx) gx[k] = (acc_x ? gx[k] : T(0)) + g * a;
      if (glogits) glogits[k] = (acc_logits ? glogits[k] : T(0)) + scale * a * g * (x[k] - y);
    }
  }
}

// The backward for n <= kN without stored weights: each column's x and logits are read once
// into registers and serve both the statistics and the gradients, so the pass moves x, logits,
// gy, gx and glogits once each (the kernel above reads x and logits twice).
template <typename T, int kN>
__global__ void softmax_pool_backward_cached_kernel(const T* x, const T* logits, const T* gy, T* gx,
                                                    T* glogits, int64_t outer, int n, int64_t inner,
                                                    T scale, bool acc_x, bool acc_logits) {
  KVC_GRID_LOOP(col, outer * inner) {
    const int64_t o = col / inner, i = col % inner, base = o * n * inner + i;
    T xs[kN], e[kN];  // x, then exp(scale * logit - max) per j
    T m = -INFINITY;
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if (j < n) {
        xs[j] = x[base + j * inner];
        e[j] = scale * logits[base + j * inner];
        m = max(m, e[j]);
      }
    }
    T sum = 0, acc = 0;
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if (j < n) {
        e[j] = exp(e[j] - m);
        sum += e[j];
        acc += e[j] * xs[j];
      }
    }
    const T inv = T(1) / sum, y = acc * inv, g = gy[col];
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if (j < n) {
        const int64_t k = base + j * inner;
        const T a = e[j] * inv;
        if (gx) gx[k] = (acc_x ? gx[k] : T(0)) + g * a;
        if (glogits) glogits[k] = (acc_logits ? glogits[k] : T(0)) + scale * a * g * (xs[j] - y);
      }
    }
  }
}

// Longest n whose column fits the registers of softmax_pool_backward_cached_kernel.
constexpr int64_t kCachedN = 32;

}  // namespace

template <typename T>
void softmax_pool_forward(const T* x, const T* logits, T* y, T* weights, int64_t outer, int64_t n,
                          int64_t inner, T scale) {
  if (outer * inner <= 0) return;
  softmax_pool_forward_kernel<T><<<grid_for(outer * inner), kThreads, 0, stream()>>>(
      x, logits, y, weights, outer, n, inner, scale);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void softmax_pool_backward(const T* x, const T* logits, const T* weights, const T* gy, T* gx,
                           T* glogits, int64_t outer, int64_t n, int64_t inner, T scale, bool acc_x,
                           bool acc_logits) {
  if (outer * inner <= 0) return;
  if (!weights && n <= kCachedN) {
    softmax_pool_backward_cached_kernel<T, kCachedN>
        <<<grid_for(outer * inner), kThreads, 0, stream()>>>(x, logits, gy, gx, glogits, outer,
                                                             static_cast<int>(n), inner, scale,
                                                             acc_x, acc_logits);
    KVC_CUDA_CHECK(cudaGetLastError());
    return;
  }
  softmax_pool_backward_kernel<T><<<grid_for(outer * inner), kThreads, 0, stream()>>>(
      x, logits, weights, gy, gx, glogits, outer, n, inner, scale, acc_x, acc_logits);
  KVC_CUDA_CHECK(cudaGetLastError());
}

KVC_SOFTMAX_POOL_INSTANTIATE(float)
KVC_SOFTMAX_POOL_INSTANTIATE(double)

}  // namespace kvc::kernels::cuda
