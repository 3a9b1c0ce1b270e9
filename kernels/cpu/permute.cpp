// CPU permute (one reordering copy) and narrow with its zero-padding adjoint.
#include "kernels/permute.h"

#include <cstring>

#include "base/error.h"
#include "kernels/cpu/strided_walk.h"
#include "kernels/elementwise.h"
#include "kernels/math/elementwise.h"

namespace kvc::kernels::cpu {

// Walks `out` in order; out axis k steps `in` by in's stride of axis perm[k] (operand a of the
// walk; b is unused). Adjacent out axes that stay adjacent in `in` merge, so a permute that moves
// one axis past a block of others becomes a few long contiguous runs.
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
  BroadcastIndex walk;
  walk.ndim = ndim;
  for (int k = 0; k < ndim; ++k) {
    walk.shape[k] = in_shape[perm[k]];
    walk.a_stride[k] = in_stride[perm[k]];
  }
  for_each_run(math::collapse(walk), n, [&](const StridedRun& r) {
    const T* p = in + r.a;
    T* q = out + r.base;
    if (r.a_step == 1) {
      std::memcpy(q, p, static_cast<size_t>(r.len) * sizeof(T));
    } else {
      for (int64_t k = 0; k < r.len; ++k) q[k] = p[k * r.a_step];
    }
  });
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

KVC_PERMUTE_INSTANTIATE(float)
KVC_PERMUTE_INSTANTIATE(double)

}  // namespace kvc::kernels::cpu
