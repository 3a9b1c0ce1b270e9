// CUDA fused attention forward (no grad), flash-attention style: one CTA per (batch-head, 128
// queries, key split) walks its keys in tiles of 64 with an online softmax, so no (nq, seq)
// scores ever reach device memory; splits (few query tiles, long keys) are merged by a small
// combine kernel. FP32 FFMA for d in {32, 64, 128} (tensor cores instead under tf32/bf16 math:
// attention_tc.cu); a warp-per-query kernel otherwise.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/attention.h"
#include "kernels/cuda/attention_split.cuh"
#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/precision.h"

namespace kvc::kernels::cuda {

namespace {

using namespace attention_detail;

constexpr int kBK = 64;                           // keys per tile
constexpr int kRowGroups = 16;                    // half-warps per CTA, one per group of query rows
constexpr int kRowsPerThread = 8;                 // query rows each thread owns (in S and in O)
constexpr int kBQ = kRowGroups * kRowsPerThread;  // 128 queries per CTA
constexpr int kTileThreads = 16 * kRowGroups;     // 256

// Shared-memory layout of the tiled kernel, in floats. Q and K rows are padded by 4 so that the
// 8 lanes of a float4 phase reading K rows cx, cx+1, ... land on disjoint banks and the two
// half-warps (query rows ry and ry + 1) read Q from disjoint banks; P rows are padded by 16 so
// that the two half-warps write disjoint banks. V needs no pad: both half-warps read one row.
template <int D>
struct TileLayout {
  static constexpr int kQKStride = D + 4;
  static constexpr int kPStride = kBK + 16;
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kBQ * kQKStride;
  static constexpr int kV = kK + kBK * kQKStride;
  static constexpr int kP = kV + kBK * D;
  static constexpr int kFloats = kP + kBQ * kPStride;
  static constexpr size_t kBytes = sizeof(float) * kFloats;
};

// One CTA per (batch-head, 128 queries, key split). Thread (ry, cx) = (tid / 16, tid % 16) owns
// query rows ry + 16 i (i < 8) and, in S, key columns cx + 16 t (t < 4); in O it owns D / 16
// columns: float4 groups at g * 64 + 4 cx for D >= 64, a float2 at 2 cx for D = 32. An 8-row
// block per thread halves the shared-memory loads per FMA of a 4-row one: per 4 steps of d a
// warp issues 8 Q loads (two rows: one wavefront each) and 4 K loads (16 rows: two each) for 128
// FMAs per thread. The 16 threads of one row form a half-warp, so row maxima and sums are four
// xor-shuffles. Scores are in log2 units (q pre-scaled by alpha * log2(e)): one exp2f each.
//
// K and V share one buffer each but never wait on the math: K of tile j + 1 is copied (cp.async)
// while P V of tile j runs, and V of tile j + 1 while S of tile j + 1 runs.
//
// The CTA covers keys [blockIdx.y * split_len, + split_len). With one split it writes the
// normalized output; otherwise the unnormalized O and its row (max, sum) go to part_o / part_ml,
// and attention_combine_kernel merges the splits.
//
// kMasked: row r sees keys below visible[r] only (causal targets). The CTA stops at the largest
// count of its rows, and a row whose keys all lie past it keeps a zero weight (its max stays
// -inf, so the exponent base is taken as 0). The unmasked kernel is compiled without any of it.
template <int D, bool kMasked>
__global__ void __launch_bounds__(kTileThreads, D == 128 ? 1 : 2)
    attention_tiled_kernel(const float* __restrict__ q, const float* __restrict__ k,
                           const float* __restrict__ v, KvHeads heads, AttentionDest out_to, int nq,
                           int seq, int q_tiles, int split_len, float scale_log2,
                           const int32_t* __restrict__ visible) {
  using L = TileLayout<D>;
  constexpr int kVec = D / 4;     // float4s per row
  constexpr int kOCols = D / 16;  // O columns per thread
  constexpr int R = kRowsPerThread;
  // Two steps of the inner loops in flight at once fit 255 registers (one CTA per SM); D = 32
  // and D = 64 run two CTAs per SM (128 registers), where they would spill. For D = 64 that
  // lets the nsa shape (128 query tiles, one wave at one CTA per SM) split its keys in two;
  // measured on an H100 it is ~2% faster (1.034 -> 1.012 ms): the kernel seems bound by issuing
  // FFMA and shared loads rather than by too few warps.
  constexpr int kUnroll = D == 128 ? 2 : 1;
  constexpr int kPW = D == 128 ? 4 : 2;  // P values per load: float2 keeps D <= 64 unspilled
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  float* qs = smem + L::kQ;
  float* ks = smem + L::kK;
  float* vs = smem + L::kV;
  float* ps = smem + L::kP;

  const int bh = blockIdx.x / q_tiles;
  const int q0 = (blockIdx.x % q_tiles) * kBQ;
  const int kbeg = blockIdx.y * split_len;
  int kend = min(seq, kbeg + split_len);
  const int tid = threadIdx.x, cx = tid & 15, ry = tid >> 4;
  __shared__ int row_limit[kMasked ? kBQ : 1];
  if constexpr (kMasked) {
    __shared__ int cta_limit;
    if (tid == 0) cta_limit = 0;
    __syncthreads();
    for (int r = tid; r < kBQ; r += kTileThreads) {
      const int lim = q0 + r < nq ? visible[static_cast<int64_t>(bh) * nq + q0 + r] : 0;
      row_limit[r] = lim;
      atomicMax(&cta_limit, lim);
    }
    __syncthreads();
    kend = max(kbeg, min(kend, cta_limit));
  }
  const float* qb = q + (static_cast<int64_t>(bh) * nq + q0) * D;
  const float* kb = k + static_cast<int64_t>(bh) * (heads.k ? heads.k : int64_t{seq} * D);
  const float* vb = v + static_cast<int64_t>(bh) * (heads.v ? heads.v : int64_t{seq} * D);

  // The first tile's copies fly while Q is scaled into shared memory.
  load_tile_async<D, kBK, L::kQKStride, kTileThreads>(ks, kb, kbeg, kend, tid);
  cp_async_commit();
  load_tile_async<D, kBK, D, kTileThreads>(vs, vb, kbeg, kend, tid);
  cp_async_commit();
  for (int i = tid; i < kBQ * kVec; i += kTileThreads) {
    const int r = i / kVec, c = (i % kVec) * 4;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (q0 + r < nq) {
      x = *reinterpret_cast<const float4*>(qb + static_cast<int64_t>(r) * D + c);
      x.x *= scale_log2;
      x.y *= scale_log2;
      x.z *= scale_log2;
      x.w *= scale_log2;
    }
    *reinterpret_cast<float4*>(qs + r * L::kQKStride + c) = x;
  }

  // The running max of row ry + 16 i is the same in all 16 lanes of the half-warp, so lane i of
  // the half-warp alone keeps it (m_row) and a shuffle hands it out once per tile: 7 registers
  // fewer, which D = 64 needs to run two CTAs per SM (128 registers) without spilling.
  const int half = tid & 16;  // first lane of this thread's half-warp
  float m_row = -INFINITY;
  float o[R][kOCols];
  float l[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    l[i] = 0.f;
#pragma unroll
    for (int c = 0; c < kOCols; ++c) o[i][c] = 0.f;
  }

  for (int k0 = kbeg; k0 < kend; k0 += kBK) {
    cp_async_wait<1>();  // this tile's K has landed (its V may still be in flight)
    __syncthreads();     // ... for every thread's copies, and Q on the first tile

    float s[R][4];
#pragma unroll
    for (int i = 0; i < R; ++i) {
#pragma unroll
      for (int t = 0; t < 4; ++t) s[i][t] = 0.f;
    }
#pragma unroll(kUnroll)
    for (int kk = 0; kk < D; kk += 4) {
      float4 kv[4];
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        kv[t] = *reinterpret_cast<const float4*>(ks + (cx + 16 * t) * L::kQKStride + kk);
      }
#pragma unroll
      for (int i = 0; i < R; ++i) {
        const float4 qv =
            *reinterpret_cast<const float4*>(qs + (ry + kRowGroups * i) * L::kQKStride + kk);
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          s[i][t] = fmaf(qv.x, kv[t].x, s[i][t]);
          s[i][t] = fmaf(qv.y, kv[t].y, s[i][t]);
          s[i][t] = fmaf(qv.z, kv[t].z, s[i][t]);
          s[i][t] = fmaf(qv.w, kv[t].w, s[i][t]);
        }
      }
    }

    const int valid = kend - k0;  // keys of this tile inside the split
#pragma unroll
    for (int i = 0; i < R; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        if (cx + 16 * t >= valid) s[i][t] = -INFINITY;
        if constexpr (kMasked) {
          if (k0 + cx + 16 * t >= row_limit[ry + kRowGroups * i]) s[i][t] = -INFINITY;
        }
        mx = fmaxf(mx, s[i][t]);
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      }
      const float m_old = __shfl_sync(0xffffffffu, m_row, half | i);
      const float m_seen = fmaxf(m_old, mx);
      // A row that has seen no key yet keeps the max -inf; its weights take base 0 (all zero).
      const float m_new = kMasked && m_seen == -INFINITY ? 0.f : m_seen;
      // Accumulators so far are weighted by 2^-m_old; move them to 2^-m_new (0 on the first
      // tile, where m_old = -inf and they are zero anyway).
      const float corr = exp2f(m_old - m_new);
      if (cx == i) m_row = m_seen;
      float sum = 0.f;
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const float p = exp2f(s[i][t] - m_new);
        sum += p;
        ps[(ry + kRowGroups * i) * L::kPStride + cx + 16 * t] = p;
      }
      l[i] = l[i] * corr + sum;  // this thread's share of the row sum; reduced at the end
#pragma unroll
      for (int c = 0; c < kOCols; ++c) o[i][c] *= corr;
    }
    cp_async_wait<0>();  // this tile's V has landed
    __syncthreads();     // P and V visible; every thread is done reading K
    if (k0 + kBK < kend)
      load_tile_async<D, kBK, L::kQKStride, kTileThreads>(ks, kb, k0 + kBK, kend, tid);
    cp_async_commit();  // possibly empty: keeps the group count the same every tile

#pragma unroll(kUnroll)
    for (int j = 0; j < kBK; j += kPW) {
      float pv[R][kPW];
#pragma unroll
      for (int i = 0; i < R; ++i) {
        const float* prow = ps + (ry + kRowGroups * i) * L::kPStride + j;
        if constexpr (kPW == 4) {
          const float4 x = *reinterpret_cast<const float4*>(prow);
          pv[i][0] = x.x;
          pv[i][1] = x.y;
          pv[i][2] = x.z;
          pv[i][3] = x.w;
        } else {
          const float2 x = *reinterpret_cast<const float2*>(prow);
          pv[i][0] = x.x;
          pv[i][1] = x.y;
        }
      }
#pragma unroll
      for (int jj = 0; jj < kPW; ++jj) {
        const float* vrow = vs + (j + jj) * D;
        float vv[kOCols];
        if constexpr (D >= 64) {
#pragma unroll
          for (int g = 0; g < D / 64; ++g) {
            const float4 x = *reinterpret_cast<const float4*>(vrow + g * 64 + 4 * cx);
            vv[4 * g] = x.x;
            vv[4 * g + 1] = x.y;
            vv[4 * g + 2] = x.z;
            vv[4 * g + 3] = x.w;
          }
        } else {
          const float2 x = *reinterpret_cast<const float2*>(vrow + 2 * cx);
          vv[0] = x.x;
          vv[1] = x.y;
        }
#pragma unroll
        for (int i = 0; i < R; ++i) {
#pragma unroll
          for (int c = 0; c < kOCols; ++c) o[i][c] = fmaf(pv[i][jj], vv[c], o[i][c]);
        }
      }
    }
    __syncthreads();  // every thread is done reading V and P
    if (k0 + kBK < kend) load_tile_async<D, kBK, D, kTileThreads>(vs, vb, k0 + kBK, kend, tid);
    cp_async_commit();
  }

  const int64_t rows = static_cast<int64_t>(gridDim.x / q_tiles) * nq;  // batch_heads * nq
#pragma unroll
  for (int i = 0; i < R; ++i) {
    float sum = l[i];
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const float m_i = __shfl_sync(0xffffffffu, m_row, half | i);
    const int row = q0 + ry + kRowGroups * i;
    if (row >= nq) continue;
    const int64_t grow = static_cast<int64_t>(bh) * nq + row;
    const OutputRow dst = output_row(out_to, grow, rows, D, m_i, sum, cx == 0);
    float* orow = dst.ptr;
    const float inv = dst.scale;
    if constexpr (D >= 64) {
#pragma unroll
      for (int g = 0; g < D / 64; ++g) {
        *reinterpret_cast<float4*>(orow + g * 64 + 4 * cx) = make_float4(
            o[i][4 * g] * inv, o[i][4 * g + 1] * inv, o[i][4 * g + 2] * inv, o[i][4 * g + 3] * inv);
      }
    } else {
      *reinterpret_cast<float2*>(orow + 2 * cx) = make_float2(o[i][0] * inv, o[i][1] * inv);
    }
  }
}

template <int D>
void launch_tiled(const float* q, const float* k, const float* v, float* out, int64_t bh,
                  int64_t nq, int64_t seq, double alpha, const int32_t* visible) {
  launch_split_attention<D, attention_tiled_kernel<D, false>, attention_tiled_kernel<D, true>>(
      kTileThreads, TileLayout<D>::kBytes, kBQ, kBK, q, k, v, out, bh, nq, seq, alpha, visible);
}

constexpr int kRowWarps = 4;  // query rows (one per warp) per block of the generic kernel

// Any d, any type: one warp per query row, 32 keys at a time (a lane per key for the scores),
// the row's accumulator and the 32 probabilities in shared memory. Slow but simple: float64 and
// odd head sizes are for tests and the CPU-matching path, not for speed.
template <typename T>
__global__ void attention_row_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                     const T* __restrict__ v, T* __restrict__ out, int64_t rows,
                                     int64_t nq, int64_t seq, int64_t d, T alpha,
                                     const int32_t* __restrict__ visible) {
  extern __shared__ unsigned char raw[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  T* acc = reinterpret_cast<T*>(raw) + warp * (d + 32);
  T* pw = acc + d;
  const int64_t row = blockIdx.x * int64_t{kRowWarps} + warp;
  if (row >= rows) return;  // whole warps only, and the kernel has no block barrier
  const int64_t b = row / nq;
  const T* qr = q + row * d;
  const T* kb = k + b * seq * d;
  const T* vb = v + b * seq * d;
  for (int64_t c = lane; c < d; c += 32) acc[c] = T(0);
  T m = -INFINITY, l = 0;
  const int64_t keys = visible ? min(seq, static_cast<int64_t>(visible[row])) : seq;
  for (int64_t k0 = 0; k0 < keys; k0 += 32) {
    const int64_t j = k0 + lane;
    T s = -INFINITY;
    if (j < keys) {
      T dot = 0;
      for (int64_t c = 0; c < d; ++c) dot += qr[c] * kb[j * d + c];
      s = dot * alpha;
    }
    const T m_new = max(m, warp_max(s));
    const T corr = exp(m - m_new);
    const T p = exp(s - m_new);
    l = l * corr + warp_sum(p);
    m = m_new;
    pw[lane] = p;
    __syncwarp();
    const int64_t n = keys - k0 < 32 ? keys - k0 : 32;
    for (int64_t c = lane; c < d; c += 32) {
      T a = acc[c] * corr;
      for (int64_t jj = 0; jj < n; ++jj) a += pw[jj] * vb[(k0 + jj) * d + c];
      acc[c] = a;
    }
    __syncwarp();  // pw is rewritten next round
  }
  const T inv = T(1) / l;
  for (int64_t c = lane; c < d; c += 32) out[row * d + c] = acc[c] * inv;
}

template <typename T>
void launch_rows(const T* q, const T* k, const T* v, T* out, int64_t bh, int64_t nq, int64_t seq,
                 int64_t d, double alpha, const int32_t* visible) {
  const size_t bytes = sizeof(T) * static_cast<size_t>(kRowWarps * (d + 32));
  KVC_CHECK(bytes <= 48 * 1024, "attention_forward: head size ", d, " too large for the ",
            "generic CUDA kernel");
  const int64_t rows = bh * nq;
  const int64_t blocks = (rows + kRowWarps - 1) / kRowWarps;
  attention_row_kernel<T><<<static_cast<unsigned>(blocks), kRowWarps * 32, bytes, stream()>>>(
      q, k, v, out, rows, nq, seq, d, static_cast<T>(alpha), visible);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

bool g_fp32_on_tensor_cores = true;  // set_split_fp32_attention

}  // namespace

void set_split_fp32_attention(bool on) { g_fp32_on_tensor_cores = on; }

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T* out, int64_t batch_heads, int64_t nq,
                       int64_t seq, int64_t d, double alpha, const int32_t* visible) {
  if (batch_heads <= 0 || nq <= 0 || d <= 0) return;
  KVC_CHECK(seq > 0, "attention_forward: seq must be positive (softmax over no keys)");
  KVC_CHECK(seq <= INT32_MAX && nq <= INT32_MAX && batch_heads * ((nq + kBQ - 1) / kBQ) < INT32_MAX,
            "attention_forward: sizes (", batch_heads, ", ", nq, ", ", seq, ") too large");
  bool done = false;
  if constexpr (std::is_same_v<T, float>) {
    const bool vec = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out);
    const MathPrecision precision = math_precision();
    if (vec && precision != MathPrecision::fp32 && attention_tc_supports(d)) {
      attention_forward_tc(q, k, v, out, batch_heads, nq, seq, d, alpha, precision, visible);
      done = true;
    } else if (vec && (d == 64 || d == 128) && g_fp32_on_tensor_cores &&
               attention_wgmma_available()) {
      // Float32 math from split TF32 operands on Hopper: ~2x the FFMA kernel at `nsa`.
      attention_forward_wgmma_split(q, k, v, out, batch_heads, nq, seq, d, alpha, visible);
      done = true;
    } else if (vec && d == 32) {
      launch_tiled<32>(q, k, v, out, batch_heads, nq, seq, alpha, visible);
      done = true;
    } else if (vec && d == 64) {
      launch_tiled<64>(q, k, v, out, batch_heads, nq, seq, alpha, visible);
      done = true;
    } else if (vec && d == 128) {
      launch_tiled<128>(q, k, v, out, batch_heads, nq, seq, alpha, visible);
      done = true;
    }
  }
  if (!done) launch_rows<T>(q, k, v, out, batch_heads, nq, seq, d, alpha, visible);
  KVC_CUDA_CHECK(cudaGetLastError());
}

KVC_ATTENTION_INSTANTIATE(float)
KVC_ATTENTION_INSTANTIATE(double)

}  // namespace kvc::kernels::cuda
