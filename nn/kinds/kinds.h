// The built-in compressor kinds of SPEC section 3, one file each; the registry lists them.
#pragma once

#include "nn/compressor.h"

namespace kvc::kinds {

CompressorKind conv();
CompressorKind efficient_conv();
CompressorKind attention_pool();
CompressorKind scaled_attention_pool();
CompressorKind grouped_mlp();
CompressorKind enhanced_mlp();
CompressorKind mlp();

}  // namespace kvc::kinds
