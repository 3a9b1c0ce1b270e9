// safetensors export of a checkpoint's parameters (`kvcompress export`): the /params tensors
// under the same keys, float32 little-endian, behind the format's JSON header.
#pragma once

#include <map>
#include <string>

#include "train/checkpoint.h"

namespace kvc::train {

// The whole file: an 8-byte little-endian header length N, N bytes of JSON (padded with spaces
// to a multiple of 8 so the data starts aligned) mapping each key to {"dtype": "F32", "shape",
// "data_offsets": [begin, end)} relative to the data that follows, plus "__metadata__" (string
// values only, as the format asks). Tensors are laid out in key order, back to back. Throws
// kvc::Error for an undefined tensor, a key the format cannot hold ("" or "__metadata__"), or a
// repeated key.
std::string safetensors_bytes(const NamedTensors& tensors,
                              const std::map<std::string, std::string>& metadata);

// Reads `checkpoint` (weights only) and writes its /params to `out` atomically, with the model
// and shape attributes (compressor, heads, dim_head, block, ...) as metadata, as text. An existing
// `out` is refused unless `overwrite`. Returns the number of tensors written.
size_t export_safetensors(const std::string& checkpoint, const std::string& out, bool overwrite);

}  // namespace kvc::train
