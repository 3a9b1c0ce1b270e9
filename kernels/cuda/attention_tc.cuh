// The tensor-core path of the attention forward (kernels/cuda/attention_tc.cu), called by
// attention_forward<float> when the math precision is tf32 or bf16.
#pragma once

#include <cstdint>

#include "kernels/precision.h"

namespace kvc::kernels::cuda {

// Head sizes the tensor-core kernel is built for.
inline bool attention_tc_supports(int64_t d) { return d == 32 || d == 64 || d == 128; }

// out = softmax(alpha q k^T) v as attention_forward says, with q, k and v rounded to `precision`
// (tf32 or bf16) for the two matrix products and P rounded likewise before P V; accumulation,
// the running max and the row sums stay FP32. Pointers 16-byte aligned, d supported. visible:
// null, or per query row the number of keys it sees (causal), each in [1, seq].
void attention_forward_tc(const float* q, const float* k, const float* v, float* out,
                          int64_t batch_heads, int64_t nq, int64_t seq, int64_t d, double alpha,
                          MathPrecision precision, const int32_t* visible = nullptr);

}  // namespace kvc::kernels::cuda
