// Attention over keys that train (the attention over compressed blocks) on CUDA bf16 tensor
// cores: a flash forward that keeps each row's log-sum-exp instead of the (m, s) probabilities,
// and one backward pass for the gradients of K and V that recomputes the probabilities from it.
// No (m, s) buffer either way; the queries get no gradient (they are data here).
#pragma once

#include <cstdint>

namespace kvc::kernels::cuda {

// Whether the pair takes these sizes: an sm_80 or newer GPU and d = e in {64, 128}.
bool attention_kv_fused_fits(int64_t d, int64_t e);

// out (batch, m, d) = softmax(alpha q k^T) v as attention_forward's (kernels/attention.h), on bf16
// tensor cores, and lse (batch * m) every row's log-sum-exp of its scores in log2 units:
// log2 sum_j 2^(alpha log2(e) q k_j) over the keys it sees, with q and k rounded to bf16 as the
// product reads them (+inf for a row that sees no key; its output is 0). All float32, contiguous,
// 16-byte aligned: q (batch, m, d), k and v (batch, s, d). visible: null, or per query row the
// number of keys it sees, in [0, s].
void attention_forward_lse(const float* q, const float* k, const float* v, float* out, float* lse,
                           int64_t batch, int64_t m, int64_t s, int64_t d, double alpha,
                           const int32_t* visible);

// All float32, contiguous: q (batch, m, d); k and v (batch, s, d), 8-byte aligned; lse, y (the
// forward's output) and visible as attention_forward_lse gave and took them; gy (batch, m, d) the
// output's gradient. gk = alpha dS^T q and gv = P^T gy (batch, s, d), written or (acc_*) added to,
// with P = 2^(alpha log2(e) q k^T - lse) recomputed and dS = P (gy v^T - rowsum(gy y)); either may
// be null (not wanted). q, k, v, gy and P are rounded to bf16 for the products (q scaled to log2
// units first, as the forward), whose sums stay float32.
struct AttentionBackwardArgs {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  const float* lse = nullptr;
  const float* y = nullptr;
  const float* gy = nullptr;
  const int32_t* visible = nullptr;
  int64_t batch = 0, m = 0, s = 0, d = 0;
  double alpha = 1.0;
};
void attention_backward_kv(const AttentionBackwardArgs& args, float* gk, float* gv, bool acc_k,
                           bool acc_v);

}  // namespace kvc::kernels::cuda
