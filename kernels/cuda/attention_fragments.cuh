// The online softmax of the tensor-core attention kernels (kernels/cuda/attention_tc.cu on
// mma.sync, kernels/cuda/attention_wgmma.cu on Hopper's warpgroup MMA), on accumulator fragments
// in registers. Both instructions give a warp's 16 rows of S and O in the same layout: per 8-column
// tile j, lane 4 g + t holds c0, c1 at row g, columns 8 j + 2t, 8 j + 2t + 1, and c2, c3 at row
// g + 8, same columns. The 4 lanes of a quad hold one row between them.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/attention_split.cuh"
#include "kernels/cuda/mma_sync.cuh"
#include "kernels/math/elementwise.h"

namespace kvc::kernels::cuda::attention_detail {

// Scores of keys this lane's rows may not see become -inf: columns at or past `valid` (past the
// split's end) and, with kMasked, keys at or past limit[h] of row g + 8 h (causal targets).
template <int kSTiles, bool kMasked>
__device__ __forceinline__ void mask_scores(float (&s)[kSTiles][4], int valid, int k0,
                                            const int (&limit)[2]) {
  const int t = threadIdx.x & 3;
  if (valid < kSTiles * 8) {
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) {
      const int col = j * 8 + 2 * t;
      if (col >= valid) s[j][0] = s[j][2] = -INFINITY;
      if (col + 1 >= valid) s[j][1] = s[j][3] = -INFINITY;
    }
  }
  if constexpr (kMasked) {
    // Only a tile that reaches past one of the warp's row limits has keys to hide: with a causal
    // target, a few tiles a split. Behind this warp-uniform test, the per-key selects also no
    // longer make ptxas serialize the TF32 kernels' wgmma (its warning C7515 on the masked
    // instantiations).
    if (__all_sync(0xffffffffu, k0 + kSTiles * 8 <= min(limit[0], limit[1]))) return;
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) {
      const int key = k0 + j * 8 + 2 * t;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (key >= limit[h]) s[j][2 * h] = -INFINITY;
        if (key + 1 >= limit[h]) s[j][2 * h + 1] = -INFINITY;
      }
    }
  }
}

// v[0] = op over v[0, kN) (kN a power of 2) as a pairwise tree: log2(kN) dependent steps where a
// running value takes kN - 1, with the same count of instructions.
template <int kN, typename Op>
__device__ __forceinline__ float pairwise(float* v, Op op) {
  static_assert(kN > 0 && (kN & (kN - 1)) == 0, "a power of 2");
  if constexpr (kN == 1) {
    return v[0];
  } else {
#pragma unroll
    for (int i = 0; i < kN / 2; ++i) v[i] = op(v[i], v[i + kN / 2]);
    return pairwise<kN / 2>(v, op);
  }
}

// One tile of the online softmax for rows g (h = 0) and g + 8 (h = 1): scores (log2 units) become
// exp2(s - running max), the running max and this lane's share of the row sum move on, and
// corr[h] is the factor that rescales O to the new max (O itself is left alone, so that the
// softmax may run while a product still accumulates into O). A row that has seen no key yet
// (masked) keeps its max at -inf and takes 0 as the exponent base, so its weights and sums stay
// zero. The exponentials are the one-instruction ex2.approx.ftz (exp2f compiles to ex2.approx
// without ftz, which takes more to keep subnormal results): as accurate (2 ulp), with 0 where a
// weight would be below 2^-126 of its row's largest, which no sum of them can tell. The lane's max
// and sum over its 2 kSTiles values of a row are pairwise trees (with two warps a scheduler, the
// chain of a running value was latency the warps could not hide).
template <int kSTiles, bool kMasked>
__device__ __forceinline__ void softmax_scores(float (&s)[kSTiles][4], float (&m_run)[2],
                                               float (&l_run)[2], float (&corr)[2]) {
  const auto max_op = [](float a, float b) { return fmaxf(a, b); };
  const auto add_op = [](float a, float b) { return a + b; };
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float v[2 * kSTiles];
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) v[2 * j] = s[j][2 * h], v[2 * j + 1] = s[j][2 * h + 1];
    float mx = pairwise<2 * kSTiles>(v, max_op);
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    // Finite unless masked: every tile has a valid key.
    const float m_seen = fmaxf(m_run[h], mx);
    const float m_new = kMasked && m_seen == -INFINITY ? 0.f : m_seen;
    corr[h] = math::approx_exp2(m_run[h] - m_new);
    m_run[h] = m_seen;
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) {
      v[2 * j] = s[j][2 * h] = math::approx_exp2(s[j][2 * h] - m_new);
      v[2 * j + 1] = s[j][2 * h + 1] = math::approx_exp2(s[j][2 * h + 1] - m_new);
    }
    l_run[h] = l_run[h] * corr[h] + pairwise<2 * kSTiles>(v, add_op);
  }
}

// O's rows g (h = 0) and g + 8 (h = 1) times corr[h] (softmax_scores). Skipped where no row of
// the warp has a new max (every corr exactly 1, o * 1 = o): past the first tiles of a long row
// that is most tiles, and at d = 128 the 64 multiplies a thread are an eighth of a tile's
// instructions in the warpgroup kernel (ncu).
template <int kOTiles>
__device__ __forceinline__ void rescale_rows(float (&o)[kOTiles][4], const float (&corr)[2]) {
  if (!__any_sync(0xffffffffu, corr[0] != 1.f || corr[1] != 1.f)) return;
#pragma unroll
  for (int j = 0; j < kOTiles; ++j) {
    o[j][0] *= corr[0];
    o[j][1] *= corr[0];
    o[j][2] *= corr[1];
    o[j][3] *= corr[1];
  }
}

// softmax_scores and rescale_rows at once, for kernels whose products are synchronous.
template <int kSTiles, int kOTiles, bool kMasked>
__device__ __forceinline__ void softmax_tile(float (&s)[kSTiles][4], float (&o)[kOTiles][4],
                                             float (&m_run)[2], float (&l_run)[2]) {
  float corr[2];
  softmax_scores<kSTiles, kMasked>(s, m_run, l_run, corr);
  rescale_rows<kOTiles>(o, corr);
}

// P of 16 keys (S tiles 2 kk and 2 kk + 1) as the bf16 A fragment of P V: the C fragments of two
// adjacent 8-key tiles are exactly the A fragment of a k16 product.
template <int kSTiles>
__device__ __forceinline__ void p_fragment(uint32_t (&a)[4], const float (&s)[kSTiles][4], int kk) {
  a[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
  a[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
  a[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
  a[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// P of 8 keys (S tile kk) as the TF32 A fragment of P V. C is not the TF32 A layout: a lane
// holds keys 2t, 2t + 1 of its rows where A has columns t, t + 4, so A column t stands for key 2t
// and column t + 4 for key 2t + 1 (c0 -> a0, c2 -> a1, c1 -> a2, c3 -> a3), and the B operand
// (V) must list the tile's keys in that order: 0, 2, 4, 6, 1, 3, 5, 7. A sum does not care about
// the order of its terms. With `lo`, the remainders go there (split_tf32_operand: the split
// operands of float32 math).
template <int kSTiles>
__device__ __forceinline__ void p_fragment_tf32(uint32_t (&a)[4], const float (&s)[kSTiles][4],
                                                int kk, uint32_t (*lo)[4] = nullptr) {
  const float x[4] = {s[kk][0], s[kk][2], s[kk][1], s[kk][3]};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if (lo) {
      const float2 parts = split_tf32_operand(x[i]);
      a[i] = __float_as_uint(parts.x);
      (*lo)[i] = __float_as_uint(parts.y);
    } else {
      a[i] = to_tf32(x[i]);
    }
  }
}

// Q rows r0 = row0 + g and r0 + 8 (zero past nq), scaled to log2 units, as the TF32 A fragments
// of S = Q K^T, one per k8 step of the head size; with `lo`, the remainders, rounded to TF32 too
// (split_tf32: q is split once a CTA, so the exact form costs little here, unlike P's per tile).
template <int D>
__device__ __forceinline__ void q_fragments_tf32(uint32_t (&qa)[D / 8][4], const float* q,
                                                 int64_t bh, int row0, int nq, float scale_log2,
                                                 uint32_t (*lo)[D / 8][4] = nullptr) {
  const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  const int r0 = row0 + g, r1 = r0 + 8;
  const float* qr0 = q + (bh * nq + r0) * D;
  const float* qr1 = q + (bh * nq + r1) * D;
  const bool ok0 = r0 < nq, ok1 = r1 < nq;
#pragma unroll
  for (int s = 0; s < D / 8; ++s) {
    const int c = s * 8 + t;
    const float x[4] = {ok0 ? qr0[c] * scale_log2 : 0.f, ok1 ? qr1[c] * scale_log2 : 0.f,
                        ok0 ? qr0[c + 4] * scale_log2 : 0.f, ok1 ? qr1[c + 4] * scale_log2 : 0.f};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 parts = split_tf32(x[i]);
      qa[s][i] = __float_as_uint(parts.x);
      if (lo) (*lo)[s][i] = __float_as_uint(parts.y);
    }
  }
}

// Q rows r0 = row0 + g and r0 + 8 (zero past nq), scaled to log2 units, as the bf16 A fragments of
// S = Q K^T, one per k16 step of the head size.
template <int D>
__device__ __forceinline__ void q_fragments(uint32_t (&qa)[D / 16][4], const float* q, int64_t bh,
                                            int row0, int nq, float scale_log2) {
  const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  const int r0 = row0 + g, r1 = r0 + 8;
  const float* qr0 = q + (bh * nq + r0) * D;
  const float* qr1 = q + (bh * nq + r1) * D;
  const bool ok0 = r0 < nq, ok1 = r1 < nq;
  const float2 zero = make_float2(0.f, 0.f);
#pragma unroll
  for (int s = 0; s < D / 16; ++s) {
    const int c = s * 16 + 2 * t;
    const float2 x0 = ok0 ? *reinterpret_cast<const float2*>(qr0 + c) : zero;
    const float2 x1 = ok1 ? *reinterpret_cast<const float2*>(qr1 + c) : zero;
    const float2 x2 = ok0 ? *reinterpret_cast<const float2*>(qr0 + c + 8) : zero;
    const float2 x3 = ok1 ? *reinterpret_cast<const float2*>(qr1 + c + 8) : zero;
    qa[s][0] = pack_bf16(x0.x * scale_log2, x0.y * scale_log2);
    qa[s][1] = pack_bf16(x1.x * scale_log2, x1.y * scale_log2);
    qa[s][2] = pack_bf16(x2.x * scale_log2, x2.y * scale_log2);
    qa[s][3] = pack_bf16(x3.x * scale_log2, x3.y * scale_log2);
  }
}

// Keys rows row0 + g + 8 h may see: visible[row] with kMasked, else all (rows past nq: all, their
// output is dropped).
template <bool kMasked>
__device__ __forceinline__ void row_limits(int (&limit)[2], const int32_t* visible, int64_t bh,
                                           int row0, int nq, int seq) {
  const int g = (threadIdx.x & 31) >> 2;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = row0 + g + 8 * h;
    limit[h] = kMasked && row < nq ? visible[bh * nq + row] : seq;
  }
}

// The largest visible-key count of the CTA's rows [row0, row0 + rows) (causal targets: the CTA
// stops there). Every thread of the CTA calls it.
__device__ __forceinline__ int cta_key_limit(const int32_t* visible, int64_t bh, int row0, int rows,
                                             int nq) {
  __shared__ int cta_limit;
  if (threadIdx.x == 0) cta_limit = 0;
  __syncthreads();
  const int r = row0 + static_cast<int>(threadIdx.x);
  if (static_cast<int>(threadIdx.x) < rows && r < nq) atomicMax(&cta_limit, visible[bh * nq + r]);
  __syncthreads();
  return cta_limit;
}

// Writes this lane's columns of rows row0 + g + 8 h: the output divided by the row sum, or, with
// keys split over CTAs, the split's partial row and (max, sum) (see output_row).
template <int kOTiles>
__device__ __forceinline__ void write_rows(const float (&o)[kOTiles][4], const float (&m_run)[2],
                                           const float (&l_run)[2], const AttentionDest& dest,
                                           int64_t bh, int row0, int nq, int64_t rows) {
  const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float l = l_run[h];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int row = row0 + g + 8 * h;
    if (row >= nq) continue;
    const int64_t grow = bh * nq + row;
    const OutputRow dst = output_row(dest, grow, rows, kOTiles * 8, m_run[h], l, t == 0);
#pragma unroll
    for (int j = 0; j < kOTiles; ++j) {
      *reinterpret_cast<float2*>(dst.ptr + j * 8 + 2 * t) =
          make_float2(o[j][2 * h] * dst.scale, o[j][2 * h + 1] * dst.scale);
    }
  }
}

}  // namespace kvc::kernels::cuda::attention_detail
