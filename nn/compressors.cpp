// The seven compressors: construction with SPEC section 3's names and inits, and their forwards.
#include "nn/compressors.h"

#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"

namespace kvc {

namespace {

ParamInit init_of(const CompressorOptions& o) {
  ParamInit init;
  init.seed = o.seed;
  init.options = TensorOptions{}.with_dtype(o.dtype).with_device(o.device);
  return init;
}

int64_t hidden_of(const CompressorOptions& o) {
  return static_cast<int64_t>(std::floor(static_cast<double>(o.block * o.dim_head) * o.expand));
}

// einops 'b h w n d -> b (h d) (w n)': channels grouped by head for the grouped Conv1d.
Tensor blocks_to_channels(const Tensor& x) {  // x (b, h, w, n, d) -> (b, h*d, w*n)
  const int64_t b = x.size(0), h = x.size(1), w = x.size(2), n = x.size(3), d = x.size(4);
  return reshape(permute(x, {0, 1, 4, 2, 3}), {b, h * d, w * n});
}

// einops 'b (h d) w -> b h w d'.
Tensor channels_to_heads(const Tensor& y, int64_t h) {  // y (b, h*d, w) -> (b, h, w, d)
  const int64_t b = y.size(0), hd = y.size(1), w = y.size(2);
  return permute(reshape(y, {b, h, hd / h, w}), {0, 1, 3, 2});
}

// 'b h w n d -> b h w (n d)': a view, no copy.
Tensor flatten_block(const Tensor& x) {  // x (b, h, w, n, d) -> (b, h, w, n*d)
  return reshape(x, {x.size(0), x.size(1), x.size(2), x.size(3) * x.size(4)});
}

}  // namespace

// ---- conv -----------------------------------------------------------------------------------

ConvCompressor::ConvCompressor(const CompressorOptions& o) : Compressor(o) {
  ParamInit init = init_of(o);
  const int64_t c = o.heads * o.dim_head;
  conv_ = register_module("conv", std::make_shared<Conv1d>(c, c, o.block, o.block, o.heads, init));
}

Tensor ConvCompressor::forward(const Tensor& x) {
  return channels_to_heads((*conv_)(blocks_to_channels(x)), options_.heads);
}

// ---- efficient_conv -------------------------------------------------------------------------

EfficientConvCompressor::EfficientConvCompressor(const CompressorOptions& o) : Compressor(o) {
  ParamInit init = init_of(o);
  const int64_t c = o.heads * o.dim_head, r = c / o.reduction;
  channel_reduction_ =
      register_module("channel_reduction", std::make_shared<Conv1d>(c, r, 1, 1, o.heads, init));
  grouped_conv_ = register_module("grouped_conv",
                                  std::make_shared<Conv1d>(r, r, o.block, o.block, o.heads, init));
  channel_expansion_ =
      register_module("channel_expansion", std::make_shared<Conv1d>(r, c, 1, 1, o.heads, init));
}

Tensor EfficientConvCompressor::forward(const Tensor& x) {
  Tensor y = (*channel_reduction_)(blocks_to_channels(x));  // (b, h*d/r, w*n)
  y = (*grouped_conv_)(y);                                  // (b, h*d/r, w)
  y = (*channel_expansion_)(y);                             // (b, h*d, w)
  return channels_to_heads(y, options_.heads);
}

// ---- attention_pool, scaled_attention_pool --------------------------------------------------

AttentionPoolCompressor::AttentionPoolCompressor(const CompressorOptions& o, bool scaled)
    : Compressor(o), scaled_(scaled) {
  ParamInit init = init_of(o);
  to_attn_logits_ = register_module("to_attn_logits",
                                    std::make_shared<Linear>(o.dim_head, o.dim_head, init, false));
  // Identity init: at the start the logits are the values themselves.
  std::vector<double> eye(static_cast<size_t>(o.dim_head * o.dim_head), 0.0);
  for (int64_t i = 0; i < o.dim_head; ++i) eye[static_cast<size_t>(i * o.dim_head + i)] = 1.0;
  Tensor weight = to_attn_logits_->named_parameters().front().second;
  weight.copy_from(Tensor::from_vector(eye, {o.dim_head, o.dim_head}, init.options));
}

Tensor AttentionPoolCompressor::forward(const Tensor& x) {
  Tensor logits = (*to_attn_logits_)(x);  // (b, h, w, n, d)
  if (scaled_) logits = scale(logits, 1.0 / std::sqrt(static_cast<double>(options_.dim_head)));
  return sum(mul(x, softmax(logits, 3)), 3);
}

// ---- grouped_mlp ----------------------------------------------------------------------------

GroupedMlpCompressor::GroupedMlpCompressor(const CompressorOptions& o) : Compressor(o) {
  ParamInit init = init_of(o);
  const int64_t in = o.block * o.dim_head, hidden = hidden_of(o);
  net_ = register_module("net", std::make_shared<Sequential>());
  net_->add(std::make_shared<Mix>(o.heads, in, hidden, init));
  net_->add(std::make_shared<ReLU>());
  net_->add(std::make_shared<Mix>(o.heads, hidden, o.dim_head, init));
}

Tensor GroupedMlpCompressor::forward(const Tensor& x) { return (*net_)(flatten_block(x)); }

// ---- enhanced_mlp ---------------------------------------------------------------------------

EnhancedMlpCompressor::EnhancedMlpCompressor(const CompressorOptions& o) : Compressor(o) {
  ParamInit init = init_of(o);
  const int64_t in = o.block * o.dim_head, hidden = hidden_of(o);
  net_ = register_module("net", std::make_shared<Sequential>());
  net_->add(std::make_shared<Mix>(o.heads, in, hidden, init));
  net_->add(std::make_shared<GELU>());
  // Each dropout its own stream, keyed by its index in net.
  net_->add(std::make_shared<Dropout>(o.dropout, derive_seed(o.seed, 2)));
  net_->add(std::make_shared<Mix>(o.heads, hidden, o.dim_head, init));
  net_->add(std::make_shared<Dropout>(o.dropout, derive_seed(o.seed, 4)));
  residual_scale_ = register_parameter("residual_scale", Tensor::ones({1}, init.options));
}

Tensor EnhancedMlpCompressor::forward(const Tensor& x) {
  // The residual is the block mean: the parameter-free skip of shape (b, h, w, d) (SPEC 3).
  return add(mean(x, 3), mul(residual_scale_, (*net_)(flatten_block(x))));
}

// ---- mlp ------------------------------------------------------------------------------------

MlpCompressor::MlpCompressor(const CompressorOptions& o) : Compressor(o) {
  ParamInit init = init_of(o);
  const int64_t in = o.block * o.dim_head, hidden = hidden_of(o);
  net_ = register_module("net", std::make_shared<Sequential>());
  net_->add(std::make_shared<Linear>(in, hidden, init));
  net_->add(std::make_shared<ReLU>());
  net_->add(std::make_shared<Linear>(hidden, o.dim_head, init));
}

Tensor MlpCompressor::forward(const Tensor& x) { return (*net_)(flatten_block(x)); }

}  // namespace kvc
