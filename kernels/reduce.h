// Reductions: sum over one axis, sum to a broadcast shape, and their expanding adjoints.
#pragma once

#include <cstdint>

namespace kvc::kernels {

#define KVC_REDUCE_KERNELS                                                                      \
  /* in viewed as (outer, reduce, inner): out[o, i] = scale * sum_r in[o, r, i] */              \
  template <typename T>                                                                         \
  void sum_axis(const T* in, T* out, int64_t outer, int64_t reduce, int64_t inner, T scale);    \
  /* the adjoint: out[o, r, i] = scale * in[o, i] */                                            \
  template <typename T>                                                                         \
  void expand_axis(const T* in, T* out, int64_t outer, int64_t reduce, int64_t inner, T scale); \
  /* out_shape equals in_shape except for axes of size 1 (same ndim <= kMaxDims):               \
     out = sum of in over those axes (the gradient of a broadcast) */                           \
  template <typename T>                                                                         \
  void sum_to(const T* in, const int64_t* in_shape, const int64_t* out_shape, int ndim, T* out);

namespace cpu {
KVC_REDUCE_KERNELS
}
namespace cuda {
KVC_REDUCE_KERNELS
}
#undef KVC_REDUCE_KERNELS

// The explicit instantiations of every launcher above for dtype T, expanded by each backend.
#define KVC_REDUCE_INSTANTIATE(T)                                           \
  template void sum_axis<T>(const T*, T*, int64_t, int64_t, int64_t, T);    \
  template void expand_axis<T>(const T*, T*, int64_t, int64_t, int64_t, T); \
  template void sum_to<T>(const T*, const int64_t*, const int64_t*, int, T*);

}  // namespace kvc::kernels
