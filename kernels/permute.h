// Permute: one copy that reorders axes (out shape = in_shape[perm]).
#pragma once

#include <cstdint>

namespace kvc::kernels {

#define KVC_PERMUTE_KERNELS                                                                   \
  /* out[..., j_k, ...] = in[..., i_perm[k], ...]; ndim <= kMaxDims */                        \
  template <typename T>                                                                       \
  void permute(const T* in, T* out, const int64_t* in_shape, const int* perm, int ndim);      \
  /* copy of in[:, start:start+length, :] viewed as (outer, axis, inner) */                   \
  template <typename T>                                                                       \
  void narrow(const T* in, T* out, int64_t outer, int64_t axis, int64_t inner, int64_t start, \
              int64_t length);                                                                \
  /* the adjoint of narrow: out (outer, axis, inner) is zero outside [start, start+length) */ \
  template <typename T>                                                                       \
  void narrow_backward(const T* gy, T* gx, int64_t outer, int64_t axis, int64_t inner,        \
                       int64_t start, int64_t length);

namespace cpu {
KVC_PERMUTE_KERNELS
}
namespace cuda {
KVC_PERMUTE_KERNELS
}
#undef KVC_PERMUTE_KERNELS

// The explicit instantiations of every launcher above for dtype T, expanded by each backend.
#define KVC_PERMUTE_INSTANTIATE(T)                                                    \
  template void permute<T>(const T*, T*, const int64_t*, const int*, int);            \
  template void narrow<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t); \
  template void narrow_backward<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t);

}  // namespace kvc::kernels
