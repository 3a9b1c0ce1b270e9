// CUDA fused attention forward (no grad), flash-attention style: one CTA per (batch-head, 64
// queries) walks the keys in tiles of 64 with an online softmax, so no (nq, seq) scores ever
// reach device memory. FP32 FFMA for d in {32, 64, 128}; a warp-per-query kernel otherwise.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/attention.h"
#include "kernels/cuda/common.cuh"

namespace kvc::kernels::cuda {

namespace {

constexpr int kBQ = 64;            // queries per CTA
constexpr int kBK = 64;            // keys per tile
constexpr int kTileThreads = 256;  // 16 x 16: each thread owns 4 rows x 4 key columns of S

// Shared-memory layout of the tiled kernel, in floats. Q and K rows are padded by 4 so that the
// 8 lanes of a float4 phase reading K rows tx, tx+1, ... land on disjoint banks; P rows by 16 so
// that the two half-warps (rows ty and ty + 1) write disjoint banks.
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

// Thread (ty, tx) = (tid / 16, tid % 16) owns query rows ty + 16 i (i < 4) and, in S, key
// columns tx + 16 j (j < 4); in O it owns D / 16 columns: float4 groups at g * 64 + 4 tx for
// D >= 64, a float2 at 2 tx for D = 32. The 16 threads of one row form a half-warp, so row
// maxima and sums are four xor-shuffles with no shared memory. Scores are kept in log2 units
// (q pre-scaled by alpha * log2(e)) so each probability is one exp2f.
template <int D>
__global__ void __launch_bounds__(kTileThreads)
    attention_tiled_kernel(const float* __restrict__ q, const float* __restrict__ k,
                           const float* __restrict__ v, float* __restrict__ out, int nq, int seq,
                           int q_tiles, float scale_log2) {
  using L = TileLayout<D>;
  constexpr int kVec = D / 4;     // float4s per row
  constexpr int kOCols = D / 16;  // O columns per thread
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  float* qs = smem + L::kQ;
  float* ks = smem + L::kK;
  float* vs = smem + L::kV;
  float* ps = smem + L::kP;

  const int bh = blockIdx.x / q_tiles;
  const int q0 = (blockIdx.x % q_tiles) * kBQ;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const float* qb = q + (static_cast<int64_t>(bh) * nq + q0) * D;
  const float* kb = k + static_cast<int64_t>(bh) * seq * D;
  const float* vb = v + static_cast<int64_t>(bh) * seq * D;

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

  float o[4][kOCols];
  float m[4], l[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int c = 0; c < kOCols; ++c) o[i][c] = 0.f;
  }

  for (int k0 = 0; k0 < seq; k0 += kBK) {
    __syncthreads();  // the previous tile's P V has finished reading ks, vs and ps
    // Rows past seq are zero: their P is zero, and 0 * garbage could be NaN.
    for (int i = tid; i < kBK * kVec; i += kTileThreads) {
      const int r = i / kVec, c = (i % kVec) * 4;
      float4 kx = make_float4(0.f, 0.f, 0.f, 0.f), vx = kx;
      if (k0 + r < seq) {
        const int64_t off = static_cast<int64_t>(k0 + r) * D + c;
        kx = *reinterpret_cast<const float4*>(kb + off);
        vx = *reinterpret_cast<const float4*>(vb + off);
      }
      *reinterpret_cast<float4*>(ks + r * L::kQKStride + c) = kx;
      *reinterpret_cast<float4*>(vs + r * D + c) = vx;
    }
    __syncthreads();

    float s[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) s[i][j] = 0.f;
    }
#pragma unroll 4
    for (int kk = 0; kk < D; kk += 4) {
      float4 qv[4], kv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        qv[i] = *reinterpret_cast<const float4*>(qs + (ty + 16 * i) * L::kQKStride + kk);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        kv[j] = *reinterpret_cast<const float4*>(ks + (tx + 16 * j) * L::kQKStride + kk);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          s[i][j] = fmaf(qv[i].x, kv[j].x, s[i][j]);
          s[i][j] = fmaf(qv[i].y, kv[j].y, s[i][j]);
          s[i][j] = fmaf(qv[i].z, kv[j].z, s[i][j]);
          s[i][j] = fmaf(qv[i].w, kv[j].w, s[i][j]);
        }
      }
    }

    const int valid = seq - k0;  // keys of this tile that exist
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (tx + 16 * j >= valid) s[i][j] = -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      }
      const float m_new = fmaxf(m[i], mx);
      // Accumulators so far are weighted by 2^-m_old; move them to 2^-m_new (0 on the first
      // tile, where m_old = -inf and they are zero anyway).
      const float corr = exp2f(m[i] - m_new);
      m[i] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float p = exp2f(s[i][j] - m_new);
        sum += p;
        ps[(ty + 16 * i) * L::kPStride + tx + 16 * j] = p;
      }
      l[i] = l[i] * corr + sum;  // this thread's share of the row sum; reduced at the end
#pragma unroll
      for (int c = 0; c < kOCols; ++c) o[i][c] *= corr;
    }
    __syncthreads();

#pragma unroll 2
    for (int j = 0; j < kBK; j += 4) {
      float4 pv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        pv[i] = *reinterpret_cast<const float4*>(ps + (ty + 16 * i) * L::kPStride + j);
      }
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const float* vrow = vs + (j + jj) * D;
        float vv[kOCols];
        if constexpr (D >= 64) {
#pragma unroll
          for (int g = 0; g < D / 64; ++g) {
            const float4 x = *reinterpret_cast<const float4*>(vrow + g * 64 + 4 * tx);
            vv[4 * g] = x.x;
            vv[4 * g + 1] = x.y;
            vv[4 * g + 2] = x.z;
            vv[4 * g + 3] = x.w;
          }
        } else {
          const float2 x = *reinterpret_cast<const float2*>(vrow + 2 * tx);
          vv[0] = x.x;
          vv[1] = x.y;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float p = jj == 0 ? pv[i].x : jj == 1 ? pv[i].y : jj == 2 ? pv[i].z : pv[i].w;
#pragma unroll
          for (int c = 0; c < kOCols; ++c) o[i][c] = fmaf(p, vv[c], o[i][c]);
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float sum = l[i];
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const int row = q0 + ty + 16 * i;
    if (row >= nq) continue;
    const float inv = 1.f / sum;
    float* orow = out + (static_cast<int64_t>(bh) * nq + row) * D;
    if constexpr (D >= 64) {
#pragma unroll
      for (int g = 0; g < D / 64; ++g) {
        *reinterpret_cast<float4*>(orow + g * 64 + 4 * tx) = make_float4(
            o[i][4 * g] * inv, o[i][4 * g + 1] * inv, o[i][4 * g + 2] * inv, o[i][4 * g + 3] * inv);
      }
    } else {
      *reinterpret_cast<float2*>(orow + 2 * tx) = make_float2(o[i][0] * inv, o[i][1] * inv);
    }
  }
}

template <int D>
void launch_tiled(const float* q, const float* k, const float* v, float* out, int64_t bh,
                  int64_t nq, int64_t seq, double alpha) {
  using L = TileLayout<D>;
  static const bool configured = [] {
    KVC_CUDA_CHECK(cudaFuncSetAttribute(attention_tiled_kernel<D>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(L::kBytes)));
    return true;
  }();
  (void)configured;
  const int64_t q_tiles = (nq + kBQ - 1) / kBQ;
  const float scale_log2 = static_cast<float>(alpha * 1.4426950408889634);  // alpha * log2(e)
  attention_tiled_kernel<D>
      <<<static_cast<unsigned>(bh * q_tiles), kTileThreads, L::kBytes, stream()>>>(
          q, k, v, out, static_cast<int>(nq), static_cast<int>(seq), static_cast<int>(q_tiles),
          scale_log2);
}

constexpr int kRowWarps = 4;  // query rows (one per warp) per block of the generic kernel

// Any d, any type: one warp per query row, 32 keys at a time (a lane per key for the scores),
// the row's accumulator and the 32 probabilities in shared memory. Slow but simple: float64 and
// odd head sizes are for tests and the CPU-matching path, not for speed.
template <typename T>
__global__ void attention_row_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                     const T* __restrict__ v, T* __restrict__ out, int64_t rows,
                                     int64_t nq, int64_t seq, int64_t d, T alpha) {
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
  for (int64_t k0 = 0; k0 < seq; k0 += 32) {
    const int64_t j = k0 + lane;
    T s = -INFINITY;
    if (j < seq) {
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
    const int64_t n = seq - k0 < 32 ? seq - k0 : 32;
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
                 int64_t d, double alpha) {
  const size_t bytes = sizeof(T) * static_cast<size_t>(kRowWarps * (d + 32));
  KVC_CHECK(bytes <= 48 * 1024, "attention_forward: head size ", d, " too large for the ",
            "generic CUDA kernel");
  const int64_t rows = bh * nq;
  const int64_t blocks = (rows + kRowWarps - 1) / kRowWarps;
  attention_row_kernel<T><<<static_cast<unsigned>(blocks), kRowWarps * 32, bytes, stream()>>>(
      q, k, v, out, rows, nq, seq, d, static_cast<T>(alpha));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T* out, int64_t batch_heads, int64_t nq,
                       int64_t seq, int64_t d, double alpha) {
  if (batch_heads <= 0 || nq <= 0 || d <= 0) return;
  KVC_CHECK(seq > 0, "attention_forward: seq must be positive (softmax over no keys)");
  KVC_CHECK(seq <= INT32_MAX && nq <= INT32_MAX && batch_heads * ((nq + kBQ - 1) / kBQ) < INT32_MAX,
            "attention_forward: sizes (", batch_heads, ", ", nq, ", ", seq, ") too large");
  bool done = false;
  if constexpr (std::is_same_v<T, float>) {
    const bool vec = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out);
    if (vec && d == 32) {
      launch_tiled<32>(q, k, v, out, batch_heads, nq, seq, alpha);
      done = true;
    } else if (vec && d == 64) {
      launch_tiled<64>(q, k, v, out, batch_heads, nq, seq, alpha);
      done = true;
    } else if (vec && d == 128) {
      launch_tiled<128>(q, k, v, out, batch_heads, nq, seq, alpha);
      done = true;
    }
  }
  if (!done) launch_rows<T>(q, k, v, out, batch_heads, nq, seq, d, alpha);
  KVC_CUDA_CHECK(cudaGetLastError());
}

#define KVC_INSTANTIATE(T)                                                                        \
  template void attention_forward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, \
                                     int64_t, double);
KVC_INSTANTIATE(float)
KVC_INSTANTIATE(double)
#undef KVC_INSTANTIATE

}  // namespace kvc::kernels::cuda
