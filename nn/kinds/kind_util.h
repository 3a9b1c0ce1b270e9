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

// 'b h w n d -> b h w (n d)': a view, no copy. x (b, h, w, n, d) -> (b, h, w, n*d).
Tensor flatten_block(const Tensor& x);

}  // namespace kvc::kinds
