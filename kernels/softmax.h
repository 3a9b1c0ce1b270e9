// Softmax over one axis, forward and backward.
#pragma once

#include <cstdint>

namespace kvc::kernels {

#define KVC_SOFTMAX_KERNELS                                                               \
  /* x viewed as (outer, n, inner); softmax over n, max-subtracted */                     \
  template <typename T>                                                                   \
  void softmax_forward(const T* x, T* y, int64_t outer, int64_t n, int64_t inner);        \
  /* gx = y * (gy - sum_n(gy * y)) */                                                     \
  template <typename T>                                                                   \
  void softmax_backward(const T* y, const T* gy, T* gx, int64_t outer, int64_t n, int64_t inner);

namespace cpu {
KVC_SOFTMAX_KERNELS
}
namespace cuda {
KVC_SOFTMAX_KERNELS
}
#undef KVC_SOFTMAX_KERNELS

}  // namespace kvc::kernels
