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

// 'b h w n d -> b h w (n d)': a view, no copy.
Tensor flatten_block(const Tensor& x) {  // x (b, h, w, n, d) -> (b, h, w, n*d)
  return reshape(x, {x.size(0), x.size(1), x.size(2), x.size(3) * x.size(4)});
}

}  // namespace kvc::kinds
