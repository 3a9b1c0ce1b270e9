// `enhanced_mlp`: the block mean plus a scaled per-head MLP with GELU and dropout.
#include <cmath>
#include <memory>
#include <vector>

#include "core/ops.h"
#include "nn/kinds/kind_util.h"
#include "nn/kinds/kinds.h"

namespace kvc::kinds {

namespace {

// `enhanced_mlp` (EnhancedGroupedMLP): mean_n(x) + residual_scale * Dropout(Mix(Dropout(GELU(
// Mix(x))))); keys net.0, net.3, residual_scale (1,) init 1.
class EnhancedMlpCompressor : public Compressor {
 public:
  explicit EnhancedMlpCompressor(const CompressorOptions& options);
  Tensor forward(const Tensor& x) override;  // (b, h, w, n, d) -> (b, h, w, d)
  Tensor compress_sequence(const Tensor& seq, const Tensor& positions) override;

 private:
  std::shared_ptr<Sequential> net_;
  std::shared_ptr<Mix> first_;   // net_'s layer 0
  std::shared_ptr<Mix> second_;  // net_'s layer 3
  Tensor residual_scale_;        // (1)
};

EnhancedMlpCompressor::EnhancedMlpCompressor(const CompressorOptions& o) : Compressor(o) {
  ParamInit init = init_of(o);
  const int64_t in = o.block * o.dim_head, hidden = hidden_of(o);
  net_ = register_module("net", std::make_shared<Sequential>());
  first_ = net_->add(std::make_shared<Mix>(o.heads, in, hidden, init));
  net_->add(std::make_shared<GELU>());
  // Each dropout its own stream, keyed by its index in net.
  net_->add(std::make_shared<Dropout>(o.dropout, derive_seed(o.seed, 2)));
  second_ = net_->add(std::make_shared<Mix>(o.heads, hidden, o.dim_head, init));
  net_->add(std::make_shared<Dropout>(o.dropout, derive_seed(o.seed, 4)));
  residual_scale_ = register_parameter("residual_scale", Tensor::ones({1}, init.options));
}

Tensor EnhancedMlpCompressor::forward(const Tensor& x) {
  // The residual is the block mean: the parameter-free skip of shape (b, h, w, d) (SPEC 3).
  return add(mean(x, 3), mul(residual_scale_, (*net_)(flatten_block(x))));
}

// The same over a sequence's blocks with the positions apart (blocks_apart): the block mean and
// the first Mix are affine, so backward forms no gradient of the (b, h, w, n, d) input.
Tensor EnhancedMlpCompressor::compress_sequence(const Tensor& seq, const Tensor& positions) {
  const BlocksApart in = blocks_apart(seq, positions, options_);
  const Tensor windows = flatten_block(in.windows), shift = flatten_block(in.positions);
  // Dropout off (p = 0 or evaluation): the two Mix layers, GELU, the block mean and the scaled
  // sum as one op.
  if (!(training() && options_.dropout > 0.0)) {
    return two_layer_mlp(windows, first_->weight(), first_->bias(), Activation::gelu,
                         second_->weight(), second_->bias(), shift,
                         {options_.block, residual_scale_});
  }
  const Tensor block_mean = add(mean(in.windows, 3), mean(in.positions, 3));
  const Tensor mlp = net_->forward_from(1, first_->forward_shifted(windows, shift));
  return add(block_mean, mul(residual_scale_, mlp));
}

}  // namespace

CompressorKind enhanced_mlp() {
  return {"enhanced_mlp",
          [](const CompressorOptions& o) { return std::make_shared<EnhancedMlpCompressor>(o); },
          KindOptionsUsed{/*expand=*/true, /*dropout=*/true},
          mlp_flops,
          /*needs_block=*/true,
          mlp_first_layer_flops};
}

}  // namespace kvc::kinds
