// Tensor-core attention forward (no grad) for the distillation target, flash-attention style:
// each warp owns 16 or 32 query rows, keys come in shared-memory tiles (cp.async, two stages), S =
// Q K^T and O += P V are mma.sync products (bf16 m16n8k16 or tf32 m16n8k8) with FP32 accumulators,
// and the online softmax runs on the accumulator fragments in registers, so neither S nor P ever
// touches shared or global memory. Inputs stay float32 in memory: operands are rounded while they
// are loaded into fragments. FP32 math runs as 3xTF32 (see TcMode).
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "kernels/cuda/attention_split.cuh"
#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/common.cuh"

namespace kvc::kernels::cuda {

namespace {

using namespace attention_detail;

constexpr int kWarps = 4;
constexpr int kThreadsTc = 32 * kWarps;

// How the operands of both products are rounded. kTf32x3 splits every FP32 operand x into
// big = tf32(x) and small = tf32(x - big) and sums big*big + big*small + small*big (the small*small
// term is below FP32 rounding): three TF32 products that give FP32-level accuracy (the 3xTF32
// method of CUTLASS), still on tensor cores.
enum class TcMode { kBf16, kTf32, kTf32x3 };

// Query rows of one warp: 16 (one mma M) per m-tile. Two m-tiles let every K and V fragment loaded
// from shared memory feed two products, halving shared-memory traffic per FLOP; they need the
// registers of two accumulators, which only d <= 64 without the 3xTF32 split can spare.
template <int D, TcMode M>
constexpr int m_tiles() {
  return D <= 64 && M != TcMode::kTf32x3 ? 2 : 1;
}

// Shared-memory layout, in floats, two stages of (K tile, V tile). Row strides are padded so the
// fragment loads hit 32 distinct banks: a K fragment is read by lane (g, t) = (lane / 4, lane % 4)
// at row g, column c(t): as float2 at 2t (bf16; a stride = 8 mod 32 spreads the 16 lanes of each
// 64-bit phase) or as float at t (tf32; stride = 4 mod 32). A V fragment is read at rows 2t, 2t+1
// and column g, so its stride is 4 mod 16 in both modes.
template <int D, TcMode M, int kM>
struct TcLayout {
  static constexpr int kBK = D == 128 ? 32 : 64;  // keys per tile: D = 128 keeps 3 CTAs per SM
  static constexpr int kKStride = D + (M == TcMode::kBf16 ? 8 : 4);
  static constexpr int kVStride = D + 4;
  static constexpr int kStage = kBK * (kKStride + kVStride);
  static constexpr size_t kBytes = sizeof(float) * 2 * kStage;
  static constexpr int kBQ = kWarps * 16 * kM;  // queries per CTA
};

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 x = __floats2bfloat162_rn(lo, hi);  // .x (lo) in the low 16 bits
  return *reinterpret_cast<const uint32_t*>(&x);
}

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// A TF32 operand: its rounding, and for 3xTF32 the rounding of what rounding left over.
struct Tf32Pair {
  uint32_t big, small;
};
__device__ __forceinline__ Tf32Pair split_tf32(float x) {
  const uint32_t big = to_tf32(x);
  return {big, to_tf32(x - __uint_as_float(big))};
}

// c += a b for one 16x8 tile: a (16 x 16 bf16, row), b (16 x 8 bf16, col), c FP32.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c += a b for one 16x8 tile: a (16 x 8 tf32, row), b (8 x 8 tf32, col), c FP32.
__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c += a b with a, b split for 3xTF32: the two cross terms first, the big one last.
__device__ __forceinline__ void mma_tf32x3(float (&c)[4], const uint32_t (&a_big)[4],
                                           const uint32_t (&a_small)[4], Tf32Pair b0, Tf32Pair b1) {
  mma_tf32(c, a_small, b0.big, b1.big);
  mma_tf32(c, a_big, b0.small, b1.small);
  mma_tf32(c, a_big, b0.big, b1.big);
}

// Fragment layouts (PTX ISA, mma.m16n8k16 / m16n8k8), lane = 4 g + t:
//   C (16 x 8):  c0, c1 at row g, columns 2t, 2t+1; c2, c3 at row g+8, same columns.
//   A bf16:      a0 = row g, columns 2t..2t+1; a1 = row g+8, same; a2 = row g, 2t+8..2t+9; a3 = row
//                g+8, same.  B bf16 (k x n): b0 = rows 2t..2t+1, column g; b1 = rows 2t+8..2t+9.
//   A tf32:      a0 = (g, t), a1 = (g+8, t), a2 = (g, t+4), a3 = (g+8, t+4).
//                B tf32: b0 = (t, g), b1 = (t+4, g).
// The bf16 C fragments of two adjacent key tiles are exactly the A fragment of P for the next
// product. For tf32 they are not, so P V sums its 8 keys in another order: A column t stands for
// key 2t and column t+4 for key 2t+1 (c0 -> a0, c2 -> a1, c1 -> a2, c3 -> a3), and B reads V rows
// 2t and 2t+1 to match. A sum does not care about the order of its terms.
//
// One CTA per (batch-head, kBQ queries, key split); scores in log2 units (q pre-scaled by
// alpha * log2(e)), so the softmax is one exp2f per score.
template <int D, TcMode M, int kM>
__global__ void __launch_bounds__(kThreadsTc)
    attention_tc_kernel(const float* __restrict__ q, const float* __restrict__ k,
                        const float* __restrict__ v, float* __restrict__ out,
                        float* __restrict__ part_o, float2* __restrict__ part_ml, int nq, int seq,
                        int q_tiles, int split_len, float scale_log2) {
  using L = TcLayout<D, M, kM>;
  constexpr bool kBf16 = M == TcMode::kBf16;
  constexpr bool kX3 = M == TcMode::kTf32x3;
  constexpr int kBK = L::kBK;
  constexpr int kKSteps = kBf16 ? D / 16 : D / 8;  // k-steps of S = Q K^T
  constexpr int kSTiles = kBK / 8;                 // 8-key column tiles of S
  constexpr int kOTiles = D / 8;                   // 8-wide column tiles of O
  constexpr int kQSmall = kX3 ? kKSteps : 1;       // the small halves of Q (3xTF32 only)
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int bh = blockIdx.x / q_tiles;
  const int q0 = (blockIdx.x % q_tiles) * L::kBQ + warp * 16 * kM;
  const int kbeg = blockIdx.y * split_len;
  const int kend = min(seq, kbeg + split_len);
  const float* kb = k + static_cast<int64_t>(bh) * seq * D;
  const float* vb = v + static_cast<int64_t>(bh) * seq * D;

  auto load_stage = [&](int stage, int k0) {
    float* ks = smem + stage * L::kStage;
    load_tile_async<D, kBK, L::kKStride, kThreadsTc>(ks, kb, k0, kend, tid);
    load_tile_async<D, kBK, L::kVStride, kThreadsTc>(ks + kBK * L::kKStride, vb, k0, kend, tid);
    cp_async_commit();
  };
  load_stage(0, kbeg);

  // Q's A fragments for every m-tile and k-step stay in registers for the whole key range.
  uint32_t qa[kM][kKSteps][4];
  uint32_t qs[kM][kQSmall][4];
#pragma unroll
  for (int mi = 0; mi < kM; ++mi) {
    const int r0 = q0 + mi * 16 + g, r1 = r0 + 8;
    const float* qr0 = q + (static_cast<int64_t>(bh) * nq + r0) * D;
    const float* qr1 = q + (static_cast<int64_t>(bh) * nq + r1) * D;
    const bool ok0 = r0 < nq, ok1 = r1 < nq;
#pragma unroll
    for (int s = 0; s < kKSteps; ++s) {
      if constexpr (kBf16) {
        const int c = s * 16 + 2 * t;
        const float2 zero = make_float2(0.f, 0.f);
        const float2 x0 = ok0 ? *reinterpret_cast<const float2*>(qr0 + c) : zero;
        const float2 x1 = ok1 ? *reinterpret_cast<const float2*>(qr1 + c) : zero;
        const float2 x2 = ok0 ? *reinterpret_cast<const float2*>(qr0 + c + 8) : zero;
        const float2 x3 = ok1 ? *reinterpret_cast<const float2*>(qr1 + c + 8) : zero;
        qa[mi][s][0] = pack_bf16(x0.x * scale_log2, x0.y * scale_log2);
        qa[mi][s][1] = pack_bf16(x1.x * scale_log2, x1.y * scale_log2);
        qa[mi][s][2] = pack_bf16(x2.x * scale_log2, x2.y * scale_log2);
        qa[mi][s][3] = pack_bf16(x3.x * scale_log2, x3.y * scale_log2);
      } else {
        const int c = s * 8 + t;
        const float x[4] = {ok0 ? qr0[c] * scale_log2 : 0.f, ok1 ? qr1[c] * scale_log2 : 0.f,
                            ok0 ? qr0[c + 4] * scale_log2 : 0.f,
                            ok1 ? qr1[c + 4] * scale_log2 : 0.f};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const Tf32Pair p = split_tf32(x[e]);
          qa[mi][s][e] = p.big;
          if constexpr (kX3) qs[mi][s][e] = p.small;
        }
      }
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

  int stage = 0;
  for (int k0 = kbeg; k0 < kend; k0 += kBK, stage ^= 1) {
    // The next tile's copies fly while this one is used; the stage they fill was last read
    // before the barrier at the end of the previous iteration.
    if (k0 + kBK < kend) {
      load_stage(stage ^ 1, k0 + kBK);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const float* ks = smem + stage * L::kStage;
    const float* vs = ks + kBK * L::kKStride;

    // S = Q K^T: each K fragment is loaded (and rounded) once for all m-tiles.
    float s[kM][kSTiles][4];
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) {
#pragma unroll
      for (int mi = 0; mi < kM; ++mi) s[mi][j][0] = s[mi][j][1] = s[mi][j][2] = s[mi][j][3] = 0.f;
      const float* krow = ks + (j * 8 + g) * L::kKStride;
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        if constexpr (kBf16) {
          const float2 x = *reinterpret_cast<const float2*>(krow + kk * 16 + 2 * t);
          const float2 y = *reinterpret_cast<const float2*>(krow + kk * 16 + 2 * t + 8);
          const uint32_t b0 = pack_bf16(x.x, x.y), b1 = pack_bf16(y.x, y.y);
#pragma unroll
          for (int mi = 0; mi < kM; ++mi) mma_bf16(s[mi][j], qa[mi][kk], b0, b1);
        } else if constexpr (kX3) {
          const Tf32Pair b0 = split_tf32(krow[kk * 8 + t]), b1 = split_tf32(krow[kk * 8 + t + 4]);
#pragma unroll
          for (int mi = 0; mi < kM; ++mi) mma_tf32x3(s[mi][j], qa[mi][kk], qs[mi][kk], b0, b1);
        } else {
          const uint32_t b0 = to_tf32(krow[kk * 8 + t]), b1 = to_tf32(krow[kk * 8 + t + 4]);
#pragma unroll
          for (int mi = 0; mi < kM; ++mi) mma_tf32(s[mi][j], qa[mi][kk], b0, b1);
        }
      }
    }

    const int valid = kend - k0;  // keys of this tile inside the split
#pragma unroll
    for (int mi = 0; mi < kM; ++mi) {
      if (valid < kBK) {
#pragma unroll
        for (int j = 0; j < kSTiles; ++j) {
          const int col = j * 8 + 2 * t;
          if (col >= valid) s[mi][j][0] = s[mi][j][2] = -INFINITY;
          if (col + 1 >= valid) s[mi][j][1] = s[mi][j][3] = -INFINITY;
        }
      }
      // Online softmax of rows g (h = 0: c0, c1) and g + 8 (h = 1: c2, c3); the 4 lanes of a
      // quad hold one row's columns.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < kSTiles; ++j)
          mx = fmaxf(mx, fmaxf(s[mi][j][2 * h], s[mi][j][2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m_run[mi][h], mx);  // finite: every tile has a valid key
        const float corr = exp2f(m_run[mi][h] - m_new);
        m_run[mi][h] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < kSTiles; ++j) {
          s[mi][j][2 * h] = exp2f(s[mi][j][2 * h] - m_new);
          s[mi][j][2 * h + 1] = exp2f(s[mi][j][2 * h + 1] - m_new);
          sum += s[mi][j][2 * h] + s[mi][j][2 * h + 1];
        }
        l_run[mi][h] = l_run[mi][h] * corr + sum;
#pragma unroll
        for (int j = 0; j < kOTiles; ++j) {
          o[mi][j][2 * h] *= corr;
          o[mi][j][2 * h + 1] *= corr;
        }
      }
    }

    // O += P V: each V fragment is loaded (and rounded) once for all m-tiles.
    if constexpr (kBf16) {
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        uint32_t pa[kM][4];
#pragma unroll
        for (int mi = 0; mi < kM; ++mi) {
          pa[mi][0] = pack_bf16(s[mi][2 * kk][0], s[mi][2 * kk][1]);
          pa[mi][1] = pack_bf16(s[mi][2 * kk][2], s[mi][2 * kk][3]);
          pa[mi][2] = pack_bf16(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
          pa[mi][3] = pack_bf16(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
        }
        const float* v0 = vs + (kk * 16 + 2 * t) * L::kVStride + g;
#pragma unroll
        for (int j = 0; j < kOTiles; ++j) {
          const float* vc = v0 + j * 8;
          const uint32_t b0 = pack_bf16(vc[0], vc[L::kVStride]);
          const uint32_t b1 = pack_bf16(vc[8 * L::kVStride], vc[9 * L::kVStride]);
#pragma unroll
          for (int mi = 0; mi < kM; ++mi) mma_bf16(o[mi][j], pa[mi], b0, b1);
        }
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < kBK / 8; ++kk) {
        uint32_t pa[kM][4], ps[kM][4];
#pragma unroll
        for (int mi = 0; mi < kM; ++mi) {
          const float x[4] = {s[mi][kk][0], s[mi][kk][2], s[mi][kk][1], s[mi][kk][3]};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const Tf32Pair p = split_tf32(x[e]);
            pa[mi][e] = p.big;
            ps[mi][e] = p.small;
          }
        }
        const float* v0 = vs + (kk * 8 + 2 * t) * L::kVStride + g;
#pragma unroll
        for (int j = 0; j < kOTiles; ++j) {
          const float* vc = v0 + j * 8;
          if constexpr (kX3) {
            const Tf32Pair b0 = split_tf32(vc[0]), b1 = split_tf32(vc[L::kVStride]);
#pragma unroll
            for (int mi = 0; mi < kM; ++mi) mma_tf32x3(o[mi][j], pa[mi], ps[mi], b0, b1);
          } else {
            const uint32_t b0 = to_tf32(vc[0]), b1 = to_tf32(vc[L::kVStride]);
#pragma unroll
            for (int mi = 0; mi < kM; ++mi) mma_tf32(o[mi][j], pa[mi], b0, b1);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  const bool split = gridDim.y > 1;
  const int64_t rows = static_cast<int64_t>(gridDim.x / q_tiles) * nq;  // batch_heads * nq
#pragma unroll
  for (int mi = 0; mi < kM; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = l_run[mi][h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int row = q0 + mi * 16 + g + 8 * h;
      if (row >= nq) continue;
      const int64_t grow = static_cast<int64_t>(bh) * nq + row;
      float* orow = out + grow * D;
      float inv = 1.f / l;
      if (split) {
        const int64_t prow = blockIdx.y * rows + grow;
        orow = part_o + prow * D;
        inv = 1.f;
        if (t == 0) part_ml[prow] = make_float2(m_run[mi][h], l);
      }
#pragma unroll
      for (int j = 0; j < kOTiles; ++j) {
        *reinterpret_cast<float2*>(orow + j * 8 + 2 * t) =
            make_float2(o[mi][j][2 * h] * inv, o[mi][j][2 * h + 1] * inv);
      }
    }
  }
}

// CTAs of one kernel instance that fit on the whole GPU at once, read once per instance.
template <int D, TcMode M, int kM>
int resident_tc_ctas() {
  static const int n = [] {
    using L = TcLayout<D, M, kM>;
    KVC_CUDA_CHECK(cudaFuncSetAttribute(attention_tc_kernel<D, M, kM>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(L::kBytes)));
    int device = 0, sms = 0, per_sm = 0;
    KVC_CUDA_CHECK(cudaGetDevice(&device));
    KVC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    KVC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, attention_tc_kernel<D, M, kM>, kThreadsTc, L::kBytes));
    return std::max(1, sms * per_sm);
  }();
  return n;
}

template <int D, TcMode M, int kM>
void launch_tc(const float* q, const float* k, const float* v, float* out, int64_t bh, int64_t nq,
               int64_t seq, double alpha) {
  using L = TcLayout<D, M, kM>;
  const int slots = resident_tc_ctas<D, M, kM>();  // also raises the shared-memory limit
  const int64_t q_tiles = (nq + L::kBQ - 1) / L::kBQ;
  const int64_t rows = bh * nq;
  const KeySplit split(bh * q_tiles, (seq + L::kBK - 1) / L::kBK, slots, rows, D);
  const float scale_log2 = static_cast<float>(alpha * 1.4426950408889634);  // alpha * log2(e)
  const dim3 grid(static_cast<unsigned>(bh * q_tiles), static_cast<unsigned>(split.splits));
  attention_tc_kernel<D, M, kM><<<grid, kThreadsTc, L::kBytes, stream()>>>(
      q, k, v, out, split.part_o, split.part_ml, static_cast<int>(nq), static_cast<int>(seq),
      static_cast<int>(q_tiles), static_cast<int>(split.split_tiles * L::kBK), scale_log2);
  KVC_CUDA_CHECK(cudaGetLastError());
  split.combine<D>(out, rows);
}

int tc_mtiles() {  // TEMPORARY experiment knob
  static const int n = getenv("KVC_TC_MTILES") ? atoi(getenv("KVC_TC_MTILES")) : 2;
  return n;
}

template <TcMode M>
void dispatch_d(const float* q, const float* k, const float* v, float* out, int64_t bh, int64_t nq,
                int64_t seq, int64_t d, double alpha) {
  switch (d) {
    case 32:
      if (tc_mtiles() == 1) return launch_tc<32, M, 1>(q, k, v, out, bh, nq, seq, alpha);
      return launch_tc<32, M, m_tiles<32, M>()>(q, k, v, out, bh, nq, seq, alpha);
    case 64:
      if (tc_mtiles() == 1) return launch_tc<64, M, 1>(q, k, v, out, bh, nq, seq, alpha);
      return launch_tc<64, M, m_tiles<64, M>()>(q, k, v, out, bh, nq, seq, alpha);
    case 128:
      return launch_tc<128, M, 1>(q, k, v, out, bh, nq, seq, alpha);
    default:
      KVC_FAIL("attention_forward_tc: head size ", d, " has no tensor-core kernel");
  }
}

}  // namespace

void attention_forward_tc(const float* q, const float* k, const float* v, float* out,
                          int64_t batch_heads, int64_t nq, int64_t seq, int64_t d, double alpha,
                          MathPrecision precision) {
  switch (precision) {
    case MathPrecision::bf16:
      return dispatch_d<TcMode::kBf16>(q, k, v, out, batch_heads, nq, seq, d, alpha);
    case MathPrecision::tf32:
      return dispatch_d<TcMode::kTf32>(q, k, v, out, batch_heads, nq, seq, d, alpha);
    case MathPrecision::fp32:
      return dispatch_d<TcMode::kTf32x3>(q, k, v, out, batch_heads, nq, seq, d, alpha);
  }
}

}  // namespace kvc::kernels::cuda
