// Helpers the compressor kinds share: parameter init, the MLP hidden width, and block views.
#pragma once

#include <cstdint>

#include "nn/compressor.h"
#include "nn/layers.h"

namespace kvc::kinds {

// The seeded initializer of a kind's parameters, on the options' dtype and device.
ParamInit init_of(const CompressorOptions& o);

// H = floor(n * d * expand), the hidden width of the MLP kinds.
int64_t hidden_of(const CompressorOptions& o);

// FLOPs of the MLP kinds over `blocks` blocks: the first layer (n*d -> H; their registry
// entries' affine_input_flops) and the whole forward (n*d -> H -> d; their forward_flops).
double mlp_first_layer_flops(const CompressorOptions& o, double blocks);
double mlp_flops(const CompressorOptions& o, double blocks);

// 'b h w n d -> b h w (n d)': a view, no copy. x (b, h, w, n, d) -> (b, h, w, n*d).
Tensor flatten_block(const Tensor& x);

// A compressor's input as the blocks of a sequence and the pair's positions apart, for kinds
// whose first layer is affine in it: f(windows + positions) = L(windows) + f(positions). The
// windows (b, h, w, n, d) are data (a view of seq where the blocks tile it), so backward never
// forms a gradient of that size; the positions come as one block per head (1, h, 1, n, d) and
// reach their gradient through f(positions). Checks seq (b, h, s, d) and positions (h, n, d).
struct BlocksApart {
  Tensor windows;
  Tensor positions;
};
BlocksApart blocks_apart(const Tensor& seq, const Tensor& positions, const CompressorOptions& o);

}  // namespace kvc::kinds
