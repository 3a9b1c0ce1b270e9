// Tensor-core attention forward (no grad) for the distillation target, flash-attention style:
// each warp owns 16 query rows, keys come in shared-memory tiles (cp.async, two stages), S = Q K^T
// and O += P V are mma.sync products (bf16 m16n8k16 or tf32 m16n8k8) with FP32 accumulators, and
// the online softmax runs on the accumulator fragments in registers, so neither S nor P ever
// touches shared or global memory. Inputs stay float32 in memory: operands are rounded while they
// are loaded into fragments.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/attention_split.cuh"
#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/common.cuh"

namespace kvc::kernels::cuda {

namespace {

using namespace attention_detail;

constexpr int kWarps = 4;
constexpr int kThreadsTc = 32 * kWarps;
constexpr int kRowsPerWarp = 16;              // the M of one mma
constexpr int kBQTc = kWarps * kRowsPerWarp;  // 64 queries per CTA

// Shared-memory layout, in floats, two stages of (K tile, V tile). Row strides are padded so the
// fragment loads hit 32 distinct banks: a K fragment is read by lane (g, t) = (lane / 4, lane % 4)
// at row g, column c(t): as float2 at 2t (bf16; a stride = 8 mod 32 spreads the 16 lanes of each
// 64-bit phase) or as float at t (tf32; stride = 4 mod 32). A V fragment is read at rows 2t, 2t+1
// and column g, so its stride is 4 mod 16 in both modes.
template <int D, bool kBf16>
struct TcLayout {
  static constexpr int kBK = D == 128 ? 32 : 64;  // keys per tile: D = 128 keeps 3 CTAs per SM
  static constexpr int kKStride = D + (kBf16 ? 8 : 4);
  static constexpr int kVStride = D + 4;
  static constexpr int kStage = kBK * (kKStride + kVStride);
  static constexpr size_t kBytes = sizeof(float) * 2 * kStage;
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
// One CTA per (batch-head, 64 queries, key split); scores in log2 units (q pre-scaled by
// alpha * log2(e)), so the softmax is one exp2f per score.
template <int D, bool kBf16>
__global__ void __launch_bounds__(kThreadsTc)
    attention_tc_kernel(const float* __restrict__ q, const float* __restrict__ k,
                        const float* __restrict__ v, float* __restrict__ out,
                        float* __restrict__ part_o, float2* __restrict__ part_ml, int nq, int seq,
                        int q_tiles, int split_len, float scale_log2) {
  using L = TcLayout<D, kBf16>;
  constexpr int kBK = L::kBK;
  constexpr int kKSteps = kBf16 ? D / 16 : D / 8;  // k-steps of S = Q K^T
  constexpr int kSTiles = kBK / 8;                 // 8-key column tiles of S
  constexpr int kOTiles = D / 8;                   // 8-wide column tiles of O
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int bh = blockIdx.x / q_tiles;
  const int q0 = (blockIdx.x % q_tiles) * kBQTc + warp * kRowsPerWarp;
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

  // Q's A fragments for every k-step stay in registers for the whole key range.
  uint32_t qa[kKSteps][4];
  {
    const int r0 = q0 + g, r1 = q0 + g + 8;
    const float* qr0 = q + (static_cast<int64_t>(bh) * nq + r0) * D;
    const float* qr1 = q + (static_cast<int64_t>(bh) * nq + r1) * D;
    const bool ok0 = r0 < nq, ok1 = r1 < nq;
#pragma unroll
    for (int s = 0; s < kKSteps; ++s) {
      if constexpr (kBf16) {
        const int c = s * 16 + 2 * t;
        float2 x0 = ok0 ? *reinterpret_cast<const float2*>(qr0 + c) : make_float2(0.f, 0.f);
        float2 x1 = ok1 ? *reinterpret_cast<const float2*>(qr1 + c) : make_float2(0.f, 0.f);
        float2 x2 = ok0 ? *reinterpret_cast<const float2*>(qr0 + c + 8) : make_float2(0.f, 0.f);
        float2 x3 = ok1 ? *reinterpret_cast<const float2*>(qr1 + c + 8) : make_float2(0.f, 0.f);
        qa[s][0] = pack_bf16(x0.x * scale_log2, x0.y * scale_log2);
        qa[s][1] = pack_bf16(x1.x * scale_log2, x1.y * scale_log2);
        qa[s][2] = pack_bf16(x2.x * scale_log2, x2.y * scale_log2);
        qa[s][3] = pack_bf16(x3.x * scale_log2, x3.y * scale_log2);
      } else {
        const int c = s * 8 + t;
        qa[s][0] = to_tf32(ok0 ? qr0[c] * scale_log2 : 0.f);
        qa[s][1] = to_tf32(ok1 ? qr1[c] * scale_log2 : 0.f);
        qa[s][2] = to_tf32(ok0 ? qr0[c + 4] * scale_log2 : 0.f);
        qa[s][3] = to_tf32(ok1 ? qr1[c + 4] * scale_log2 : 0.f);
      }
    }
  }

  float o[kOTiles][4];
#pragma unroll
  for (int j = 0; j < kOTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY;  // running max of rows g and g + 8 (log2 units)
  float l0 = 0.f, l1 = 0.f;              // this lane's share of their running sums

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

    float s[kSTiles][4];
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
      const float* krow = ks + (j * 8 + g) * L::kKStride;
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        if constexpr (kBf16) {
          const float2 x = *reinterpret_cast<const float2*>(krow + kk * 16 + 2 * t);
          const float2 y = *reinterpret_cast<const float2*>(krow + kk * 16 + 2 * t + 8);
          mma_bf16(s[j], qa[kk], pack_bf16(x.x, x.y), pack_bf16(y.x, y.y));
        } else {
          mma_tf32(s[j], qa[kk], to_tf32(krow[kk * 8 + t]), to_tf32(krow[kk * 8 + t + 4]));
        }
      }
    }

    const int valid = kend - k0;  // keys of this tile inside the split
    if (valid < kBK) {
#pragma unroll
      for (int j = 0; j < kSTiles; ++j) {
        const int col = j * 8 + 2 * t;
        if (col >= valid) s[j][0] = s[j][2] = -INFINITY;
        if (col + 1 >= valid) s[j][1] = s[j][3] = -INFINITY;
      }
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) {
      mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
      mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
    }
    // The 4 lanes of a quad hold one row's columns.
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);  // finite: every tile has a valid key
    const float corr0 = exp2f(m0 - n0), corr1 = exp2f(m1 - n1);
    m0 = n0;
    m1 = n1;
    float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) {
      s[j][0] = exp2f(s[j][0] - n0);
      s[j][1] = exp2f(s[j][1] - n0);
      s[j][2] = exp2f(s[j][2] - n1);
      s[j][3] = exp2f(s[j][3] - n1);
      sum0 += s[j][0] + s[j][1];
      sum1 += s[j][2] + s[j][3];
    }
    l0 = l0 * corr0 + sum0;
    l1 = l1 * corr1 + sum1;
#pragma unroll
    for (int j = 0; j < kOTiles; ++j) {
      o[j][0] *= corr0;
      o[j][1] *= corr0;
      o[j][2] *= corr1;
      o[j][3] *= corr1;
    }

    if constexpr (kBf16) {
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]),
                                pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
        const float* v0 = vs + (kk * 16 + 2 * t) * L::kVStride + g;
#pragma unroll
        for (int j = 0; j < kOTiles; ++j) {
          const float* vc = v0 + j * 8;
          mma_bf16(o[j], pa, pack_bf16(vc[0], vc[L::kVStride]),
                   pack_bf16(vc[8 * L::kVStride], vc[9 * L::kVStride]));
        }
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < kBK / 8; ++kk) {
        const uint32_t pa[4] = {to_tf32(s[kk][0]), to_tf32(s[kk][2]), to_tf32(s[kk][1]),
                                to_tf32(s[kk][3])};
        const float* v0 = vs + (kk * 8 + 2 * t) * L::kVStride + g;
#pragma unroll
        for (int j = 0; j < kOTiles; ++j) {
          const float* vc = v0 + j * 8;
          mma_tf32(o[j], pa, to_tf32(vc[0]), to_tf32(vc[L::kVStride]));
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  const bool split = gridDim.y > 1;
  const int64_t rows = static_cast<int64_t>(gridDim.x / q_tiles) * nq;  // batch_heads * nq
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = q0 + g + 8 * half;
    if (row >= nq) continue;
    const int64_t grow = static_cast<int64_t>(bh) * nq + row;
    const float m = half ? m1 : m0, l = half ? l1 : l0;
    float* orow = out + grow * D;
    float inv = 1.f / l;
    if (split) {
      const int64_t prow = blockIdx.y * rows + grow;
      orow = part_o + prow * D;
      inv = 1.f;
      if (t == 0) part_ml[prow] = make_float2(m, l);
    }
#pragma unroll
    for (int j = 0; j < kOTiles; ++j) {
      *reinterpret_cast<float2*>(orow + j * 8 + 2 * t) =
          make_float2(o[j][2 * half] * inv, o[j][2 * half + 1] * inv);
    }
  }
}

// CTAs of one kernel instance that fit on the whole GPU at once, read once per instance.
template <int D, bool kBf16>
int resident_tc_ctas() {
  static const int n = [] {
    using L = TcLayout<D, kBf16>;
    KVC_CUDA_CHECK(cudaFuncSetAttribute(attention_tc_kernel<D, kBf16>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(L::kBytes)));
    int device = 0, sms = 0, per_sm = 0;
    KVC_CUDA_CHECK(cudaGetDevice(&device));
    KVC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    KVC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, attention_tc_kernel<D, kBf16>, kThreadsTc, L::kBytes));
    return std::max(1, sms * per_sm);
  }();
  return n;
}

template <int D, bool kBf16>
void launch_tc(const float* q, const float* k, const float* v, float* out, int64_t bh, int64_t nq,
               int64_t seq, double alpha) {
  using L = TcLayout<D, kBf16>;
  const int slots = resident_tc_ctas<D, kBf16>();  // also raises the shared-memory limit
  const int64_t q_tiles = (nq + kBQTc - 1) / kBQTc;
  const int64_t rows = bh * nq;
  const KeySplit split(bh * q_tiles, (seq + L::kBK - 1) / L::kBK, slots, rows, D);
  const float scale_log2 = static_cast<float>(alpha * 1.4426950408889634);  // alpha * log2(e)
  const dim3 grid(static_cast<unsigned>(bh * q_tiles), static_cast<unsigned>(split.splits));
  attention_tc_kernel<D, kBf16><<<grid, kThreadsTc, L::kBytes, stream()>>>(
      q, k, v, out, split.part_o, split.part_ml, static_cast<int>(nq), static_cast<int>(seq),
      static_cast<int>(q_tiles), static_cast<int>(split.split_tiles * L::kBK), scale_log2);
  KVC_CUDA_CHECK(cudaGetLastError());
  split.combine<D>(out, rows);
}

template <bool kBf16>
void dispatch_d(const float* q, const float* k, const float* v, float* out, int64_t bh, int64_t nq,
                int64_t seq, int64_t d, double alpha) {
  switch (d) {
    case 32:
      return launch_tc<32, kBf16>(q, k, v, out, bh, nq, seq, alpha);
    case 64:
      return launch_tc<64, kBf16>(q, k, v, out, bh, nq, seq, alpha);
    case 128:
      return launch_tc<128, kBf16>(q, k, v, out, bh, nq, seq, alpha);
    default:
      KVC_FAIL("attention_forward_tc: head size ", d, " has no tensor-core kernel");
  }
}

}  // namespace

void attention_forward_tc(const float* q, const float* k, const float* v, float* out,
                          int64_t batch_heads, int64_t nq, int64_t seq, int64_t d, double alpha,
                          MathPrecision precision) {
  KVC_CHECK(precision != MathPrecision::fp32,
            "attention_forward_tc: fp32 math has no tensor-core kernel");
  if (precision == MathPrecision::bf16) {
    dispatch_d<true>(q, k, v, out, batch_heads, nq, seq, d, alpha);
  } else {
    dispatch_d<false>(q, k, v, out, batch_heads, nq, seq, d, alpha);
  }
}

}  // namespace kvc::kernels::cuda
