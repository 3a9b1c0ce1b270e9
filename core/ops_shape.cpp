// Shape ops: reshape (a view), permute and narrow (one copy each), with their adjoints.
#include <vector>

#include "core/autograd.h"
#include "core/op_util.h"
#include "core/ops.h"
#include "kernels/elementwise.h"
#include "kernels/permute.h"

namespace kvc {

Tensor reshape(const Tensor& a, const Shape& shape) {
  detail::check_defined("reshape", a);
  Shape resolved = shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t k = 0; k < shape.size(); ++k) {
    if (shape[k] == -1) {
      KVC_CHECK(infer < 0, "reshape: more than one -1 in ", shape, " (input ", a.shape(), ")");
      infer = static_cast<int>(k);
    } else {
      KVC_CHECK(shape[k] >= 0, "reshape: negative size in ", shape, " (input ", a.shape(), ")");
      known *= shape[k];
    }
  }
  if (infer >= 0) {
    KVC_CHECK(known > 0 && a.numel() % known == 0, "reshape: shape ", shape, " does not fit the ",
              a.numel(), " elements of ", a.shape());
    resolved[static_cast<size_t>(infer)] = a.numel() / known;
  }
  KVC_CHECK(numel_of(resolved) == a.numel(), "reshape: shape ", shape, " does not hold the ",
            a.numel(), " elements of ", a.shape());
  Tensor out = a.view_as_shape(resolved);
  Tape::current().record("reshape", {a}, out,
                         [a](const Tensor& g) { accumulate_grad(a, g.view_as_shape(a.shape())); });
  return out;
}

namespace {

Tensor permute_raw(const Tensor& in, const std::vector<int>& perm) {
  const Shape& s = in.shape();
  Shape out_shape(s.size());
  for (size_t k = 0; k < s.size(); ++k) out_shape[k] = s[static_cast<size_t>(perm[k])];
  Tensor out = Tensor::empty(out_shape, in.options());
  const int nd = static_cast<int>(s.size());
  KVC_DISPATCH_FLOAT(in.dtype(), "permute", [&] {
    KVC_LAUNCH(in.device(), K::permute<scalar_t>(in.data<scalar_t>(), out.data<scalar_t>(),
                                                 s.data(), perm.data(), nd));
  });
  return out;
}

}  // namespace

Tensor permute(const Tensor& a, const std::vector<int64_t>& perm) {
  detail::check_defined("permute", a);
  const size_t nd = a.shape().size();
  KVC_CHECK(perm.size() == nd && nd <= static_cast<size_t>(kernels::kMaxDims), "permute: order ",
            Shape(perm), " does not match shape ", a.shape());
  std::vector<int> p(nd), inverse(nd, -1);
  for (size_t k = 0; k < nd; ++k) {
    const int64_t ax = detail::normalize_axis("permute", perm[k], a.shape());
    KVC_CHECK(inverse[static_cast<size_t>(ax)] < 0, "permute: order ", Shape(perm),
              " repeats axis ", ax, " (shape ", a.shape(), ")");
    p[k] = static_cast<int>(ax);
    inverse[static_cast<size_t>(ax)] = static_cast<int>(k);
  }
  Tensor out = permute_raw(a, p);
  Tape::current().record("permute", {a}, out, [a, inverse](const Tensor& g) {
    accumulate_grad(a, permute_raw(g, inverse));
  });
  return out;
}

Tensor narrow(const Tensor& a, int64_t axis, int64_t start, int64_t length) {
  detail::check_defined("narrow", a);
  const int64_t ax = detail::normalize_axis("narrow", axis, a.shape());
  const detail::AxisSplit s = detail::split_at_axis(a.shape(), ax);
  KVC_CHECK(start >= 0 && length >= 0 && start + length <= s.n, "narrow: range [", start, ", ",
            start + length, ") out of bounds for axis ", axis, " of shape ", a.shape());
  Shape out_shape = a.shape();
  out_shape[static_cast<size_t>(ax)] = length;
  Tensor out = Tensor::empty(out_shape, a.options());
  KVC_DISPATCH_FLOAT(a.dtype(), "narrow", [&] {
    KVC_LAUNCH(a.device(), K::narrow<scalar_t>(a.data<scalar_t>(), out.data<scalar_t>(), s.outer,
                                               s.n, s.inner, start, length));
  });
  Tape::current().record("narrow", {a}, out, [a, s, start, length](const Tensor& g) {
    Tensor gx = detail::empty_like(a);
    KVC_DISPATCH_FLOAT(g.dtype(), "narrow", [&] {
      KVC_LAUNCH(g.device(), K::narrow_backward<scalar_t>(g.data<scalar_t>(), gx.data<scalar_t>(),
                                                          s.outer, s.n, s.inner, start, length));
    });
    accumulate_grad(a, gx);
  });
  return out;
}

}  // namespace kvc
