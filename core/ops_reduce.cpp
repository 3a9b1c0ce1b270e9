// Reductions: sum and mean (over everything or one axis) and sum_to, with their adjoints.
#include "core/autograd.h"
#include "core/op_util.h"
#include "core/ops.h"
#include "kernels/elementwise.h"
#include "kernels/reduce.h"

namespace kvc {

namespace {

// out = scale * sum of `in` over the middle of (outer, n, inner), in a tensor of `out_shape`.
Tensor sum_axis_raw(const char* op, const Tensor& in, const detail::AxisSplit& s, double scale,
                    const Shape& out_shape) {
  Tensor out = Tensor::empty(out_shape, in.options());
  KVC_DISPATCH_FLOAT(in.dtype(), op, [&] {
    KVC_LAUNCH(in.device(),
               K::sum_axis<scalar_t>(in.data<scalar_t>(), out.data<scalar_t>(), s.outer, s.n,
                                     s.inner, static_cast<scalar_t>(scale)));
  });
  return out;
}

// The adjoint: g (outer, inner) spread over (outer, n, inner) times scale, as `shape`.
Tensor expand_axis_raw(const char* op, const Tensor& g, const detail::AxisSplit& s, double scale,
                       const Shape& shape) {
  Tensor out = Tensor::empty(shape, g.options());
  KVC_DISPATCH_FLOAT(g.dtype(), op, [&] {
    KVC_LAUNCH(g.device(),
               K::expand_axis<scalar_t>(g.data<scalar_t>(), out.data<scalar_t>(), s.outer, s.n,
                                        s.inner, static_cast<scalar_t>(scale)));
  });
  return out;
}

Tensor reduce_all(const char* op, const Tensor& a, bool mean) {
  detail::check_defined(op, a);
  const detail::AxisSplit s{1, a.numel(), 1};
  // The mean of nothing is NaN, as in PyTorch.
  const double scale = mean ? 1.0 / static_cast<double>(a.numel()) : 1.0;
  Tensor out = sum_axis_raw(op, a, s, scale, {});
  Tape::current().record(op, {a}, out, [a, s, scale, op](const Tensor& g) {
    accumulate_grad(a, expand_axis_raw(op, g, s, scale, a.shape()));
  });
  return out;
}

Tensor reduce_axis(const char* op, const Tensor& a, int64_t axis, bool keepdim, bool mean) {
  detail::check_defined(op, a);
  const int64_t ax = detail::normalize_axis(op, axis, a.shape());
  const detail::AxisSplit s = detail::split_at_axis(a.shape(), ax);
  Shape out_shape = a.shape();
  if (keepdim) {
    out_shape[static_cast<size_t>(ax)] = 1;
  } else {
    out_shape.erase(out_shape.begin() + ax);
  }
  const double scale = mean ? 1.0 / static_cast<double>(s.n) : 1.0;
  Tensor out = sum_axis_raw(op, a, s, scale, out_shape);
  Tape::current().record(op, {a}, out, [a, s, scale, op](const Tensor& g) {
    accumulate_grad(a, expand_axis_raw(op, g, s, scale, a.shape()));
  });
  return out;
}

}  // namespace

Tensor sum(const Tensor& a) { return reduce_all("sum", a, false); }
Tensor mean(const Tensor& a) { return reduce_all("mean", a, true); }
Tensor sum(const Tensor& a, int64_t axis, bool keepdim) {
  return reduce_axis("sum", a, axis, keepdim, false);
}
Tensor mean(const Tensor& a, int64_t axis, bool keepdim) {
  return reduce_axis("mean", a, axis, keepdim, true);
}

Tensor sum_to(const Tensor& a, const Shape& shape) {
  detail::check_defined("sum_to", a);
  if (a.shape() == shape) return a;
  const Shape& in = a.shape();
  const size_t nd = in.size();
  KVC_CHECK(shape.size() <= nd && nd <= static_cast<size_t>(kernels::kMaxDims), "sum_to: shape ",
            in, " cannot be summed to ", shape);
  // `shape` aligned at the right of a's shape, padded with leading 1s.
  int64_t in_shape[kernels::kMaxDims] = {}, out_shape[kernels::kMaxDims] = {};
  for (size_t k = 0; k < nd; ++k) {
    const size_t off = nd - shape.size();
    in_shape[k] = in[k];
    out_shape[k] = k < off ? 1 : shape[k - off];
    KVC_CHECK(out_shape[k] == in_shape[k] || out_shape[k] == 1, "sum_to: shape ", in,
              " cannot be summed to ", shape);
  }
  Tensor out = Tensor::empty(shape, a.options());
  KVC_DISPATCH_FLOAT(a.dtype(), "sum_to", [&] {
    KVC_LAUNCH(a.device(), K::sum_to<scalar_t>(a.data<scalar_t>(), in_shape, out_shape,
                                               static_cast<int>(nd), out.data<scalar_t>()));
  });
  Tape::current().record("sum_to", {a}, out, [a](const Tensor& g) {
    accumulate_grad(a, detail::broadcast_to(g, a.shape()));
  });
  return out;
}

}  // namespace kvc
