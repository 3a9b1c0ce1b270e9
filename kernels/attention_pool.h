// The attention pools' whole layer in one pass on CUDA tensor cores: blocks of a sequence plus
// their positions, logits = x W^T, the softmax over each block and the weighted sum, forward and
// backward, without writing the (b, h, w, n, d) blocks or logits anywhere. The products round
// their operands as the math precision says (tf32, bf16; fp32 splits each float32 operand into
// two TF32 parts, three products, about float32's accuracy). The CPU and float64 run the
// composition add_block_positions, linear, softmax_pool instead.
#pragma once

#include <cstdint>

namespace kvc::kernels::cuda {

// Whether the fused kernels take blocks of n tokens of width d on this GPU (sm_80 or newer; n in
// {16, 32, 64}, d in {64, 128}).
bool attention_pool_fits(int64_t n, int64_t d);

// Sizes and inputs, all float32, contiguous, 16-byte aligned: seq (b, h, s, d); positions
// (h, n, d); weight (d, d) (out, in); window i of a head covers tokens [i * stride,
// i * stride + n), w = (s - n) / stride + 1 of them. Per window, x = seq rows + positions,
// a = softmax over the n rows of alpha * x W^T (per column), y = sum over rows of a * x.
struct AttentionPoolArgs {
  const float* seq = nullptr;
  const float* positions = nullptr;
  const float* weight = nullptr;
  int64_t b = 0, h = 0, s = 0, n = 0, d = 0, stride = 0;
  float alpha = 1.0f;
};

// y (b, h, w, d).
void attention_pool_forward(const AttentionPoolArgs& args, float* y);

// From gy (b, h, w, d): g_positions (h, n, d) = the sum over b and w of dL/dx, g_weight (d, d)
// = dL/dW, each written or (acc_*) added to; either may be null (not wanted). The sums run in a
// fixed order: the same inputs give the same bits.
void attention_pool_backward(const AttentionPoolArgs& args, const float* gy, float* g_positions,
                             float* g_weight, bool acc_positions, bool acc_weight);

}  // namespace kvc::kernels::cuda
