// The MLP kinds' two layers in one op on CUDA, on cuBLASLt: y = act(x W1 + b1) W2 + b2 per head.
// The first product's epilogue adds the bias and applies ReLU; GELU, whose epilogue in cuBLASLt
// is the tanh approximation and not the exact one, runs as one pass over the hidden activations
// (under bf16, where out <= 128, as an mma.sync second product reads them instead), and the
// backward applies either derivative in one pass after its product. Those activations stay
// in the math precision's operand type: bfloat16 under bf16, so the second product and the weight
// gradients read them without a conversion pass and they take half the memory of float32. Bias
// gradients are sums over the rows in float32. Under bf16 the gradient at the first product's
// output (gy W2^T, the activation's derivative, b1's column sums) is one mma.sync kernel where
// out is a multiple of 16 up to 128 and hidden of 8; for other sizes b1's is a
// ones-vector product over its bfloat16 gradient. Under TF32 the first weight's gradient
// transposes its operands first; with per-head weights that pass also sums b1's gradient, and
// with GELU applies GELU's derivative too. A shift of the rows (the positions of blocks) joins b1
// (one row per head through W1). Its share of W1's gradient is rank one per head. With per-head
// weights it is one more element of the weight-gradient product's reduction: under bf16 the shift
// after each head's rows in x's bf16 copy and the hidden gradient's column sums after its rows
// (the attention target reads that copy of K and V with the extra row); under TF32 one more
// column of both transposed operands. Elsewhere the share is written before the product adds
// onto it (one pass writing W1's size instead of one reading and writing it after). The
// products of the batch indices run side by side on forked streams (see mlp.cu).
// enhanced_mlp's residual (the block mean plus the scaled MLP) is one pass each way beside them.
// The CPU, float64 and other sizes run the composition of core ops (core/ops_fused.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace kvc::kernels::cuda {

enum class MlpActivation { relu, gelu };

// Sizes and float32 inputs, all contiguous. x (b, h, w, in): rows of each head. Weights per head
// as Mix keeps them, w1 (h, in, hidden) and w2 (h, hidden, out), or with shared_weights one pair
// for every head as F.linear keeps it, w1 (hidden, in) and w2 (out, hidden). b1 (h, hidden) or
// (hidden), b2 (h, out) or (out), as the *_per_head flags say.
struct MlpArgs {
  int64_t b = 0, h = 0, w = 0, in = 0, hidden = 0, out = 0;
  bool shared_weights = false, b1_per_head = true, b2_per_head = true;
  MlpActivation act = MlpActivation::relu;
  const float* x = nullptr;
  const float* w1 = nullptr;
  const float* b1 = nullptr;
  const float* w2 = nullptr;
  const float* b2 = nullptr;
  // Optional (h, in): every row of head h reads x + shift[h] (the positions of blocks). The shift
  // moves into the first product's bias, b1 + shift W1 per head, so x itself is never shifted
  // and its gradient is only formed where x needs one.
  const float* shift = nullptr;
  // Optional residual (enhanced_mlp's): y = mean_j(x_j + shift_j) + scale * MLP, x_j the
  // residual_block groups of out values of each row (in = residual_block out); residual_scale
  // one float32 in device memory (read there: a captured graph sees each step's value).
  int64_t residual_block = 0;
  const float* residual_scale = nullptr;

  // Heads that own a weight pair: one when every head shares it.
  int64_t weight_heads() const { return shared_weights ? 1 : h; }
};

// What the backward reads: ReLU's output or GELU's input (GELU's output is recomputed from it
// there, rather than kept beside it), and the operands already rounded to bfloat16 (device
// memory, released with it).
struct MlpSaved;

// y (b, h, w, out). With `save` the state for mlp_backward comes back, else nullptr. The products
// round their operands as the math precision says (kernels/precision.h).
std::shared_ptr<MlpSaved> mlp_forward(const MlpArgs& args, float* y, bool save);

// Gradient outputs (null: not wanted), each written or, with its acc flag, added to.
struct MlpGrads {
  float* x = nullptr;
  float* w1 = nullptr;
  float* b1 = nullptr;
  float* w2 = nullptr;
  float* b2 = nullptr;
  float* shift = nullptr;
  float* residual_scale = nullptr;
  bool acc_x = false, acc_w1 = false, acc_b1 = false, acc_w2 = false, acc_b2 = false;
  bool acc_shift = false, acc_residual_scale = false;
};

// From gy (b, h, w, out); `args` as in the forward that returned `saved`.
void mlp_backward(const MlpArgs& args, const MlpSaved& saved, const float* gy,
                  const MlpGrads& grads);

// Under TF32 the first weight's gradient transposes its operands into scratch (see mlp.cu), a
// chunk at a time of at most `bytes` per operand (0: the default, 64 MiB). Tests set it small to
// run several chunks.
void set_tf32_weight_grad_chunk_bytes(size_t bytes);

}  // namespace kvc::kernels::cuda
