// Tensor-core attention forward (no grad) for the distillation target, flash-attention style:
// each warp owns 16 or 32 query rows, keys come in shared-memory tiles (cp.async, two stages), S =
// Q K^T and O += P V are mma.sync products (bf16 m16n8k16 or tf32 m16n8k8) with FP32 accumulators,
// and the online softmax runs on the accumulator fragments in registers, so neither S nor P ever
// touches shared or global memory. bf16: K and V are rounded to bf16 once, in one pass before the
// kernel (every query tile reads them, so rounding per tile would repeat the work and move twice
// the bytes), and arrive by cp.async straight into bf16 tiles read with ldmatrix, three stages
// deep. tf32: float32 tiles, rounded as their fragments are loaded. On Hopper, d 64 and 128 run
// the warpgroup-MMA kernel of attention_wgmma.cu instead (bf16 on the same rounded K and V).
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/attention_fragments.cuh"
#include "kernels/cuda/attention_split.cuh"
#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma_sync.cuh"

namespace kvc::kernels::cuda {

namespace {

using namespace attention_detail;

constexpr int kWarps = 4;
constexpr int kThreadsTc = 32 * kWarps;

enum class TcMode { kBf16, kTf32 };

// Element type of K and V in global and shared memory: bf16 bits, or float32.
template <TcMode M>
using TcKV = std::conditional_t<M == TcMode::kBf16, uint16_t, float>;

// Query rows of one warp: 16 (one mma M) per m-tile. Two m-tiles let every K and V fragment loaded
// from shared memory feed two products, halving shared-memory traffic per FLOP; they need the
// registers of two accumulators, which d <= 64 can spare.
template <int D>
constexpr int m_tiles() {
  return D <= 64 ? 2 : 1;
}

// Shared-memory layout. bf16: kStages (K tile, V tile) pairs of bf16 rows of stride D + 8 (16-byte
// rows that start 4 banks apart: the 8 rows an ldmatrix reads at once cover all 32 banks), filled
// by cp.async kStages - 1 tiles ahead. tf32: two alternating float32 (K, V) stages of row stride
// D + 4, fragments read straight from them: K at row g, column t (stride = 4 mod 32: 32 distinct
// banks), V at rows 2t, 2t+1 and column g (stride = 4 mod 16: likewise).
template <int D, TcMode M>
struct TcLayout {
  static constexpr bool kBf16 = M == TcMode::kBf16;
  static constexpr int kBK = kBf16 || D < 128 ? 64 : 32;  // keys per tile
  static constexpr int kStages = kBf16 ? 3 : 2;
  static constexpr int kStride = kBf16 ? D + 8 : D + 4;  // elements per shared row
  static constexpr int kStage = 2 * kBK * kStride;       // elements per (K, V) stage
  static constexpr size_t kBytes = (kBf16 ? sizeof(uint16_t) : sizeof(float)) * kStages * kStage;
  static constexpr int kBQ = kWarps * 16 * m_tiles<D>();  // queries per CTA
};

// Rows [k0, k0 + kRows) of a (seq, D) bf16 matrix into a shared tile of row stride kStride, 8
// elements per 16-byte copy; rows at or past `end` are zero (see load_tile_async).
template <int D, int kRows, int kStride>
__device__ __forceinline__ void load_bf16_tile_async(uint16_t* dst, const uint16_t* src, int k0,
                                                     int end, int tid) {
  constexpr int kVec = D / 8;
  static_assert(kRows * kVec % kThreadsTc == 0, "whole 16-byte copies per thread");
#pragma unroll
  for (int n = 0; n < kRows * kVec / kThreadsTc; ++n) {
    const int i = tid + n * kThreadsTc;
    const int r = i / kVec, c = (i % kVec) * 8;
    const bool valid = k0 + r < end;
    const uint16_t* from = src + (valid ? static_cast<int64_t>(k0 + r) * D + c : 0);
    cp_async16(reinterpret_cast<float*>(dst + r * kStride + c),
               reinterpret_cast<const float*>(from), valid);
  }
}

// Fragment layouts: kernels/cuda/mma_sync.cuh.
// bf16: the C fragments of two adjacent key tiles are exactly the A fragment of P for the next
// product; K fragments (B = K^T) are plain ldmatrix loads of K rows, V fragments transposed ones.
// tf32: C is not A's layout, so P V sums its 8 keys in another order (p_fragment_tf32), and B
// reads V rows 2t and 2t+1 to match.
//
// One CTA per (batch-head, kBQ queries, key split); scores in log2 units (q pre-scaled by
// alpha * log2(e)), so the softmax is one exp2f per score.
//
// kMasked: row r sees keys below visible[r] only (causal targets). The CTA stops at the largest
// count of its rows; a row that has seen no key yet keeps its max at -inf and takes 0 as the
// exponent base, so its weights and sums stay zero (a split past all its keys hands the combine
// m = -inf, l = 0, O = 0). The unmasked kernel is compiled without any of it.
template <int D, TcMode M, bool kMasked>
__global__ void __launch_bounds__(kThreadsTc)
    attention_tc_kernel(const float* __restrict__ q, const TcKV<M>* __restrict__ k,
                        const TcKV<M>* __restrict__ v, KvHeads heads, AttentionDest dst, int nq,
                        int seq, int q_tiles, int split_len, float scale_log2,
                        const int32_t* __restrict__ visible) {
  using L = TcLayout<D, M>;
  constexpr bool kBf16 = M == TcMode::kBf16;
  constexpr int kBK = L::kBK;
  constexpr int kM = m_tiles<D>();
  constexpr int kKSteps = kBf16 ? D / 16 : D / 8;  // k-steps of S = Q K^T
  constexpr int kSTiles = kBK / 8;                 // 8-key column tiles of S
  constexpr int kOTiles = D / 8;                   // 8-wide column tiles of O
  constexpr int kStride = L::kStride;
  extern __shared__ float4 smem4[];
  TcKV<M>* smem = reinterpret_cast<TcKV<M>*>(smem4);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int bh = blockIdx.x / q_tiles;
  const int q0 = (blockIdx.x % q_tiles) * L::kBQ + warp * 16 * kM;
  const int kbeg = blockIdx.y * split_len;
  int kend = min(seq, kbeg + split_len);
  if constexpr (kMasked) {
    kend = max(kbeg,
               min(kend, cta_key_limit(visible, bh, (blockIdx.x % q_tiles) * L::kBQ, L::kBQ, nq)));
  }
  const TcKV<M>* kb = k + static_cast<int64_t>(bh) * (heads.k ? heads.k : int64_t{seq} * D);
  const TcKV<M>* vb = v + static_cast<int64_t>(bh) * (heads.v ? heads.v : int64_t{seq} * D);

  // Fills a stage with the tile at k0 (nothing past the split: an empty group keeps the count of
  // committed groups, which the waits rely on, the same for every tile).
  auto load_stage = [&](int stage, int k0) {
    TcKV<M>* ks = smem + stage * L::kStage;
    if (k0 < kend) {
      if constexpr (kBf16) {
        load_bf16_tile_async<D, kBK, kStride>(ks, kb, k0, kend, tid);
        load_bf16_tile_async<D, kBK, kStride>(ks + kBK * kStride, vb, k0, kend, tid);
      } else {
        load_tile_async<D, kBK, kStride, kThreadsTc>(ks, kb, k0, kend, tid);
        load_tile_async<D, kBK, kStride, kThreadsTc>(ks + kBK * kStride, vb, k0, kend, tid);
      }
    }
    cp_async_commit();
  };
#pragma unroll
  for (int st = 0; st < L::kStages - 1; ++st) load_stage(st, kbeg + st * kBK);

  // Q's A fragments for every m-tile and k-step stay in registers for the whole key range.
  uint32_t qa[kM][kKSteps][4];
#pragma unroll
  for (int mi = 0; mi < kM; ++mi) {
    if constexpr (kBf16) {
      q_fragments<D>(qa[mi], q, bh, q0 + mi * 16, nq, scale_log2);
    } else {
      q_fragments_tf32<D>(qa[mi], q, bh, q0 + mi * 16, nq, scale_log2);
    }
  }

  float o[kM][kOTiles][4];
  float m_run[kM][2], l_run[kM][2];  // running max (log2 units) and this lane's share of the sum
#pragma unroll
  for (int mi = 0; mi < kM; ++mi) {
#pragma unroll
    for (int j = 0; j < kOTiles; ++j) o[mi][j][0] = o[mi][j][1] = o[mi][j][2] = o[mi][j][3] = 0.f;
    m_run[mi][0] = m_run[mi][1] = -INFINITY;
    l_run[mi][0] = l_run[mi][1] = 0.f;
  }
  int limit[kM][2];  // keys each of this lane's rows may see
#pragma unroll
  for (int mi = 0; mi < kM; ++mi)
    row_limits<kMasked>(limit[mi], visible, bh, q0 + mi * 16, nq, seq);

  int stage = 0;  // the stage holding the tile at k0
  for (int k0 = kbeg; k0 < kend; k0 += kBK) {
    // The tile at k0 has landed once at most kStages - 2 later groups are in flight; after the
    // barrier every warp is also done with the previous tile, whose stage is refilled at once.
    cp_async_wait<L::kStages - 2>();
    __syncthreads();
    const int refill = stage == 0 ? L::kStages - 1 : stage - 1;
    load_stage(refill, k0 + (L::kStages - 1) * kBK);
    const TcKV<M>* ks = smem + stage * L::kStage;
    const TcKV<M>* vs = ks + kBK * kStride;
    stage = stage == L::kStages - 1 ? 0 : stage + 1;

    // S = Q K^T, k-steps outermost: the products of one step are independent.
    float s[kM][kSTiles][4];
#pragma unroll
    for (int mi = 0; mi < kM; ++mi) {
#pragma unroll
      for (int j = 0; j < kSTiles; ++j) s[mi][j][0] = s[mi][j][1] = s[mi][j][2] = s[mi][j][3] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      if constexpr (kBf16) {
#pragma unroll
        for (int jp = 0; jp < kSTiles / 2; ++jp) {
          uint32_t b[4];  // b0, b1 of key tile 2 jp, then of 2 jp + 1
          ldmatrix_x4(b, ks + (jp * 16 + (lane & 7) + 8 * (lane >> 4)) * kStride + kk * 16 +
                             8 * ((lane >> 3) & 1));
#pragma unroll
          for (int mi = 0; mi < kM; ++mi) {
            mma_bf16(s[mi][2 * jp], qa[mi][kk], b[0], b[1]);
            mma_bf16(s[mi][2 * jp + 1], qa[mi][kk], b[2], b[3]);
          }
        }
      } else {
#pragma unroll
        for (int j = 0; j < kSTiles; ++j) {
          const float* krow = ks + (j * 8 + g) * kStride + kk * 8 + t;
          const uint32_t b0 = to_tf32(krow[0]), b1 = to_tf32(krow[4]);
#pragma unroll
          for (int mi = 0; mi < kM; ++mi) mma_tf32(s[mi][j], qa[mi][kk], b0, b1);
        }
      }
    }

#pragma unroll
    for (int mi = 0; mi < kM; ++mi) {
      mask_scores<kSTiles, kMasked>(s[mi], kend - k0, k0, limit[mi]);
      softmax_tile<kSTiles, kOTiles, kMasked>(s[mi], o[mi], m_run[mi], l_run[mi]);
    }

    // O += P V: each V fragment is loaded once for all m-tiles.
    if constexpr (kBf16) {
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        uint32_t pa[kM][4];
#pragma unroll
        for (int mi = 0; mi < kM; ++mi) p_fragment<kSTiles>(pa[mi], s[mi], kk);
#pragma unroll
        for (int jp = 0; jp < kOTiles / 2; ++jp) {
          uint32_t b[4];  // b0, b1 of column tile 2 jp, then of 2 jp + 1
          ldmatrix_x4_trans(b, vs + (kk * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * kStride +
                                   jp * 16 + 8 * (lane >> 4));
#pragma unroll
          for (int mi = 0; mi < kM; ++mi) {
            mma_bf16(o[mi][2 * jp], pa[mi], b[0], b[1]);
            mma_bf16(o[mi][2 * jp + 1], pa[mi], b[2], b[3]);
          }
        }
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < kBK / 8; ++kk) {
        uint32_t pa[kM][4];
#pragma unroll
        for (int mi = 0; mi < kM; ++mi) p_fragment_tf32<kSTiles>(pa[mi], s[mi], kk);
        const float* v0 = vs + (kk * 8 + 2 * t) * kStride + g;
#pragma unroll
        for (int j = 0; j < kOTiles; ++j) {
          const uint32_t b0 = to_tf32(v0[j * 8]), b1 = to_tf32(v0[j * 8 + kStride]);
#pragma unroll
          for (int mi = 0; mi < kM; ++mi) mma_tf32(o[mi][j], pa[mi], b0, b1);
        }
      }
    }
  }
  cp_async_wait<0>();  // no copy may outlive the CTA (the last refills are empty groups)

  const int64_t rows = static_cast<int64_t>(gridDim.x / q_tiles) * nq;  // batch_heads * nq
#pragma unroll
  for (int mi = 0; mi < kM; ++mi) {
    write_rows<kOTiles>(o[mi], m_run[mi], l_run[mi], dst, bh, q0 + mi * 16, nq, rows);
  }
}

template <int D, TcMode M>
void launch_tc(const float* q, const TcKV<M>* k, const TcKV<M>* v, float* out, int64_t bh,
               int64_t nq, int64_t seq, double alpha, const int32_t* visible, float* lse,
               KvHeads heads = {}) {
  using L = TcLayout<D, M>;
  launch_split_attention<D, attention_tc_kernel<D, M, false>, attention_tc_kernel<D, M, true>>(
      kThreadsTc, L::kBytes, L::kBQ, L::kBK, q, k, v, out, bh, nq, seq, alpha, visible, lse, heads);
}

// bf16: K and V rounded once (or the copies the compressors made, see SharedBf16Copies, perhaps
// with spare rows after each head), then the kernel on the rounded copies: warpgroup MMA where it
// can run (Hopper, d 64 or 128), else mma.sync.
template <int D>
void launch_tc_bf16(const float* q, const float* k, const float* v, float* out, int64_t bh,
                    int64_t nq, int64_t seq, double alpha, const int32_t* visible, TcKernel kernel,
                    float* lse) {
  KvHeads heads;
  const Bf16Copy k_copy = bf16_copy_heads(k, bh, seq * D, &heads.k);
  const Bf16Copy v_copy = bf16_copy_heads(v, bh, seq * D, &heads.v);
  const auto* k16 = reinterpret_cast<const uint16_t*>(k_copy.p);
  const auto* v16 = reinterpret_cast<const uint16_t*>(v_copy.p);
  if (kernel == TcKernel::fastest && D != 32 && attention_wgmma_available()) {
    attention_forward_wgmma(q, k16, v16, out, bh, nq, seq, D, alpha, visible, lse, heads.k,
                            heads.v);
  } else {
    launch_tc<D, TcMode::kBf16>(q, k16, v16, out, bh, nq, seq, alpha, visible, lse, heads);
  }
}

template <int D>
void launch_d(const float* q, const float* k, const float* v, float* out, int64_t bh, int64_t nq,
              int64_t seq, double alpha, MathPrecision precision, const int32_t* visible,
              TcKernel kernel, float* lse) {
  if (precision == MathPrecision::bf16) {
    launch_tc_bf16<D>(q, k, v, out, bh, nq, seq, alpha, visible, kernel, lse);
  } else if (kernel == TcKernel::fastest && D != 32 && attention_wgmma_available()) {
    attention_forward_wgmma_tf32(q, k, v, out, bh, nq, seq, D, alpha, visible, lse);
  } else {
    launch_tc<D, TcMode::kTf32>(q, k, v, out, bh, nq, seq, alpha, visible, lse);
  }
}

}  // namespace

void attention_forward_tc(const float* q, const float* k, const float* v, float* out,
                          int64_t batch_heads, int64_t nq, int64_t seq, int64_t d, double alpha,
                          MathPrecision precision, const int32_t* visible, TcKernel kernel,
                          float* lse) {
  KVC_CHECK(precision != MathPrecision::fp32,
            "attention_forward_tc: fp32 math runs on the FP32 kernel, not on tensor cores");
  switch (d) {
    case 32:
      return launch_d<32>(q, k, v, out, batch_heads, nq, seq, alpha, precision, visible, kernel,
                          lse);
    case 64:
      return launch_d<64>(q, k, v, out, batch_heads, nq, seq, alpha, precision, visible, kernel,
                          lse);
    case 128:
      return launch_d<128>(q, k, v, out, batch_heads, nq, seq, alpha, precision, visible, kernel,
                           lse);
    default:
      KVC_FAIL("attention_forward_tc: head size ", d, " has no tensor-core kernel");
  }
}

}  // namespace kvc::kernels::cuda
