// Causal visibility: per-row counts of the keys (or compressed blocks) a query at a position sees,
// the masks of scaled_dot_attention and attention_target.
#include <vector>

#include "core/autograd.h"
#include "core/op_util.h"
#include "core/ops.h"
#include "kernels/window.h"

namespace kvc {

Device VisibleCounts::device() const {
  KVC_CHECK(defined(), "visible counts: undefined");
  return counts_->device();
}

const int32_t* VisibleCounts::data() const {
  return defined() ? static_cast<const int32_t*>(counts_->data()) : nullptr;
}

std::vector<int32_t> VisibleCounts::to_vector() const {
  std::vector<int32_t> out(static_cast<size_t>(rows_));
  if (rows_ > 0) {
    copy_bytes(out.data(), Device::cpu(), counts_->data(), counts_->device(),
               out.size() * sizeof(int32_t));
  }
  return out;
}

VisibleCounts visible_counts(const Tensor& pos, int64_t heads, int64_t first, int64_t step,
                             int64_t limit, Tensor* weights, double scale) {
  const char* op = "visible_counts";
  detail::check_defined(op, pos, "positions");
  KVC_CHECK(pos.dim() == 2, op, ": positions ", pos.shape(), " must be (b, nq)");
  KVC_CHECK(heads >= 1 && step >= 1 && limit >= 0 && first >= 0 && scale > 0, op, ": heads ", heads,
            ", first ", first, ", step ", step, ", limit ", limit, " or scale ", scale,
            " out of range");
  const int64_t b = pos.size(0), nq = pos.size(1);
  const int64_t rows = numel_of({b, heads, nq});
  KVC_CHECK(rows <= INT32_MAX && limit <= INT32_MAX, op, ": ", rows, " rows or limit ", limit,
            " beyond 32 bits");
  auto storage =
      std::make_shared<Storage>(static_cast<size_t>(rows) * sizeof(int32_t), pos.device());
  VisibleCounts out(storage, rows);
  if (weights) *weights = Tensor::empty({b, heads, nq, 1}, pos.options());
  if (rows == 0) return out;
  int32_t* counts = static_cast<int32_t*>(storage->data());
  KVC_DISPATCH_FLOAT(pos.dtype(), op, [&] {
    scalar_t* wp = weights ? weights->data<scalar_t>() : nullptr;
    KVC_LAUNCH(pos.device(),
               K::visible_counts<scalar_t>(pos.data<scalar_t>(), counts, wp, rows, heads * nq, nq,
                                           first, step, limit, scale));
  });
  return out;
}

Tensor masked_softmax(const Tensor& x, const VisibleCounts& visible) {
  const char* op = "masked_softmax";
  detail::check_defined(op, x);
  KVC_CHECK(!(grad_enabled() && x.requires_grad()), op, ": forward only, but ", x.shape(),
            " requires grad");
  if (!visible.defined()) return softmax(x, -1);
  KVC_CHECK(x.dim() >= 1, op, ": input ", x.shape(), " has no axis to softmax over");
  const int64_t n = x.size(-1), rows = n > 0 ? x.numel() / n : 0;
  KVC_CHECK(visible.rows() == rows && visible.device() == x.device(), op, ": ", visible.rows(),
            " visible counts on ", visible.device().name(), " for ", x.shape(), " on ",
            x.device().name());
  Tensor y = detail::empty_like(x);
  KVC_DISPATCH_FLOAT(x.dtype(), op, [&] {
    KVC_LAUNCH(x.device(), K::masked_softmax_forward<scalar_t>(
                               x.data<scalar_t>(), y.data<scalar_t>(), rows, n, visible.data()));
  });
  return y;
}

}  // namespace kvc
