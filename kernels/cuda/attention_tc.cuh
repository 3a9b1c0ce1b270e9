// The tensor-core paths of the attention forward, called by attention_forward<float> when the
// math precision is tf32 or bf16: mma.sync (kernels/cuda/attention_tc.cu, any GPU from sm_80) and,
// on Hopper, warpgroup MMA (kernels/cuda/attention_wgmma.cu: bf16 and TF32 at d 64 and 128).
#pragma once

#include <cstdint>

#include "kernels/precision.h"

namespace kvc::kernels::cuda {

// Head sizes the tensor-core kernel is built for.
inline bool attention_tc_supports(int64_t d) { return d == 32 || d == 64 || d == 128; }

// Which tensor-core kernel runs: the fastest the GPU and the build have, or mma.sync everywhere
// (the tests run both).
enum class TcKernel { fastest, mma_sync };

// out = softmax(alpha q k^T) v as attention_forward says, with q, k and v rounded to `precision`
// (tf32 or bf16) for the two matrix products and P rounded likewise before P V; accumulation,
// the running max and the row sums stay FP32. Pointers 16-byte aligned, d supported. visible:
// null, or per query row the number of keys it sees (causal), in [0, seq]; a row that sees none
// gives 0. lse: null, or (batch_heads * nq) floats that take every row's log-sum-exp in log2
// units, log2 sum_j 2^(alpha log2(e) q k_j) over its visible keys (+inf where it sees none).
void attention_forward_tc(const float* q, const float* k, const float* v, float* out,
                          int64_t batch_heads, int64_t nq, int64_t seq, int64_t d, double alpha,
                          MathPrecision precision, const int32_t* visible = nullptr,
                          TcKernel kernel = TcKernel::fastest, float* lse = nullptr);

// True where the warpgroup-MMA kernel can run: an sm_90 GPU, and a build whose CUDA targets
// include sm_90a (CMAKE_CUDA_ARCHITECTURES 90a, the default).
bool attention_wgmma_available();

// The bf16 forward on warpgroup MMA, for d 64 and 128, from K and V already rounded to bf16 (bits
// of (batch_heads, seq, d) row-major, each batch-head's keys k_head and v_head elements after the
// last's: 0 for seq d); otherwise as attention_forward_tc. Throws where
// attention_wgmma_available() is false.
void attention_forward_wgmma(const float* q, const uint16_t* k16, const uint16_t* v16, float* out,
                             int64_t batch_heads, int64_t nq, int64_t seq, int64_t d, double alpha,
                             const int32_t* visible, float* lse = nullptr, int64_t k_head = 0,
                             int64_t v_head = 0);

// The TF32 forward on warpgroup MMA, for d 64 and 128, from float32 q, k and v: V is written
// transposed (keys contiguous, rounded to TF32) into scratch first, since TF32 warpgroup MMA reads
// both operands K-major; the tensor cores read K truncated to TF32. The batch-heads go a chunk at
// a time so that this scratch takes at most vt_chunk_bytes (one batch-head at least). Otherwise
// as attention_forward_tc. Throws where attention_wgmma_available() is false.
void attention_forward_wgmma_tf32(const float* q, const float* k, const float* v, float* out,
                                  int64_t batch_heads, int64_t nq, int64_t seq, int64_t d,
                                  double alpha, const int32_t* visible, float* lse = nullptr,
                                  int64_t vt_chunk_bytes = int64_t{256} << 20);

// Float32 attention on warpgroup MMA, d 64 and 128: every operand split into a TF32 part and a
// TF32 remainder and each product three TF32 products (about float32's accuracy; the FFMA kernel
// of attention.cu is the reference). K's parts and V^T's go into scratch first (four times V's
// size), a chunk of batch-heads at a time within about scratch_bytes (by default 128 MiB: half of
// what `nsa` would take at once, which keeps the conv kinds' peak there below PyTorch's; one
// batch-head at least, 256 MiB at `long`).
// Otherwise as attention_forward_wgmma_tf32.
void attention_forward_wgmma_split(const float* q, const float* k, const float* v, float* out,
                                   int64_t batch_heads, int64_t nq, int64_t seq, int64_t d,
                                   double alpha, const int32_t* visible, float* lse = nullptr,
                                   int64_t scratch_bytes = int64_t{128} << 20);

// Whether attention_forward<float> in float32 math takes attention_forward_wgmma_split where it
// can (the default) or the FFMA kernel (a test compares the two).
void set_split_fp32_attention(bool on);

}  // namespace kvc::kernels::cuda
