// `attention_pool` and `scaled_attention_pool`: softmax pooling over the block with learned logits.
#include <cmath>
#include <memory>
#include <vector>

#include "core/ops.h"
#include "nn/kinds/kind_util.h"
#include "nn/kinds/kinds.h"

namespace kvc::kinds {

namespace {

// `attention_pool` / `scaled_attention_pool`: logits = x W^T (W (d, d) shared by heads, init
// identity), times d^-0.5 when scaled; softmax over n; y = sum_n x * softmax.
class AttentionPoolCompressor : public Compressor {
 public:
  AttentionPoolCompressor(const CompressorOptions& options, bool scaled);
  Tensor forward(const Tensor& x) override;  // (b, h, w, n, d) -> (b, h, w, d)
  Tensor compress_sequence(const Tensor& seq, const Tensor& positions) override;

 private:
  bool scaled_;
  double alpha() const;
  std::shared_ptr<Linear> to_attn_logits_;  // weight (d, d), no bias
};

AttentionPoolCompressor::AttentionPoolCompressor(const CompressorOptions& o, bool scaled)
    : Compressor(o), scaled_(scaled) {
  ParamInit init = init_of(o);
  to_attn_logits_ = register_module(
      "to_attn_logits",
      std::make_shared<Linear>(LinearOptions(o.dim_head, o.dim_head).bias(false), init));
  // Identity init: at the start the logits are the values themselves.
  std::vector<double> eye(static_cast<size_t>(o.dim_head * o.dim_head), 0.0);
  for (int64_t i = 0; i < o.dim_head; ++i) eye[static_cast<size_t>(i * o.dim_head + i)] = 1.0;
  Tensor weight = to_attn_logits_->named_parameters().front().second;
  weight.copy_from(Tensor::from_vector(eye, {o.dim_head, o.dim_head}, init.options));
}

// SPEC: sum(mul(x, softmax(logits (* d^-0.5), 3)), 3); softmax_pool does the scale, the softmax
// over n and the weighted sum in one pass, forward and backward.
Tensor AttentionPoolCompressor::forward(const Tensor& x) {
  const Tensor logits = (*to_attn_logits_)(x);  // (b, h, w, n, d)
  return softmax_pool(x, logits, alpha());
}

// The same over the blocks of a sequence, split, logits and pool in one op (fused on CUDA).
Tensor AttentionPoolCompressor::compress_sequence(const Tensor& seq, const Tensor& positions) {
  const Tensor weight = to_attn_logits_->named_parameters().front().second;
  return attention_pool(seq, positions, weight, options_.block, options_.block_stride(), alpha());
}

double AttentionPoolCompressor::alpha() const {
  return scaled_ ? 1.0 / std::sqrt(static_cast<double>(options_.dim_head)) : 1.0;
}

// Per block: the (n, d) x (d, d) logits and the weighted sum over n.
double pool_flops(const CompressorOptions& o, double blocks) {
  const double n = o.block, d = o.dim_head;
  return 2 * blocks * n * d * d + 2 * blocks * n * d;
}

}  // namespace

CompressorKind attention_pool() {
  return {"attention_pool",
          [](const CompressorOptions& o) {
            return std::make_shared<AttentionPoolCompressor>(o, /*scaled=*/false);
          },
          KindOptionsUsed{},
          pool_flops,
          /*needs_block=*/false,
          /*affine_input_flops=*/nullptr};
}

CompressorKind scaled_attention_pool() {
  return {"scaled_attention_pool",
          [](const CompressorOptions& o) {
            return std::make_shared<AttentionPoolCompressor>(o, /*scaled=*/true);
          },
          KindOptionsUsed{},
          pool_flops,
          /*needs_block=*/false,
          /*affine_input_flops=*/nullptr};
}

}  // namespace kvc::kinds
