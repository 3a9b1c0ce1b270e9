// Activations: softmax over any axis, ReLU, exact GELU and Philox inverted dropout.
#include "core/autograd.h"
#include "core/op_util.h"
#include "core/ops.h"
#include "kernels/elementwise.h"
#include "kernels/softmax.h"

namespace kvc {

Tensor softmax(const Tensor& a, int64_t axis) {
  detail::check_defined("softmax", a);
  const int64_t ax = detail::normalize_axis("softmax", axis, a.shape());
  const detail::AxisSplit s = detail::split_at_axis(a.shape(), ax);
  Tensor out = detail::empty_like(a);
  KVC_DISPATCH_FLOAT(a.dtype(), "softmax", [&] {
    KVC_LAUNCH(a.device(), K::softmax_forward<scalar_t>(a.data<scalar_t>(), out.data<scalar_t>(),
                                                        s.outer, s.n, s.inner));
  });
  // Backward needs only y; a detached handle keeps its storage without pinning the output's
  // autograd state.
  const Tensor y = out.detach();
  Tape::current().record("softmax", {a}, out, [a, y, s](const Tensor& g) {
    Tensor gx = detail::empty_like(a);
    KVC_DISPATCH_FLOAT(g.dtype(), "softmax", [&] {
      KVC_LAUNCH(g.device(),
                 K::softmax_backward<scalar_t>(y.data<scalar_t>(), g.data<scalar_t>(),
                                               gx.data<scalar_t>(), s.outer, s.n, s.inner));
    });
    accumulate_grad(a, gx);
  });
  return out;
}

Tensor relu(const Tensor& a) {
  detail::check_defined("relu", a);
  Tensor out = detail::empty_like(a);
  const int64_t n = a.numel();
  KVC_DISPATCH_FLOAT(a.dtype(), "relu", [&] {
    KVC_LAUNCH(a.device(), K::relu_forward<scalar_t>(a.data<scalar_t>(), out.data<scalar_t>(), n));
  });
  const Tensor y = out.detach();
  Tape::current().record("relu", {a}, out, [a, y](const Tensor& g) {
    Tensor gx = detail::empty_like(a);
    const int64_t n = a.numel();
    KVC_DISPATCH_FLOAT(g.dtype(), "relu", [&] {
      KVC_LAUNCH(g.device(), K::relu_backward<scalar_t>(y.data<scalar_t>(), g.data<scalar_t>(),
                                                        gx.data<scalar_t>(), n));
    });
    accumulate_grad(a, gx);
  });
  return out;
}

Tensor gelu(const Tensor& a) {
  detail::check_defined("gelu", a);
  Tensor out = detail::empty_like(a);
  const int64_t n = a.numel();
  KVC_DISPATCH_FLOAT(a.dtype(), "gelu", [&] {
    KVC_LAUNCH(a.device(), K::gelu_forward<scalar_t>(a.data<scalar_t>(), out.data<scalar_t>(), n));
  });
  Tape::current().record("gelu", {a}, out, [a](const Tensor& g) {
    Tensor gx = detail::empty_like(a);
    const int64_t n = a.numel();
    KVC_DISPATCH_FLOAT(g.dtype(), "gelu", [&] {
      KVC_LAUNCH(g.device(), K::gelu_backward<scalar_t>(a.data<scalar_t>(), g.data<scalar_t>(),
                                                        gx.data<scalar_t>(), n));
    });
    accumulate_grad(a, gx);
  });
  return out;
}

Tensor dropout(const Tensor& a, double p, bool training, uint64_t seed, uint64_t offset) {
  detail::check_defined("dropout", a);
  KVC_CHECK(p >= 0.0 && p < 1.0, "dropout: p = ", p, " is outside [0, 1) (input ", a.shape(), ")");
  if (!training || p == 0.0) return a;  // the identity costs nothing, as SPEC asks
  const float pf = static_cast<float>(p);
  Tensor out = detail::empty_like(a);
  const int64_t n = a.numel();
  KVC_DISPATCH_FLOAT(a.dtype(), "dropout", [&] {
    KVC_LAUNCH(a.device(), K::dropout_forward<scalar_t>(a.data<scalar_t>(), out.data<scalar_t>(), n,
                                                        pf, seed, offset));
  });
  // The mask is never stored: backward redraws it from (seed, offset).
  Tape::current().record("dropout", {a}, out, [a, pf, seed, offset](const Tensor& g) {
    Tensor gx = detail::empty_like(a);
    const int64_t n = a.numel();
    KVC_DISPATCH_FLOAT(g.dtype(), "dropout", [&] {
      KVC_LAUNCH(g.device(), K::dropout_backward<scalar_t>(g.data<scalar_t>(), gx.data<scalar_t>(),
                                                           n, pf, seed, offset));
    });
    accumulate_grad(a, gx);
  });
  return out;
}

}  // namespace kvc
