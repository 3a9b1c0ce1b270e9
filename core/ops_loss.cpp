// Losses: mean squared error, with a backward that reads the upstream gradient on the device.
#include "core/autograd.h"
#include "core/op_util.h"
#include "core/ops.h"
#include "kernels/loss.h"

namespace kvc {

Tensor mse_loss(const Tensor& pred, const Tensor& target) {
  detail::check_same_kind("mse_loss", pred, target);
  KVC_CHECK(pred.shape() == target.shape(), "mse_loss: prediction shape ", pred.shape(),
            " does not match target shape ", target.shape());
  Tensor out = Tensor::empty({}, pred.options());
  const int64_t n = pred.numel();
  KVC_DISPATCH_FLOAT(pred.dtype(), "mse_loss", [&] {
    KVC_LAUNCH(pred.device(),
               K::mse_forward<scalar_t>(pred.data<scalar_t>(), target.data<scalar_t>(),
                                        out.data<scalar_t>(), n));
  });
  Tape::current().record("mse_loss", {pred, target}, out, [pred, target](const Tensor& g) {
    const bool want_p = pred.requires_grad(), want_t = target.requires_grad();
    Tensor gp = want_p ? detail::empty_like(pred) : Tensor();
    Tensor gt = want_t ? detail::empty_like(target) : Tensor();
    const int64_t n = pred.numel();
    KVC_DISPATCH_FLOAT(g.dtype(), "mse_loss", [&] {
      KVC_LAUNCH(g.device(), K::mse_backward<scalar_t>(pred.data<scalar_t>(),
                                                       target.data<scalar_t>(), g.data<scalar_t>(),
                                                       want_p ? gp.data<scalar_t>() : nullptr,
                                                       want_t ? gt.data<scalar_t>() : nullptr, n));
    });
    if (want_p) accumulate_grad(pred, gp);
    if (want_t) accumulate_grad(target, gt);
  });
  return out;
}

}  // namespace kvc
