// Softmax-pool: softmax over n and the weighted sum over n in one pass, forward and backward.
#pragma once

#include <cstdint>

namespace kvc::kernels {

// x and logits are (outer, n, inner), n >= 1; per column (o, i) the weights are
// a[o, j, i] = softmax over j of scale * logits[o, j, i], and y (outer, inner) is
// y[o, i] = sum_j a[o, j, i] x[o, j, i]. The forward also writes a to `weights` unless it is
// null; backward uses `weights` when given and otherwise recomputes a from the logits (the
// cheaper choice on a GPU, where the pass is bound by memory, not by exp). Backward:
// gx[o, j, i] (+)= gy[o, i] a[o, j, i] and
// glogits[o, j, i] (+)= scale a[o, j, i] gy[o, i] (x[o, j, i] - y[o, i]); each output is
// overwritten or, with its accumulate flag, added to; either may be null (not wanted).
#define KVC_SOFTMAX_POOL_KERNELS                                                                \
  template <typename T>                                                                         \
  void softmax_pool_forward(const T* x, const T* logits, T* y, T* weights, int64_t outer,       \
                            int64_t n, int64_t inner, T scale);                                 \
  template <typename T>                                                                         \
  void softmax_pool_backward(const T* x, const T* logits, const T* weights, const T* gy, T* gx, \
                             T* glogits, int64_t outer, int64_t n, int64_t inner, T scale,      \
                             bool acc_x, bool acc_logits);

namespace cpu {
KVC_SOFTMAX_POOL_KERNELS
}
namespace cuda {
KVC_SOFTMAX_POOL_KERNELS
}
#undef KVC_SOFTMAX_POOL_KERNELS

// Explicit instantiations, one list for both backends.
#define KVC_SOFTMAX_POOL_INSTANTIATE(T)                                                            \
  template void softmax_pool_forward<T>(const T*, const T*, T*, T*, int64_t, int64_t, int64_t, T); \
  template void softmax_pool_backward<T>(const T*, const T*, const T*, const T*, T*, T*, int64_t,  \
                                         int64_t, int64_t, T, bool, bool);

}  // namespace kvc::kernels
