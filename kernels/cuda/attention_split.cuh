// Pieces shared by the FP32 and the tensor-core attention kernels: cp.async copies, the choice of
// how many CTAs share one query tile's keys, and the kernel that merges their partial outputs.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace kvc::kernels::cuda::attention_detail {

inline constexpr int kMinTilesPerSplit = 8;  // a split below this spends too much on its partial O
inline constexpr int kMaxSplits = 64;

// 16-byte global -> shared copy that does not pass through registers; `valid` false writes
// zeros (src-size 0) without reading global memory. Before sm_80 it is a plain copy, and the
// commit/wait below are no-ops: the kernels' barriers alone then order everything.
__device__ __forceinline__ void cp_async16(float* dst, const float* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
#else
  *reinterpret_cast<float4*>(dst) =
      valid ? *reinterpret_cast<const float4*>(src) : make_float4(0.f, 0.f, 0.f, 0.f);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Rows [k0, k0 + kRows) of a (seq, D) matrix into a shared tile of the given row stride, by
// kThreadsPerCta threads. Rows at or past `end` are zero: their P is zero, and 0 * garbage could
// be NaN.
template <int D, int kRows, int kStride, int kThreadsPerCta>
__device__ __forceinline__ void load_tile_async(float* dst, const float* src, int k0, int end,
                                                int tid) {
  constexpr int kVec = D / 4;
  static_assert(kRows * kVec % kThreadsPerCta == 0, "whole float4s per thread");
#pragma unroll
  for (int n = 0; n < kRows * kVec / kThreadsPerCta; ++n) {
    const int i = tid + n * kThreadsPerCta;
    const int r = i / kVec, c = (i % kVec) * 4;
    const bool valid = k0 + r < end;
    cp_async16(dst + r * kStride + c, src + (valid ? static_cast<int64_t>(k0 + r) * D + c : 0),
               valid);
  }
}

// A row's log-sum-exp in log2 units from its max m and its sum l of 2^(s - m): +inf for a row that
// saw no key (l = 0), so that 2^(s - lse) is 0 for every score.
__device__ __forceinline__ float row_lse(float m, float l) {
  return l > 0.f ? m + log2f(l) : INFINITY;
}

// out = sum_s 2^(m_s - M) O_s / sum_s 2^(m_s - M) l_s with M = max_s m_s, for every row (of
// batch_heads * nq) and float4 of columns, and lse = M + log2(sum_s 2^(m_s - M) l_s) where wanted.
// A row that sees no key in any split (M = -inf: masked, count 0) gets 0 and lse = +inf.
template <int D>
__global__ void attention_combine_kernel(const float* __restrict__ part_o,
                                         const float2* __restrict__ part_ml,
                                         float* __restrict__ out, float* __restrict__ lse,
                                         int64_t rows, int splits) {
  constexpr int kVec = D / 4;
  KVC_GRID_LOOP(i, rows * kVec) {
    const int64_t row = i / kVec;
    const int c = static_cast<int>(i % kVec) * 4;
    float mx = -INFINITY;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, part_ml[s * rows + row].x);
    float sum = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (mx != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float2 ml = part_ml[s * rows + row];
        const float w = exp2f(ml.x - mx);
        sum = fmaf(w, ml.y, sum);
        const float4 x = *reinterpret_cast<const float4*>(part_o + (s * rows + row) * D + c);
        acc.x = fmaf(w, x.x, acc.x);
        acc.y = fmaf(w, x.y, acc.y);
        acc.z = fmaf(w, x.z, acc.z);
        acc.w = fmaf(w, x.w, acc.w);
      }
    }
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    *reinterpret_cast<float4*>(out + row * D + c) =
        make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
    if (lse && c == 0) lse[row] = row_lse(mx, sum);
  }
}

// Where a forward kernel writes, for rows = batch_heads * nq query rows: the output (rows, d);
// with keys split over CTAs the splits' partial outputs (splits, rows, d) and (max, sum) (splits,
// rows) instead, merged by attention_combine_kernel; and, where lse is not null, every row's
// log-sum-exp of its scores in log2 units (what a backward recomputes the probabilities from).
struct AttentionDest {
  float* out = nullptr;
  float* part_o = nullptr;
  float2* part_ml = nullptr;
  float* lse = nullptr;
};

// Where a CTA writes the output of query row `grow` (of `rows`): with one key split the output
// row itself, scaled by 1 / l (0 for a row that saw no key), and its log-sum-exp m + log2(l)
// (+inf there); otherwise its split's partial row, unscaled, with the row's (running max m, sum l)
// beside it. The lane that `writes_ml` writes the per-row values.
struct OutputRow {
  float* ptr;
  float scale;
};
__device__ __forceinline__ OutputRow output_row(const AttentionDest& dst, int64_t grow,
                                                int64_t rows, int d, float m, float l,
                                                bool writes_ml) {
  if (gridDim.y == 1) {
    if (dst.lse && writes_ml) dst.lse[grow] = row_lse(m, l);
    return {dst.out + grow * d, l > 0.f ? 1.f / l : 0.f};
  }
  const int64_t prow = blockIdx.y * rows + grow;
  if (writes_ml) dst.part_ml[prow] = make_float2(m, l);
  return {dst.part_o + prow * d, 1.f};
}

// Key splits per (batch-head, query tile): the count whose waves of CTAs (time ~ waves / splits)
// fill the GPU best, taking a larger count only for a clear (5%) gain since each split adds a
// partial O to write and combine, and keeping at least kMinTilesPerSplit tiles per split.
inline int choose_splits(int64_t ctas, int64_t tiles, int slots) {
  const int64_t most =
      std::max<int64_t>(1, std::min<int64_t>(kMaxSplits, tiles / kMinTilesPerSplit));
  int best = 1;
  double best_cost = static_cast<double>((ctas + slots - 1) / slots);
  for (int s = 2; s <= most; ++s) {
    const double cost = static_cast<double>((ctas * s + slots - 1) / slots) / s;
    if (cost < 0.95 * best_cost) {
      best = s;
      best_cost = cost;
    }
  }
  return best;
}

// The key range of every (batch-head, query tile) cut into `splits` pieces of `split_tiles` key
// tiles, and the scratch for their partial outputs: (splits, rows, D) O and (splits, rows)
// (max, sum). With one split the kernels write the normalized output directly.
struct KeySplit {
  int splits = 1;
  int64_t split_tiles = 0;
  Scratch scratch;
  float* part_o = nullptr;
  float2* part_ml = nullptr;

  KeySplit(int64_t ctas, int64_t tiles, int slots, int64_t rows, int d)
      : KeySplit(plan(ctas, tiles, slots), tiles, rows, d) {}

  // Merges the partial outputs into out and lse (no-op with one split).
  template <int D>
  void combine(float* out, float* lse, int64_t rows) const {
    if (splits == 1) return;
    attention_combine_kernel<D><<<grid_for(rows * (D / 4)), kThreads, 0, stream()>>>(
        part_o, part_ml, out, lse, rows, splits);
    KVC_CUDA_CHECK(cudaGetLastError());
  }

 private:
  static int plan(int64_t ctas, int64_t tiles, int slots) {
    const int wanted = choose_splits(ctas, tiles, slots);
    const int64_t per = (tiles + wanted - 1) / wanted;
    return static_cast<int>((tiles + per - 1) / per);  // none of them empty
  }
  KeySplit(int s, int64_t tiles, int64_t rows, int d)
      : splits(s),
        split_tiles((tiles + s - 1) / s),
        scratch(s > 1 ? static_cast<size_t>(s * rows) * (d + 2) * sizeof(float) : 0) {
    if (s > 1) {
      part_o = scratch.as<float>();
      part_ml = reinterpret_cast<float2*>(part_o + s * rows * d);
    }
  }
};

// alpha log2(e) as the kernels take it (scores in log2 units: one exp2f each). The backward that
// recomputes the forward's probabilities scales q by exactly this number, rounded once to float.
inline float scale_log2(double alpha) { return static_cast<float>(alpha * 1.4426950408889634); }

// Where each batch-head's keys and values start, in elements from k and v: 0 for the layout the
// kernel reads by default (seq d a head for K and V; the split TF32 kernels' parts and V^T have
// their own). Other strides come from a bf16 copy laid out with spare rows after each head (the
// MLP kinds', see bf16_copy_heads).
struct KvHeads {
  int64_t k = 0, v = 0;
};

// The signature every attention forward kernel shares (KV: float32, or bf16 bits).
template <typename KV>
using AttentionKernel = void (*)(const float* q, const KV* k, const KV* v, KvHeads heads,
                                 AttentionDest dst, int nq, int seq, int q_tiles, int split_len,
                                 float scale_log2, const int32_t* visible);

// Runs an attention forward kernel (kPlain, or kMasked with `visible`) over one CTA per
// (batch-head, q_rows queries, key split) -- the splits chosen so that the CTAs fill the GPU --
// and merges the splits' partial outputs. Scores in log2 units: the kernels take alpha log2(e).
// lse: null, or (bh * nq) floats for the rows' log-sum-exp (see AttentionDest).
template <int D, auto kPlain, auto kMasked, typename KV>
void launch_split_attention(int threads, size_t smem, int q_rows, int key_tile, const float* q,
                            const KV* k, const KV* v, float* out, int64_t bh, int64_t nq,
                            int64_t seq, double alpha, const int32_t* visible, float* lse = nullptr,
                            KvHeads heads = {}) {
  const int slots =
      visible ? resident_ctas<kMasked>(threads, smem) : resident_ctas<kPlain>(threads, smem);
  const int64_t q_tiles = (nq + q_rows - 1) / q_rows;
  const int64_t rows = bh * nq;
  const KeySplit split(bh * q_tiles, (seq + key_tile - 1) / key_tile, slots, rows, D);
  const dim3 grid(static_cast<unsigned>(bh * q_tiles), static_cast<unsigned>(split.splits));
  const AttentionKernel<KV> kernel = visible ? kMasked : kPlain;
  AttentionDest dst;
  dst.out = out;
  dst.part_o = split.part_o;
  dst.part_ml = split.part_ml;
  dst.lse = lse;
  kernel<<<grid, threads, smem, stream()>>>(
      q, k, v, heads, dst, static_cast<int>(nq), static_cast<int>(seq), static_cast<int>(q_tiles),
      static_cast<int>(split.split_tiles * key_tile), scale_log2(alpha), visible);
  KVC_CUDA_CHECK(cudaGetLastError());
  split.combine<D>(out, lse, rows);
}

}  // namespace kvc::kernels::cuda::attention_detail
