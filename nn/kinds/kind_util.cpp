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

}  // namespace kvc::kinds
