// Helpers the compressor kinds share.
#include "nn/kinds/kind_util.h"

#include <cmath>

#include "core/ops.h"

namespace kvc::kinds {

ParamInit init_of(const CompressorOptions& o) {
  ParamInit init;
  init.seed = o.seed;
  init.options = TensorOptions{}.with_dtype(o.dtype).with_device(o.device);
  return init;
}

int64_t hidden_of(const CompressorOptions& o) {
  return static_cast<int64_t>(std::floor(static_cast<double>(o.block * o.dim_head) * o.expand));
}

double mlp_first_layer_flops(const CompressorOptions& o, double blocks) {
  return 2 * blocks * static_cast<double>(o.block * o.dim_head) * static_cast<double>(hidden_of(o));
}

double mlp_flops(const CompressorOptions& o, double blocks) {
  return mlp_first_layer_flops(o, blocks) +
         2 * blocks * static_cast<double>(hidden_of(o)) * static_cast<double>(o.dim_head);
}

// 'b h w n d -> b h w (n d)': a view, no copy.
Tensor flatten_block(const Tensor& x) {  // x (b, h, w, n, d) -> (b, h, w, n*d)
  return reshape(x, {x.size(0), x.size(1), x.size(2), x.size(3) * x.size(4)});
}

BlocksApart blocks_apart(const Tensor& seq, const Tensor& positions, const CompressorOptions& o) {
  const int64_t h = o.heads, n = o.block, d = o.dim_head, stride = o.block_stride();
  KVC_CHECK(seq.defined() && seq.dim() == 4 && seq.size(1) == h && seq.size(3) == d, o.kind,
            ": sequence ", seq.defined() ? seq.shape() : Shape{},
            " does not match the layer's (b, ", h, ", s, ", d, ")");
  KVC_CHECK(seq.size(2) >= n, o.kind, ": seq ", seq.size(2), " of input ", seq.shape(),
            " is shorter than one block of ", n);
  KVC_CHECK(positions.defined() && positions.shape() == Shape({h, n, d}), o.kind, ": positions ",
            positions.defined() ? positions.shape() : Shape{}, " are not (", h, ", ", n, ", ", d,
            ")");
  const int64_t b = seq.size(0), w = o.windows(seq.size(2));
  Tensor windows;
  if (stride == n) {  // blocks tile the kept prefix: a view unless a tail is dropped
    const Tensor kept = seq.size(2) == w * n ? seq : narrow(seq, 2, 0, w * n);
    windows = reshape(kept, {b, h, w, n, d});
  } else {  // overlapping blocks: copied out, with no positions added
    windows = add_block_positions(seq, Tensor::zeros({h, n, d}, seq.options()), n, stride);
  }
  return {windows, reshape(positions, {1, h, 1, n, d})};
}

}  // namespace kvc::kinds
