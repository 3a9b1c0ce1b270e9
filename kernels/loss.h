// Mean squared error with its gradient; the scalars stay on the device (no host sync).
#pragma once

#include <cstdint>

namespace kvc::kernels {

#define KVC_LOSS_KERNELS                                                                     \
  /* *out = mean((pred - target)^2), out a one-element buffer on the same device */          \
  template <typename T>                                                                      \
  void mse_forward(const T* pred, const T* target, T* out, int64_t n);                       \
  /* g = 2 (pred - target) / n * (*grad_out); gpred and/or gtarget may be null */            \
  template <typename T>                                                                      \
  void mse_backward(const T* pred, const T* target, const T* grad_out, T* gpred, T* gtarget, \
                    int64_t n);

namespace cpu {
KVC_LOSS_KERNELS
}
namespace cuda {
KVC_LOSS_KERNELS
}
#undef KVC_LOSS_KERNELS

}  // namespace kvc::kernels
