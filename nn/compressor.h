// CompressorOptions, the Compressor base (shape checks) and make_compressor(kind) (SPEC section 3).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"

namespace kvc {

struct CompressorOptions {
  std::string kind = "conv";                    // one of compressor_kinds()
  int64_t heads = 2, dim_head = 32, block = 8;  // h, d, n
  double expand = 1.0;    // hidden size H = floor(n * d * expand) of the MLP kinds
  double dropout = 0.0;   // enhanced_mlp's p, in [0, 1)
  int64_t reduction = 2;  // efficient_conv's r; d % r == 0
  uint64_t seed = 0;      // Philox seed of the initial values and the dropout masks
  DType dtype = DType::f32;
  Device device = Device::cpu();
};

// The seven kinds, in SPEC section 3's order.
const std::vector<std::string>& compressor_kinds();

// Throws kvc::Error naming the problem and the values for an unknown kind (listing the valid
// ones), non-positive sizes, d % r != 0 (efficient_conv), H < 1 (MLP kinds), dropout outside
// [0, 1), a non-finite or non-positive expand.
void validate(const CompressorOptions& options);

// A compressor maps a KV block tensor (b, h, w, n, d) to (b, h, w, d).
class Compressor : public Module {
 public:
  explicit Compressor(const CompressorOptions& options);
  // x must be 5-D (b, h, w, n, d) with the layer's h and d, n equal to its block where the
  // kind needs it, and the parameters' dtype and device; errors name the layer and both shapes.
  void check_input(const Tensor& x) const override;
  std::string name() const override { return options_.kind; }
  const CompressorOptions& options() const { return options_; }
  // Whether the input's n must equal block (all but the attention pools, which pool any n).
  virtual bool needs_block() const { return true; }

 protected:
  CompressorOptions options_;
};

// The compressor of `options.kind`, initialized from options.seed (SPEC section 3's inits),
// in training mode, on options.dtype / options.device.
std::shared_ptr<Compressor> make_compressor(const CompressorOptions& options);

}  // namespace kvc
