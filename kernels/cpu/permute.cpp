// CPU permute (one reordering copy) and narrow with its zero-padding adjoint.
#include "kernels/permute.h"

#include <cstring>

#include "core/error.h"
#include "kernels/elementwise.h"

namespace kvc::kernels::cpu {

// Walks `out` in order; out axis k steps `in` by in's stride of axis perm[k]. Adjacent out axes
// that stay adjacent in `in` merge, so a permute that moves one axis past a block of others
// becomes a few long contiguous runs.
template <typename T>
void permute(const T* in, T* out, const int64_t* in_shape, const int* perm, int ndim) {
  KVC_CHECK(ndim >= 0 && ndim <= kMaxDims, "permute: ", ndim, " axes exceed the maximum of ",
            kMaxDims);
  int64_t in_stride[kMaxDims] = {};
  int64_t n = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    in_stride[i] = n;
    n *= in_shape[i];
  }
  if (n == 0) return;
  int nd = 0;
  int64_t shape[kMaxDims] = {}, stride[kMaxDims] = {};
  for (int k = 0; k < ndim; ++k) {
    const int64_t s = in_shape[perm[k]];
    const int64_t st = in_stride[perm[k]];
    if (s == 1) continue;
    if (nd > 0 && stride[nd - 1] == st * s) {
      shape[nd - 1] *= s;
      stride[nd - 1] = st;
      continue;
    }
    shape[nd] = s;
    stride[nd] = st;
    ++nd;
  }
  if (nd == 0) {
    out[0] = in[0];
    return;
  }
  const int last = nd - 1;
  const int64_t m = shape[last];
  const int64_t s = stride[last];
  int64_t counter[kMaxDims] = {};
  int64_t io = 0;
  for (int64_t base = 0; base < n; base += m) {
    const T* p = in + io;
    T* q = out + base;
    if (s == 1) {
      std::memcpy(q, p, static_cast<size_t>(m) * sizeof(T));
    } else {
      for (int64_t k = 0; k < m; ++k) q[k] = p[k * s];
    }
    for (int d = last - 1; d >= 0; --d) {
      io += stride[d];
      if (++counter[d] < shape[d]) break;
      io -= stride[d] * shape[d];
      counter[d] = 0;
    }
  }
}

template <typename T>
void narrow(const T* in, T* out, int64_t outer, int64_t axis, int64_t inner, int64_t start,
            int64_t length) {
  const size_t run = static_cast<size_t>(length * inner) * sizeof(T);
  if (run == 0) return;  // empty slice: out may be null, and memcpy must not see it
  for (int64_t o = 0; o < outer; ++o) {
    std::memcpy(out + o * length * inner, in + (o * axis + start) * inner, run);
  }
}

template <typename T>
void narrow_backward(const T* gy, T* gx, int64_t outer, int64_t axis, int64_t inner, int64_t start,
                     int64_t length) {
  for (int64_t o = 0; o < outer; ++o) {
    T* row = gx + o * axis * inner;
    for (int64_t k = 0; k < start * inner; ++k) row[k] = T(0);
    std::memcpy(row + start * inner, gy + o * length * inner,
                static_cast<size_t>(length * inner) * sizeof(T));
    for (int64_t k = (start + length) * inner; k < axis * inner; ++k) row[k] = T(0);
  }
}

#define KVC_INSTANTIATE(T)                                                            \
  template void permute<T>(const T*, T*, const int64_t*, const int*, int);            \
  template void narrow<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t); \
  template void narrow_backward<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t);
KVC_INSTANTIATE(float)
KVC_INSTANTIATE(double)
#undef KVC_INSTANTIATE

}  // namespace kvc::kernels::cpu
