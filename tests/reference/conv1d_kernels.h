// Grouped 1-D convolution without padding (PyTorch's Conv1d, padding 0, dilation 1).
#pragma once

#include <cstdint>

namespace kvc::kernels {

// x (batch, c_in, length), w (c_out, c_in / groups, kernel), bias (c_out),
// y (batch, c_out, l_out) with l_out = (length - kernel) / stride + 1.
struct Conv1dShape {
  int64_t batch = 0, c_in = 0, c_out = 0, length = 0, kernel = 0, stride = 1, groups = 1;
  int64_t l_out() const { return (length - kernel) / stride + 1; }
};

#define KVC_CONV1D_KERNELS                                                                      \
  /* bias may be null */                                                                        \
  template <typename T>                                                                         \
  void conv1d_forward(const Conv1dShape& s, const T* x, const T* w, const T* bias, T* y);       \
  /* any of gx, gw, gb may be null (not wanted). gx is overwritten; gw and gb are               \
     overwritten, or added to when accumulate_params is true (grad_buffer's flag). */           \
  template <typename T>                                                                         \
  void conv1d_backward(const Conv1dShape& s, const T* x, const T* w, const T* gy, T* gx, T* gw, \
                       T* gb, bool accumulate_params);

namespace cpu {
KVC_CONV1D_KERNELS
}
namespace cuda {
KVC_CONV1D_KERNELS
}
#undef KVC_CONV1D_KERNELS

// The explicit instantiations of every launcher above for dtype T, expanded by each backend.
#define KVC_CONV1D_INSTANTIATE(T)                                                                \
  template void conv1d_forward<T>(const Conv1dShape&, const T*, const T*, const T*, T*);         \
  template void conv1d_backward<T>(const Conv1dShape&, const T*, const T*, const T*, T*, T*, T*, \
                                   bool);

}  // namespace kvc::kernels
