// CPU reductions: sum over one axis, sum to a broadcast shape, and the expanding adjoint.
#include "kernels/reduce.h"

#include <cstring>

#include "base/error.h"
#include "kernels/cpu/strided_walk.h"
#include "kernels/elementwise.h"
#include "kernels/math/elementwise.h"

namespace kvc::kernels::cpu {

template <typename T>
void sum_axis(const T* in, T* out, int64_t outer, int64_t reduce, int64_t inner, T scale) {
  if (inner == 1) {
    // A contiguous run: accumulate in double so long float sums (a loss over 1e6 elements)
    // do not drift.
    for (int64_t o = 0; o < outer; ++o) {
      const T* p = in + o * reduce;
      double acc = 0;
      for (int64_t r = 0; r < reduce; ++r) acc += static_cast<double>(p[r]);
      out[o] = static_cast<T>(acc * static_cast<double>(scale));
    }
    return;
  }
  // Middle axis: add whole rows of `inner` elements, a loop the compiler vectorizes.
  for (int64_t o = 0; o < outer; ++o) {
    T* q = out + o * inner;
    for (int64_t i = 0; i < inner; ++i) q[i] = T(0);
    for (int64_t r = 0; r < reduce; ++r) {
      const T* p = in + (o * reduce + r) * inner;
      for (int64_t i = 0; i < inner; ++i) q[i] += p[i];
    }
    if (scale != T(1)) {
      for (int64_t i = 0; i < inner; ++i) q[i] *= scale;
    }
  }
}

template <typename T>
void expand_axis(const T* in, T* out, int64_t outer, int64_t reduce, int64_t inner, T scale) {
  for (int64_t o = 0; o < outer; ++o) {
    const T* p = in + o * inner;
    for (int64_t r = 0; r < reduce; ++r) {
      T* q = out + (o * reduce + r) * inner;
      for (int64_t i = 0; i < inner; ++i) q[i] = scale * p[i];
    }
  }
}

// Walks `in` in order; each in-axis either maps to the same out-axis (stride > 0) or is summed
// (stride 0). Adjacent axes of the same kind merge, so the common cases (bias gradient: sum over
// leading axes; per-row sums: trailing axes) reduce to one or two tight loops.
template <typename T>
void sum_to(const T* in, const int64_t* in_shape, const int64_t* out_shape, int ndim, T* out) {
  KVC_CHECK(ndim >= 0 && ndim <= kMaxDims, "sum_to: ", ndim, " axes exceed the maximum of ",
            kMaxDims);
  int64_t n_in = 1, n_out = 1;
  int64_t out_stride[kMaxDims] = {};
  for (int i = ndim - 1; i >= 0; --i) {
    KVC_CHECK(out_shape[i] == in_shape[i] || out_shape[i] == 1, "sum_to: axis ", i, " of size ",
              in_shape[i], " cannot sum to ", out_shape[i]);
    out_stride[i] = out_shape[i] == 1 ? 0 : n_out;
    n_out *= out_shape[i];
    n_in *= in_shape[i];
  }
  for (int64_t k = 0; k < n_out; ++k) out[k] = T(0);
  if (n_in == 0) return;
  // Operand a of the walk is `out` (stride 0 along summed axes); b is unused.
  BroadcastIndex walk;
  walk.ndim = ndim;
  for (int i = 0; i < ndim; ++i) {
    walk.shape[i] = in_shape[i];
    walk.a_stride[i] = out_stride[i];
  }
  for_each_run(math::collapse(walk), n_in, [&](const StridedRun& r) {
    const T* p = in + r.base;
    T* q = out + r.a;
    if (r.a_step == 0) {
      double acc = 0;
      for (int64_t k = 0; k < r.len; ++k) acc += static_cast<double>(p[k]);
      q[0] += static_cast<T>(acc);
    } else {
      for (int64_t k = 0; k < r.len; ++k) q[k] += p[k];  // stride 1 after collapsing
    }
  });
}

KVC_REDUCE_INSTANTIATE(float)
KVC_REDUCE_INSTANTIATE(double)

}  // namespace kvc::kernels::cpu
