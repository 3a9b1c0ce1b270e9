// attention_target: the fused, forward-only softmax(alpha q k^T) v for targets computed without
// grad; never stores the (..., nq, seq) scores that scaled_dot_attention keeps for backward.
#include <algorithm>
#include <cstdint>

#include "core/autograd.h"
#include "core/op_util.h"
#include "core/ops.h"
#include "kernels/attention.h"

namespace kvc {

Tensor attention_target(const Tensor& q, const Tensor& k, const Tensor& v, double alpha,
                        const VisibleCounts& visible) {
  const char* op = "attention_target";
  detail::check_same_kind(op, q, k);
  detail::check_same_kind(op, q, v);
  const Shape lead(q.shape().begin(), q.shape().end() - std::min<int64_t>(q.dim(), 2));
  KVC_CHECK(q.dim() >= 2 && k.dim() == q.dim() && v.dim() == q.dim() &&
                Shape(k.shape().begin(), k.shape().end() - 2) == lead && k.shape() == v.shape() &&
                k.size(-1) == q.size(-1),
            op, ": q ", q.shape(), " (..., nq, d), k ", k.shape(), " and v ", v.shape(),
            " (..., seq, d) do not fit");
  // Gradients need the probabilities this op never keeps: the recorded op gives the same values.
  // Empty sizes and very wide heads (beyond the CUDA kernel's shared memory) take it too.
  const bool needs_grad =
      grad_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  const int64_t batch = numel_of(lead), nq = q.size(-2), seq = k.size(-2), d = q.size(-1);
  if (needs_grad || batch == 0 || nq == 0 || seq == 0 || d == 0 || d > 1024) {
    return scaled_dot_attention(q, k, v, alpha, visible);
  }
  KVC_CHECK(!visible.defined() || (visible.rows() == batch * nq && visible.device() == q.device()),
            op, ": ", visible.rows(), " visible counts for q ", q.shape(), " on ",
            q.device().name());
  Tensor out = Tensor::empty(q.shape(), q.options());
  KVC_DISPATCH_FLOAT(q.dtype(), op, [&] {
    KVC_LAUNCH(q.device(), K::attention_forward<scalar_t>(
                               q.data<scalar_t>(), k.data<scalar_t>(), v.data<scalar_t>(),
                               out.data<scalar_t>(), batch, nq, seq, d, alpha, visible.data()));
  });
  return out;
}

}  // namespace kvc
