// `efficient_conv`: grouped 1x1 reduction, block conv and 1x1 expansion, each a per-head GEMM.
#include <cmath>
#include <memory>
#include <vector>

#include "core/ops.h"
#include "nn/kinds/kind_util.h"
#include "nn/kinds/kinds.h"

namespace kvc::kinds {

namespace {

// `efficient_conv` (EfficientConvLinearCompress): 1x1 reduction h*d -> h*d/r, block conv,
// 1x1 expansion h*d/r -> h*d, all grouped by head; each a per-head GEMM on a view of x (mix).
class EfficientConvCompressor : public Compressor {
 public:
  explicit EfficientConvCompressor(const CompressorOptions& options);
  Tensor forward(const Tensor& x) override;  // (b, h, w, n, d) -> (b, h, w, d)
  Tensor compress_sequence(const Tensor& seq, const Tensor& positions) override;

 private:
  std::shared_ptr<Conv1d> channel_reduction_, grouped_conv_, channel_expansion_;
};

EfficientConvCompressor::EfficientConvCompressor(const CompressorOptions& o) : Compressor(o) {
  ParamInit init = init_of(o);
  const int64_t c = o.heads * o.dim_head, r = c / o.reduction;
  channel_reduction_ = register_module(
      "channel_reduction", std::make_shared<Conv1d>(Conv1dOptions(c, r).groups(o.heads), init));
  grouped_conv_ = register_module(
      "grouped_conv",
      std::make_shared<Conv1d>(Conv1dOptions(r, r).kernel(o.block).stride(o.block).groups(o.heads),
                               init));
  channel_expansion_ = register_module(
      "channel_expansion", std::make_shared<Conv1d>(Conv1dOptions(r, c).groups(o.heads), init));
}

// SPEC: the rearrange of `conv`, then three grouped Conv1d; each is Conv1d::forward_windows on a
// view.
Tensor EfficientConvCompressor::forward(const Tensor& x) {
  const int64_t b = x.size(0), h = x.size(1), w = x.size(2), n = x.size(3), d = x.size(4);
  // The 1x1 reduction acts on every token: (b, h, w*n, d) -> (b, h, w*n, d/r).
  Tensor y = channel_reduction_->forward_windows(reshape(x, {b, h, w * n, d}));
  // The block conv reads one block per window: (b, h, w, n*d/r) -> (b, h, w, d/r).
  y = grouped_conv_->forward_windows(reshape(y, {b, h, w, n * y.size(3)}));
  return channel_expansion_->forward_windows(y);  // the 1x1 expansion: -> (b, h, w, d)
}

// The same over a sequence's blocks with the positions apart (blocks_apart). The 1x1 reduction
// is affine per token: R(x + p) = W x + R(p), R(p) one (h, n, d/r) tensor for every window. The
// block conv is linear in its input, so R(p) passes through it once per head as its bias
// (Conv1d::forward_windows_shifted). No (b, h, w, n, d) tensor is written, and backward forms no
// gradient of the blocks: the reduction's input gradient and the blocks' copy are gone.
Tensor EfficientConvCompressor::compress_sequence(const Tensor& seq, const Tensor& positions) {
  const BlocksApart in = blocks_apart(seq, positions, options_);
  const int64_t b = in.windows.size(0), h = in.windows.size(1), w = in.windows.size(2);
  const int64_t n = in.windows.size(3), d = in.windows.size(4);
  const Tensor reduced = channel_reduction_->forward_windows_linear(
      reshape(in.windows, {b, h, w * n, d}));  // W x: (b, h, w*n, d/r)
  const Tensor reduced_positions =
      channel_reduction_->forward_windows(reshape(in.positions, {1, h, n, d}));  // R(p)
  const int64_t dr = reduced.size(3);
  const Tensor y = grouped_conv_->forward_windows_shifted(
      reshape(reduced, {b, h, w, n * dr}), reshape(reduced_positions, {1, h, 1, n * dr}));
  return channel_expansion_->forward_windows(y);
}

// The 1x1 reduction (d -> d/r per token): the first layer, affine in the blocks.
double reduction_flops(const CompressorOptions& o, double blocks) {
  const double n = o.block, d = o.dim_head, dr = d / o.reduction;
  return 2 * blocks * n * d * dr;
}

// The reduction, the block conv (n*d/r -> d/r) and the 1x1 expansion (d/r -> d).
double efficient_conv_flops(const CompressorOptions& o, double blocks) {
  const double n = o.block, d = o.dim_head, dr = d / o.reduction;
  return reduction_flops(o, blocks) + 2 * blocks * n * dr * dr + 2 * blocks * dr * d;
}

}  // namespace

CompressorKind efficient_conv() {
  return {"efficient_conv",
          [](const CompressorOptions& o) { return std::make_shared<EfficientConvCompressor>(o); },
          KindOptionsUsed{/*expand=*/false, /*dropout=*/false, /*reduction=*/true},
          efficient_conv_flops,
          /*needs_block=*/true,
          reduction_flops};
}

}  // namespace kvc::kinds
