// Internal helpers shared by the core/ops_*.cpp files: backend launch, input checks, axis math.
// Not part of the public API: include it from .cpp files only.
#pragma once

#include <cstdint>
#include <vector>

#include "base/dtype.h"
#include "base/error.h"
#include "core/tensor.h"

// KVC_LAUNCH(device, K::kernel<scalar_t>(args...)) runs the call with the namespace alias K bound
// to kernels::cpu or kernels::cuda according to `device`; in a CPU-only build the CUDA branch
// throws a clear error instead of referencing missing symbols. Use it inside KVC_DISPATCH_FLOAT
// so scalar_t is bound, e.g.
//   KVC_DISPATCH_FLOAT(x.dtype(), "relu", [&] {
//     KVC_LAUNCH(x.device(), K::relu_forward<scalar_t>(x.data<scalar_t>(), y.data<scalar_t>(), n));
//   });
// The call may contain commas (template arguments, argument lists).
#define KVC_LAUNCH(DEVICE, ...)             \
  do {                                      \
    if ((DEVICE).is_cpu()) {                \
      namespace K = ::kvc::kernels::cpu;    \
      __VA_ARGS__;                          \
    } else {                                \
      KVC_CUDA_ONLY({                       \
        namespace K = ::kvc::kernels::cuda; \
        __VA_ARGS__;                        \
      });                                   \
    }                                       \
  } while (0)

namespace kvc::detail {

// Throws unless t is defined. `what` names the argument ("input", "weight").
inline void check_defined(const char* op, const Tensor& t, const char* what = "input") {
  KVC_CHECK(t.defined(), op, ": ", what, " is an undefined tensor");
}

// Both defined, same dtype and same device; the message names the op and both shapes.
inline void check_same_kind(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, a, "first input");
  check_defined(op, b, "second input");
  KVC_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch, ", a.shape(), " ", dtype_name(a.dtype()),
            " vs ", b.shape(), " ", dtype_name(b.dtype()));
  KVC_CHECK(a.device() == b.device(), op, ": device mismatch, ", a.shape(), " on ",
            a.device().name(), " vs ", b.shape(), " on ", b.device().name());
}

// Maps axis in [-ndim, ndim) to [0, ndim) or throws naming the op and the shape.
inline int64_t normalize_axis(const char* op, int64_t axis, const Shape& shape) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  KVC_CHECK(axis >= -nd && axis < nd, op, ": axis ", axis, " out of range for shape ", shape);
  return axis < 0 ? axis + nd : axis;
}

// A contiguous tensor seen as (outer, n, inner) around one axis: what reduce, softmax and narrow
// kernels take, so no op ever transposes to reach a middle axis.
struct AxisSplit {
  int64_t outer = 1, n = 1, inner = 1;
};

// `axis` must already be normalized.
inline AxisSplit split_at_axis(const Shape& shape, int64_t axis) {
  AxisSplit s;
  for (int64_t i = 0; i < axis; ++i) s.outer *= shape[static_cast<size_t>(i)];
  s.n = shape[static_cast<size_t>(axis)];
  for (size_t i = static_cast<size_t>(axis) + 1; i < shape.size(); ++i) s.inner *= shape[i];
  return s;
}

// A fresh uninitialized tensor with t's dtype and device (no grad).
inline Tensor empty_like(const Tensor& t) { return Tensor::empty(t.shape(), t.options()); }

}  // namespace kvc::detail

namespace kvc::detail {

// The broadcast of t to `shape` (numpy rules, t's shape aligned at the right) as a fresh
// contiguous tensor; not recorded. The adjoint of sum_to, used by its backward. Defined in
// core/ops_elementwise.cpp.
Tensor broadcast_to(const Tensor& t, const Shape& shape);

}  // namespace kvc::detail
