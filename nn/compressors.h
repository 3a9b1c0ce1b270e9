// The seven compressor layers of SPEC section 3, each (b, h, w, n, d) -> (b, h, w, d).
#pragma once

#include <memory>

#include "nn/compressor.h"
#include "nn/layers.h"

namespace kvc {

// `conv` (ConvLinearCompress): rearrange b h w n d -> b (h d) (w n), one grouped Conv1d with
// kernel = stride = n, rearrange back. Parameters conv.weight (h*d, d, n), conv.bias (h*d).
// Computed without the rearranges, as a per-head GEMM over each flattened block (mix).
class ConvCompressor : public Compressor {
 public:
  explicit ConvCompressor(const CompressorOptions& options);
  Tensor forward(const Tensor& x) override;  // (b, h, w, n, d) -> (b, h, w, d)

 private:
  std::shared_ptr<Conv1d> conv_;
};

// `efficient_conv` (EfficientConvLinearCompress): 1x1 reduction h*d -> h*d/r, block conv,
// 1x1 expansion h*d/r -> h*d, all grouped by head; each a per-head GEMM on a view of x (mix).
class EfficientConvCompressor : public Compressor {
 public:
  explicit EfficientConvCompressor(const CompressorOptions& options);
  Tensor forward(const Tensor& x) override;  // (b, h, w, n, d) -> (b, h, w, d)

 private:
  std::shared_ptr<Conv1d> channel_reduction_, grouped_conv_, channel_expansion_;
};

// `attention_pool` / `scaled_attention_pool`: logits = x W^T (W (d, d) shared by heads, init
// identity), times d^-0.5 when scaled; softmax over n; y = sum_n x * softmax.
class AttentionPoolCompressor : public Compressor {
 public:
  AttentionPoolCompressor(const CompressorOptions& options, bool scaled);
  Tensor forward(const Tensor& x) override;  // (b, h, w, n, d) -> (b, h, w, d)
  bool needs_block() const override { return false; }

 private:
  bool scaled_;
  std::shared_ptr<Linear> to_attn_logits_;  // weight (d, d), no bias
};

// `grouped_mlp` (GroupedMLP): (b, h, w, n*d) -> Mix(I -> H), ReLU, Mix(H -> d); keys net.0, net.2.
class GroupedMlpCompressor : public Compressor {
 public:
  explicit GroupedMlpCompressor(const CompressorOptions& options);
  Tensor forward(const Tensor& x) override;  // (b, h, w, n, d) -> (b, h, w, d)

 private:
  std::shared_ptr<Sequential> net_;
};

// `enhanced_mlp` (EnhancedGroupedMLP): mean_n(x) + residual_scale * Dropout(Mix(Dropout(GELU(
// Mix(x))))); keys net.0, net.3, residual_scale (1,) init 1.
class EnhancedMlpCompressor : public Compressor {
 public:
  explicit EnhancedMlpCompressor(const CompressorOptions& options);
  Tensor forward(const Tensor& x) override;  // (b, h, w, n, d) -> (b, h, w, d)

 private:
  std::shared_ptr<Sequential> net_;
  Tensor residual_scale_;  // (1)
};

// `mlp` (NSA's default): (b, h, w, n*d) -> Linear(I -> H), ReLU, Linear(H -> d), shared by heads.
class MlpCompressor : public Compressor {
 public:
  explicit MlpCompressor(const CompressorOptions& options);
  Tensor forward(const Tensor& x) override;  // (b, h, w, n, d) -> (b, h, w, d)

 private:
  std::shared_ptr<Sequential> net_;
};

}  // namespace kvc
