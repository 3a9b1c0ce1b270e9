// The gradients of K and V of softmax(alpha q k^T) v in one pass on CUDA bf16 tensor cores, from
// the probabilities the forward kept: no (m, s) gradient buffer, and P read once instead of the
// five passes of the GEMM / softmax-backward / GEMM composition. The attention over compressed
// blocks needs exactly these two (its queries are data).
#pragma once

#include <cstdint>

namespace kvc::kernels::cuda {

// Whether the fused pass takes these sizes: an sm_80 or newer GPU, d = e in {64, 128}, and s a
// multiple of 4 (whole 16-byte rows of P).
bool attention_backward_kv_fits(int64_t s, int64_t d, int64_t e);

// All float32, contiguous: q (batch, m, d); v (batch, s, d), 8-byte aligned; p (batch, m, s) the
// forward's probabilities (masked keys 0), 16-byte aligned; y (batch, m, d) the forward's output
// and gy its gradient. gk = alpha dS^T q and gv = P^T gy (batch, s, d), written or (acc_*) added
// to, with dS = P (gy v^T - rowsum(gy y)); either may be null (not wanted). q, gy and P are rounded
// to bf16 for the products, whose sums stay float32.
struct AttentionBackwardArgs {
  const float* q = nullptr;
  const float* v = nullptr;
  const float* p = nullptr;
  const float* y = nullptr;
  const float* gy = nullptr;
  int64_t batch = 0, m = 0, s = 0, d = 0;
  float alpha = 1.0f;
};
void attention_backward_kv(const AttentionBackwardArgs& args, float* gk, float* gv, bool acc_k,
                           bool acc_v);

}  // namespace kvc::kernels::cuda
