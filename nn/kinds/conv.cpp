// `conv`: one grouped Conv1d with kernel = stride = n over each block, as a per-head GEMM.
#include <cmath>
#include <memory>
#include <vector>

#include "core/ops.h"
#include "nn/kinds/kind_util.h"
#include "nn/kinds/kinds.h"

namespace kvc::kinds {

namespace {

// `conv` (ConvLinearCompress): rearrange b h w n d -> b (h d) (w n), one grouped Conv1d with
// kernel = stride = n, rearrange back. Parameters conv.weight (h*d, d, n), conv.bias (h*d).
// Computed without the rearranges, as a per-head GEMM over each flattened block (mix).
class ConvCompressor : public Compressor {
 public:
  explicit ConvCompressor(const CompressorOptions& options);
  Tensor forward(const Tensor& x) override;  // (b, h, w, n, d) -> (b, h, w, d)
  Tensor compress_sequence(const Tensor& seq, const Tensor& positions) override;

 private:
  std::shared_ptr<Conv1d> conv_;
};

ConvCompressor::ConvCompressor(const CompressorOptions& o) : Compressor(o) {
  ParamInit init = init_of(o);
  const int64_t c = o.heads * o.dim_head;
  conv_ = register_module(
      "conv", std::make_shared<Conv1d>(
                  Conv1dOptions(c, c).kernel(o.block).stride(o.block).groups(o.heads), init));
}

// SPEC: Conv1d(h*d -> h*d, kernel n, stride n, groups h) on b h w n d -> b (h d) (w n); here
// the same sum as mix over each flattened block (Conv1d::forward_windows), x only viewed.
Tensor ConvCompressor::forward(const Tensor& x) { return conv_->forward_windows(flatten_block(x)); }

// The same over a sequence's blocks with the positions moved into the bias (blocks_apart): no
// (b, h, w, n, d) tensor is written, forward or backward.
Tensor ConvCompressor::compress_sequence(const Tensor& seq, const Tensor& positions) {
  const BlocksApart in = blocks_apart(seq, positions, options_);
  return conv_->forward_windows_shifted(flatten_block(in.windows), flatten_block(in.positions));
}

// One (n*d -> d) product per block: the whole layer, and affine in the blocks.
double conv_flops(const CompressorOptions& o, double blocks) {
  const double n = o.block, d = o.dim_head;
  return 2 * blocks * (n * d) * d;
}

}  // namespace

CompressorKind conv() {
  return {"conv",
          [](const CompressorOptions& o) { return std::make_shared<ConvCompressor>(o); },
          KindOptionsUsed{},
          conv_flops,
          /*needs_block=*/true,
          conv_flops};
}

}  // namespace kvc::kinds
