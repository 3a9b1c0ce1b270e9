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

// A grouped Conv1d with kernel == stride (groups = heads), computed as mix without moving any
// activation. SPEC section 3 rearranges x to channels, b h w n d -> b (h d) (w n), convolves and
// rearranges back (two copies of x each way, forward and backward). With kernel == stride each
// output position reads one window of k taps, so on the layout (b, heads, windows, k*c_in), the
// taps of a window flattened tap-major (x itself, viewed),
//   y[b, g, t, o] = sum_{j, i} x[b, g, t, j*c_in + i] W[g*c_out + o, i, j] + bias[g*c_out + o],
// which is mix with W'[g, j*c_in + i, o] = W[g*c_out + o, i, j] and bias viewed (heads, c_out).
// Only the weight is permuted (c_out*c_in*k per head), on the tape, so conv.weight and conv.bias
// get their gradients. x (b, heads, windows, k*c_in) -> (b, heads, windows, c_out).
Tensor conv_as_mix(const Tensor& x, const Conv1d& conv) {
  const Tensor& w = conv.weight();  // (heads*c_out, c_in, k)
  const int64_t g = conv.groups(), c_out = w.size(0) / g, c_in = w.size(1), k = w.size(2);
  const Tensor w_mix =
      reshape(permute(reshape(w, {g, c_out, c_in, k}), {0, 3, 2, 1}), {g, k * c_in, c_out});
  return mix(x, w_mix, reshape(conv.bias(), {g, c_out}));
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

// SPEC: Conv1d(h*d -> h*d, kernel n, stride n, groups h) on b h w n d -> b (h d) (w n); here
// the same sum as mix over each flattened block (conv_as_mix), x only viewed.
Tensor ConvCompressor::forward(const Tensor& x) { return conv_as_mix(flatten_block(x), *conv_); }

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

// SPEC: the rearrange of `conv`, then three grouped Conv1d; each is conv_as_mix on a view.
Tensor EfficientConvCompressor::forward(const Tensor& x) {
  const int64_t b = x.size(0), h = x.size(1), w = x.size(2), n = x.size(3), d = x.size(4);
  // The 1x1 reduction acts on every token: (b, h, w*n, d) -> (b, h, w*n, d/r).
  Tensor y = conv_as_mix(reshape(x, {b, h, w * n, d}), *channel_reduction_);
  // The block conv reads one block per window: (b, h, w, n*d/r) -> (b, h, w, d/r).
  y = conv_as_mix(reshape(y, {b, h, w, n * y.size(3)}), *grouped_conv_);
  return conv_as_mix(y, *channel_expansion_);  // the 1x1 expansion: -> (b, h, w, d)
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

// SPEC: sum(mul(x, softmax(logits (* d^-0.5), 3)), 3); softmax_pool does the scale, the softmax
// over n and the weighted sum in one pass, forward and backward.
Tensor AttentionPoolCompressor::forward(const Tensor& x) {
  const Tensor logits = (*to_attn_logits_)(x);  // (b, h, w, n, d)
  const double alpha = scaled_ ? 1.0 / std::sqrt(static_cast<double>(options_.dim_head)) : 1.0;
  return softmax_pool(x, logits, alpha);
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
