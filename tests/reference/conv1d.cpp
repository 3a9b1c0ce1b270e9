// The grouped conv1d op (PyTorch's Conv1d, padding 0) with its autograd: the reference that
// the compressors' mix formulation and nn::Conv1d are tested against. Test-only: the library
// computes its convolutions (kernel == stride) as mix.
#include "tests/reference/conv1d.h"

#include <vector>

#include "core/autograd.h"
#include "core/op_util.h"
#include "tests/reference/conv1d_kernels.h"

namespace kvc {

Tensor conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride,
              int64_t groups) {
  const char* op = "conv1d";
  detail::check_defined(op, x, "input");
  detail::check_defined(op, weight, "weight");
  detail::check_same_kind(op, x, weight);
  KVC_CHECK(x.dim() == 3 && weight.dim() == 3, op, ": input ", x.shape(),
            " must be (batch, c_in, length) and weight ", weight.shape(),
            " (c_out, c_in/groups, kernel)");
  KVC_CHECK(stride >= 1 && groups >= 1, op, ": stride ", stride, " and groups ", groups,
            " must be positive (input ", x.shape(), ", weight ", weight.shape(), ")");
  kernels::Conv1dShape s;
  s.batch = x.size(0);
  s.c_in = x.size(1);
  s.length = x.size(2);
  s.c_out = weight.size(0);
  s.kernel = weight.size(2);
  s.stride = stride;
  s.groups = groups;
  KVC_CHECK(s.c_in % groups == 0 && s.c_out % groups == 0 && weight.size(1) * groups == s.c_in, op,
            ": input ", x.shape(), " and weight ", weight.shape(), " do not fit groups ", groups,
            " (need c_in = weight.size(1) * groups and c_out divisible by groups)");
  KVC_CHECK(s.kernel >= 1 && s.length >= s.kernel, op, ": input ", x.shape(),
            " is shorter than the kernel of weight ", weight.shape());
  if (bias.defined()) {
    detail::check_same_kind(op, x, bias);
    KVC_CHECK(bias.shape() == Shape({s.c_out}), op, ": bias ", bias.shape(),
              " does not match weight ", weight.shape(), " (expected (c_out,))");
  }
  Tensor y = Tensor::empty({s.batch, s.c_out, s.l_out()}, x.options());
  KVC_DISPATCH_FLOAT(x.dtype(), op, [&] {
    const scalar_t* bp = bias.defined() ? bias.data<scalar_t>() : nullptr;
    KVC_LAUNCH(x.device(),
               K::conv1d_forward<scalar_t>(s, x.data<scalar_t>(), weight.data<scalar_t>(), bp,
                                           y.data<scalar_t>()));
  });

  std::vector<Tensor> inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  Tape::current().record(op, std::move(inputs), y, [=](const Tensor& gy) {
    // The kernel overwrites gx: write into x's gradient directly only when there is none yet.
    Tensor gx;
    bool gx_direct = false;
    if (x.requires_grad()) {
      if (!x.grad().defined()) {
        bool unused = false;
        gx = grad_buffer(x, &unused);
        gx_direct = true;
      } else {
        gx = Tensor::empty(x.shape(), x.options());
      }
    }
    // gw and gb share one accumulate flag: a fresh buffer next to an accumulating one starts
    // at zero so both can accumulate.
    Tensor gw, gbias;
    bool acc_w = false, acc_b = false;
    if (weight.requires_grad()) gw = grad_buffer(weight, &acc_w);
    if (bias.defined() && bias.requires_grad()) gbias = grad_buffer(bias, &acc_b);
    const bool accumulate = acc_w || acc_b;
    if (accumulate && gw.defined() && !acc_w) gw.fill_(0.0);
    if (accumulate && gbias.defined() && !acc_b) gbias.fill_(0.0);
    KVC_DISPATCH_FLOAT(gy.dtype(), op, [&] {
      auto ptr = [](const Tensor& t) { return t.defined() ? t.data<scalar_t>() : nullptr; };
      KVC_LAUNCH(gy.device(), K::conv1d_backward<scalar_t>(
                                  s, x.data<scalar_t>(), weight.data<scalar_t>(),
                                  gy.data<scalar_t>(), ptr(gx), ptr(gw), ptr(gbias), accumulate));
    });
    if (gx.defined() && !gx_direct) accumulate_grad(x, gx);
  });
  return y;
}

}  // namespace kvc
