// CompressorOptions, the Compressor base (shape checks), the kind registry and make_compressor.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"

namespace kvc {

struct CompressorOptions {
  std::string kind = "conv";                    // a registered kind
  int64_t heads = 2, dim_head = 32, block = 8;  // h, d, n
  double expand = 1.0;    // hidden size H = floor(n * d * expand) of the MLP kinds
  double dropout = 0.0;   // enhanced_mlp's p, in [0, 1)
  int64_t reduction = 2;  // efficient_conv's r; d % r == 0
  uint64_t seed = 0;      // Philox seed of the initial values and the dropout masks
  // The pair's (NSA's compressed branch): blocks start every `stride` tokens (0: block, disjoint),
  // query heads per KV head (GQA), causal distillation (queries carry positions).
  int64_t stride = 0;
  int64_t query_heads = 1;
  bool causal = false;
  DType dtype = DType::f32;
  Device device = Device::cpu();

  // The block stride (stride, or the block when 0) and the blocks of a sequence of seq tokens,
  // w = (seq - n) / stride + 1.
  int64_t block_stride() const { return stride > 0 ? stride : block; }
  int64_t windows(int64_t seq) const { return (seq - block) / block_stride() + 1; }
};

// The options a kind reads besides h, d, n and the seed; validation checks only those.
struct KindOptionsUsed {
  bool expand = false;     // the hidden width H = floor(n * d * expand) >= 1
  bool dropout = false;    // dropout in [0, 1)
  bool reduction = false;  // d % reduction == 0
};

class Compressor;

// One entry of the kind registry: everything that lists, builds, checks or costs a kind reads it.
struct CompressorKind {
  std::string name;
  std::function<std::shared_ptr<Compressor>(const CompressorOptions&)> make;
  KindOptionsUsed uses;
  // Multiply-adds times 2 of one forward over `blocks` blocks of (n, d) each (blocks = b*h*w);
  // the backward is counted as twice the forward (bench).
  std::function<double(const CompressorOptions&, double blocks)> forward_flops;
  // The input's n must equal the block (false: the attention pools pool any n).
  bool needs_block = true;
  // FLOPs (counted as forward_flops) of the forward's first layer when it is affine in the blocks:
  // over a sequence the blocks are data, so that layer's input gradient is never formed
  // (compress_sequence) and the backward has only its weight gradient. Null: none.
  std::function<double(const CompressorOptions&, double blocks)> affine_input_flops;
};

// The registered kinds, the built-in ones first in SPEC section 3's order.
const std::vector<CompressorKind>& compressor_registry();
// Their names, in the same order.
std::vector<std::string> compressor_kinds();
// The entry of `name`; throws kvc::Error naming it and listing the valid kinds when unknown.
const CompressorKind& compressor_kind(const std::string& name);
// Adds a kind (a test's toy, a plug-in); throws when the name is taken or the entry incomplete.
void register_compressor_kind(CompressorKind kind);
// Removes a kind added by register_compressor_kind (tests clean up); built-in kinds stay.
void unregister_compressor_kind(const std::string& name);

// Throws kvc::Error naming the problem and the values for an unknown kind (listing the valid
// ones), non-positive sizes, and, for the options the kind uses, d % r != 0, H < 1, dropout
// outside [0, 1), a non-finite or non-positive expand, a stride outside [1, block] (0 is the
// block), query heads < 1.
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
  // Whether the input's n must equal block (the registry entry's needs_block).
  bool needs_block() const { return needs_block_; }
  // The compressed blocks of a sequence seq (b, h, s, d) with the pair's positions (h, n, d):
  // (*this)(add_block_positions(seq, positions, block, block_stride())). A kind whose first
  // layer fuses with the split overrides it (the attention pools do).
  virtual Tensor compress_sequence(const Tensor& seq, const Tensor& positions);

 protected:
  CompressorOptions options_;

 private:
  bool needs_block_ = true;
};

// The compressor of `options.kind` (its registry entry's factory), initialized from options.seed
// (SPEC section 3's inits), in training mode, on options.dtype / options.device.
std::shared_ptr<Compressor> make_compressor(const CompressorOptions& options);

}  // namespace kvc
