// `mlp` (NSA's default): a two-layer MLP shared by the heads over each flattened block.
#include <cmath>
#include <memory>
#include <vector>

#include "core/ops.h"
#include "nn/kinds/kind_util.h"
#include "nn/kinds/kinds.h"

namespace kvc::kinds {

namespace {

// `mlp` (NSA's default): (b, h, w, n*d) -> Linear(I -> H), ReLU, Linear(H -> d), shared by heads.
class MlpCompressor : public Compressor {
 public:
  explicit MlpCompressor(const CompressorOptions& options);
  Tensor forward(const Tensor& x) override;  // (b, h, w, n, d) -> (b, h, w, d)
  Tensor compress_sequence(const Tensor& seq, const Tensor& positions) override;

 private:
  std::shared_ptr<Sequential> net_;
  std::shared_ptr<Linear> first_;   // net_'s layer 0
  std::shared_ptr<Linear> second_;  // net_'s layer 2
};

MlpCompressor::MlpCompressor(const CompressorOptions& o) : Compressor(o) {
  ParamInit init = init_of(o);
  const int64_t in = o.block * o.dim_head, hidden = hidden_of(o);
  net_ = register_module("net", std::make_shared<Sequential>());
  first_ = net_->add(std::make_shared<Linear>(LinearOptions(in, hidden), init));
  net_->add(std::make_shared<ReLU>());
  second_ = net_->add(std::make_shared<Linear>(LinearOptions(hidden, o.dim_head), init));
}

Tensor MlpCompressor::forward(const Tensor& x) { return (*net_)(flatten_block(x)); }

// The same over a sequence's blocks, the positions through the first Linear apart
// (blocks_apart): backward skips the first layer's input gradient, the largest GEMM there is.
Tensor MlpCompressor::compress_sequence(const Tensor& seq, const Tensor& positions) {
  const BlocksApart in = blocks_apart(seq, positions, options_);
  return two_layer_mlp(flatten_block(in.windows), first_->weight(), first_->bias(),
                       Activation::relu, second_->weight(), second_->bias(),
                       flatten_block(in.positions));
}

}  // namespace

CompressorKind mlp() {
  return {"mlp",
          [](const CompressorOptions& o) { return std::make_shared<MlpCompressor>(o); },
          KindOptionsUsed{/*expand=*/true},
          mlp_flops,
          /*needs_block=*/true,
          mlp_first_layer_flops};
}

}  // namespace kvc::kinds
