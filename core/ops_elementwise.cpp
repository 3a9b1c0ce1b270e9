// Elementwise ops with numpy broadcasting (add, sub, mul, div), neg, scale, add_scalar.
#include <algorithm>

#include "core/autograd.h"
#include "core/op_util.h"
#include "core/ops.h"
#include "kernels/elementwise.h"

namespace kvc {

using kernels::BinaryOp;
using kernels::BroadcastIndex;
using kernels::kMaxDims;

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  const size_t nd = std::max(a.size(), b.size());
  KVC_CHECK(nd <= static_cast<size_t>(kMaxDims), op, ": shapes ", a, " and ", b, " have more than ",
            kMaxDims, " axes");
  Shape out(nd);
  for (size_t k = 0; k < nd; ++k) {
    // Axis k of the result counts from the left; operands align at the right.
    const int64_t sa = k + a.size() >= nd ? a[k + a.size() - nd] : 1;
    const int64_t sb = k + b.size() >= nd ? b[k + b.size() - nd] : 1;
    KVC_CHECK(sa == sb || sa == 1 || sb == 1, op, ": shapes ", a, " and ", b,
              " cannot be broadcast together (axis ",
              static_cast<int64_t>(k) - static_cast<int64_t>(nd), ": ", sa, " vs ", sb, ")");
    out[k] = sa == 1 ? sb : sa;
  }
  return out;
}

namespace {

// Element strides of `in` (aligned at the right of out_shape) per out axis; 0 where broadcast.
void fill_strides(const Shape& in, size_t nd, int64_t* stride) {
  int64_t s = 1;
  for (size_t k = nd; k-- > 0;) {
    const size_t off = nd - in.size();
    if (k < off) {
      stride[k] = 0;
      continue;
    }
    const int64_t size = in[k - off];
    stride[k] = size == 1 ? 0 : s;
    s *= size;
  }
}

BroadcastIndex make_index(const Shape& out, const Shape& a, const Shape& b) {
  BroadcastIndex idx;
  idx.ndim = static_cast<int>(out.size());
  for (size_t k = 0; k < out.size(); ++k) idx.shape[k] = out[k];
  fill_strides(a, out.size(), idx.a_stride);
  fill_strides(b, out.size(), idx.b_stride);
  return idx;
}

// out (of `shape`, which a and b broadcast to) = a op b; no autograd, no checks.
Tensor binary_into(const char* name, BinaryOp op, const Tensor& a, const Tensor& b,
                   const Shape& shape) {
  Tensor out = Tensor::empty(shape, a.options());
  const BroadcastIndex idx = make_index(shape, a.shape(), b.shape());
  const int64_t n = out.numel();
  KVC_DISPATCH_FLOAT(a.dtype(), name, [&] {
    KVC_LAUNCH(a.device(), K::binary<scalar_t>(op, a.data<scalar_t>(), b.data<scalar_t>(),
                                               out.data<scalar_t>(), n, idx));
  });
  return out;
}

// out = a op b over the broadcast shape; no autograd.
Tensor binary_raw(const char* name, BinaryOp op, const Tensor& a, const Tensor& b) {
  detail::check_same_kind(name, a, b);
  return binary_into(name, op, a, b, broadcast_shapes(name, a.shape(), b.shape()));
}

// y = s * x as a fresh tensor; no autograd.
Tensor scaled(const Tensor& x, double s) {
  Tensor y = detail::empty_like(x);
  const int64_t n = x.numel();
  KVC_DISPATCH_FLOAT(x.dtype(), "scale", [&] {
    KVC_LAUNCH(x.device(), K::axpby<scalar_t>(y.data<scalar_t>(), x.data<scalar_t>(), n,
                                              static_cast<scalar_t>(s), scalar_t(0)));
  });
  return y;
}

}  // namespace

Tensor detail::broadcast_to(const Tensor& t, const Shape& shape) {
  detail::check_defined("broadcast_to", t);
  KVC_CHECK(broadcast_shapes("broadcast_to", t.shape(), shape) == shape, "broadcast_to: shape ",
            t.shape(), " does not broadcast to ", shape);
  // t + 0 with the zero as a stride-0 scalar: the binary kernel already does the index math.
  const Tensor zero = Tensor::zeros({}, t.options());
  return binary_into("broadcast_to", BinaryOp::add, t, zero, shape);
}

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw("add", BinaryOp::add, a, b);
  Tape::current().record("add", {a, b}, out, [a, b](const Tensor& g) {
    NoGradGuard guard;
    if (a.requires_grad()) accumulate_grad(a, sum_to(g, a.shape()));
    if (b.requires_grad()) accumulate_grad(b, sum_to(g, b.shape()));
  });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw("sub", BinaryOp::sub, a, b);
  Tape::current().record("sub", {a, b}, out, [a, b](const Tensor& g) {
    NoGradGuard guard;
    if (a.requires_grad()) accumulate_grad(a, sum_to(g, a.shape()));
    if (b.requires_grad()) accumulate_grad(b, scaled(sum_to(g, b.shape()), -1.0));
  });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw("mul", BinaryOp::mul, a, b);
  Tape::current().record("mul", {a, b}, out, [a, b](const Tensor& g) {
    NoGradGuard guard;
    if (a.requires_grad()) {
      accumulate_grad(a, sum_to(binary_raw("mul", BinaryOp::mul, g, b), a.shape()));
    }
    if (b.requires_grad()) {
      accumulate_grad(b, sum_to(binary_raw("mul", BinaryOp::mul, g, a), b.shape()));
    }
  });
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw("div", BinaryOp::div, a, b);
  Tape::current().record("div", {a, b}, out, [a, b](const Tensor& g) {
    NoGradGuard guard;
    const Tensor g_over_b = binary_raw("div", BinaryOp::div, g, b);
    if (a.requires_grad()) accumulate_grad(a, sum_to(g_over_b, a.shape()));
    if (b.requires_grad()) {
      // d(a/b)/db = -a / b^2 = -(g / b) * a / b
      const Tensor t =
          binary_raw("div", BinaryOp::div, binary_raw("mul", BinaryOp::mul, g_over_b, a), b);
      accumulate_grad(b, scaled(sum_to(t, b.shape()), -1.0));
    }
  });
  return out;
}

Tensor neg(const Tensor& a) {
  detail::check_defined("neg", a);
  Tensor out = scaled(a, -1.0);
  Tape::current().record("neg", {a}, out,
                         [a](const Tensor& g) { accumulate_grad(a, scaled(g, -1.0)); });
  return out;
}

Tensor scale(const Tensor& a, double s) {
  detail::check_defined("scale", a);
  Tensor out = scaled(a, s);
  Tape::current().record("scale", {a}, out,
                         [a, s](const Tensor& g) { accumulate_grad(a, scaled(g, s)); });
  return out;
}

Tensor add_scalar(const Tensor& a, double s) {
  detail::check_defined("add_scalar", a);
  const Tensor sv = Tensor::full({}, s, a.options());
  Tensor out = binary_raw("add_scalar", BinaryOp::add, a, sv);
  Tape::current().record("add_scalar", {a}, out, [a](const Tensor& g) { accumulate_grad(a, g); });
  return out;
}

}  // namespace kvc
