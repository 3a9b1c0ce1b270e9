// The attention pools' layer fused on tensor cores (see kernels/attention_pool.h). One CTA of 8
// warps walks the windows of one head: a window's n x d block (sequence rows plus positions)
// comes from global memory once per pass into shared memory, prefetched into registers while
// the window before it is computed; logits = x W^T and, in backward, dW += dlogits^T x are
// tensor-core products with float32 accumulation; the softmax over the block and the pooled sum
// run in float32 from the float32 block. Backward recomputes the logits instead of storing them.
// The positions' gradient is the sum over windows of dx = gy a + dlogits W, and W is the same for
// every window: a CTA sums gy a and dlogits over its windows and multiplies by W once at its end.
// Each CTA writes its dW and positions' parts once; a second kernel adds the CTAs' parts in a
// fixed order. Two kernels: bf16 runs on mma.sync with the logits and the softmax in registers
// (attention_pool_mma_kernel); tf32 and fp32 (three TF32 products of split operands) on wmma
// with the logits in shared memory (attention_pool_kernel).
#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/attention_pool.h"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma_sync.cuh"
#include "kernels/precision.h"

namespace kvc::kernels::cuda {

namespace {

using namespace nvcuda;

constexpr int kPoolWarps = 8;
constexpr int kPoolThreads = 32 * kPoolWarps;

// How the products round their operands: tf32 (10-bit mantissas), bf16 (7 bits; the mma.sync
// kernel), or tf32x3 for float32 math: each float32 operand split into a TF32 part and a TF32
// remainder, a b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi (three tensor-core products, about
// float32's accuracy).
enum class PoolMode { tf32, bf16, tf32x3 };

// The wmma kernel's shapes and operands (tf32 and tf32x3): fragments load from float32 shared
// memory and are rounded (split) as they load.
template <PoolMode kMode>
struct PoolMma {
  static_assert(kMode != PoolMode::bf16, "attention_pool: bf16 runs the mma.sync kernel");
  static constexpr bool kSplit = kMode == PoolMode::tf32x3;
  using Op = float;
  using Tag = wmma::precision::tf32;
  static constexpr int kK = 8;
  template <typename F>
  struct Parts {
    F hi, lo;  // lo: the remainder, tf32x3 only
  };
  template <typename L>
  using A = Parts<wmma::fragment<wmma::matrix_a, 16, 16, kK, Tag, L>>;
  template <typename L>
  using B = Parts<wmma::fragment<wmma::matrix_b, 16, 16, kK, Tag, L>>;
  using C = wmma::fragment<wmma::accumulator, 16, 16, kK, float>;

  template <typename F>
  static __device__ __forceinline__ void load(Parts<F>& f, const Op* p, int ld) {
    wmma::load_matrix_sync(f.hi, p, ld);
#pragma unroll
    for (int i = 0; i < f.hi.num_elements; ++i) {
      const float v = f.hi.x[i], hi = wmma::__float_to_tf32(v);
      f.hi.x[i] = hi;
      if constexpr (kSplit) f.lo.x[i] = wmma::__float_to_tf32(v - hi);
    }
  }
  // acc += a b
  template <typename FA, typename FB>
  static __device__ __forceinline__ void mac(C& acc, const Parts<FA>& a, const Parts<FB>& b) {
    if constexpr (kSplit) {  // the small products first
      wmma::mma_sync(acc, a.lo, b.hi, acc);
      wmma::mma_sync(acc, a.hi, b.lo, acc);
    }
    wmma::mma_sync(acc, a.hi, b.hi, acc);
  }
};

// Shared memory, byte offsets. Rows of kLd = D + 8 elements (a multiple of 8, so every wmma tile
// starts 32-byte aligned; the 8 extra elements shift consecutive rows across banks).
template <int N, int D>
struct PoolLayout {
  static constexpr int kLd = D + 8;
  static constexpr size_t kBlock = size_t{4} * N * kLd;   // one float32 n x d block
  static constexpr size_t kW = 0;                         // W (out, in)
  static constexpr size_t kX = kW + size_t{4} * D * kLd;  // x = rows + positions
  static constexpr size_t kL = kX + kBlock;               // logits, then their gradient
  static constexpr size_t kRed = kL + kBlock;             // the softmax's partial max, sum, pooled
  static constexpr size_t kG = kRed + size_t{4} * 3 * kPoolThreads;  // sum of gy a over windows
  static constexpr size_t kS = kG + kBlock;                          // sum of dlogits
  static constexpr size_t kForwardBytes = kG;
  static constexpr size_t kBackwardBytes = kS + kBlock;
};

// The mma instance of a precision and the wmma tile counts of an n x d block.
template <int N, int D, PoolMode kMode>
struct PoolTiles {
  using M = PoolMma<kMode>;
  using Op = typename M::Op;
  static constexpr int kLd = PoolLayout<N, D>::kLd;
  // (n, d) products: warp w owns column tile w % kColWarps and every kRowGroups-th row tile
  // from w / kColWarps, so each B fragment it loads feeds all of its row tiles.
  static constexpr int kColWarps = D / 16 < kPoolWarps ? D / 16 : kPoolWarps;
  static constexpr int kRowGroups = kPoolWarps / kColWarps;
  static constexpr int kMine = (N / 16 + kRowGroups - 1) / kRowGroups;
  // dW (d, d): warp w owns kWPerWarp consecutive tiles of one tile row.
  static constexpr int kWPerWarp = (D / 16) * (D / 16) / kPoolWarps;
  static_assert(kPoolWarps % kColWarps == 0 && kWPerWarp >= 1 && (D / 16) % kWPerWarp == 0,
                "attention_pool: warp tiling");

  // The B fragments of W^T load per window: TF32 fragments would take 2-4x the registers the
  // mma.sync kernel's bf16 ones keep for a CTA's run.
  static constexpr int kKSteps = D / M::kK;

  // out (n, d) = (init or 0) + a (n, d) B, B = W^T (kTransposed, W in shared memory (out, in)) or
  // W; a row-major of stride kLd; init and out of stride ld (shared or global memory).
  template <bool kTransposed>
  static __device__ __forceinline__ void rows_times_w(const Op* a, const Op* w, const float* init,
                                                      float* out, int ld, int warp) {
    using LayoutB = std::conditional_t<kTransposed, wmma::col_major, wmma::row_major>;
    const int tn = warp % kColWarps, g = warp / kColWarps;
    typename M::C acc[kMine];
#pragma unroll
    for (int i = 0; i < kMine; ++i) {
      const int tm = g + i * kRowGroups;
      if (tm >= N / 16) break;
      if (init) {
        wmma::load_matrix_sync(acc[i], init + tm * 16 * ld + tn * 16, ld, wmma::mem_row_major);
      } else {
        wmma::fill_fragment(acc[i], 0.0f);
      }
    }
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      const int k0 = ks * M::kK;
      typename M::template B<LayoutB> fb;  // B[k][o] = W[o][k] (transposed) or W[k][o]
      M::load(fb, kTransposed ? w + tn * 16 * kLd + k0 : w + k0 * kLd + tn * 16, kLd);
#pragma unroll
      for (int i = 0; i < kMine; ++i) {
        const int tm = g + i * kRowGroups;
        if (tm >= N / 16) break;
        typename M::template A<wmma::row_major> fa;
        M::load(fa, a + tm * 16 * kLd + k0, kLd);
        M::mac(acc[i], fa, fb);
      }
    }
#pragma unroll
    for (int i = 0; i < kMine; ++i) {
      const int tm = g + i * kRowGroups;
      if (tm >= N / 16) break;
      wmma::store_matrix_sync(out + tm * 16 * ld + tn * 16, acc[i], ld, wmma::mem_row_major);
    }
  }
};

struct PoolGrid {
  int chunks;         // CTAs per head
  int64_t per_chunk;  // windows per CTA
};

template <int N, int D, PoolMode kMode, bool kBackward>
__global__ void __launch_bounds__(kPoolThreads, kBackward ? 1 : 2)
    attention_pool_kernel(AttentionPoolArgs a, PoolGrid grid, const float* __restrict__ gy,
                          float* __restrict__ y, float* __restrict__ part_w,
                          float* __restrict__ part_pos) {
  using M = PoolMma<kMode>;
  using Lay = PoolLayout<N, D>;
  constexpr int kLd = Lay::kLd;
  constexpr int kVec4 = N * D / 4;  // float4s per block
  constexpr int kPerThread = (kVec4 + kPoolThreads - 1) / kPoolThreads;
  using Tiles = PoolTiles<N, D, kMode>;
  constexpr int kWPerWarp = Tiles::kWPerWarp;
  constexpr int kParts = kPoolThreads / D;  // threads per column in the softmax
  constexpr int kRows = N / kParts;         // rows per thread
  static_assert(kPoolThreads % D == 0 && N % kParts == 0, "attention_pool: column split");

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // tf32 wmma needs sm_80; attention_pool_fits refuses older GPUs
#else
  extern __shared__ __align__(128) unsigned char smem[];
  float* sw = reinterpret_cast<float*>(smem + Lay::kW);
  float* sx = reinterpret_cast<float*>(smem + Lay::kX);
  float* sl = reinterpret_cast<float*>(smem + Lay::kL);
  float* sg = reinterpret_cast<float*>(smem + Lay::kG);
  float* red = reinterpret_cast<float*>(smem + Lay::kRed);
  float* ss = reinterpret_cast<float*>(smem + Lay::kS);

  const int tid = threadIdx.x, warp = tid / 32;
  const int64_t head = blockIdx.x / grid.chunks, chunk = blockIdx.x % grid.chunks;
  const int64_t w = (a.s - N) / a.stride + 1, windows = a.b * w;
  const int64_t j0 = min(windows, chunk * grid.per_chunk);
  const int64_t j1 = min(windows, j0 + grid.per_chunk);

  for (int e = tid; e < D * D; e += kPoolThreads) sw[(e / D) * kLd + e % D] = a.weight[e];
  if constexpr (kBackward) {
    for (int e = tid; e < N * D; e += kPoolThreads) {
      sg[(e / D) * kLd + e % D] = 0.0f;
      ss[(e / D) * kLd + e % D] = 0.0f;
    }
  }
  __syncthreads();  // W is in shared memory
  typename M::C dw[kWPerWarp];
#pragma unroll
  for (int i = 0; i < kWPerWarp; ++i) wmma::fill_fragment(dw[i], 0.0f);

  const float4* pos4 = reinterpret_cast<const float4*>(a.positions + head * N * D);
  // Window j is window wi of batch row bi, j = bi * w + wi. The loop walks j upward, so both are
  // stepped instead of divided (64-bit division costs ~100 instructions a thread, per window).
  struct WindowAt {
    int64_t bi, wi;
    __device__ void step(int64_t w) {
      if (++wi == w) wi = 0, ++bi;
    }
  };
  WindowAt now{j0 / w, j0 % w}, ahead = now;  // the window computed, the one fetched
  float4 next[kPerThread];
  auto fetch = [&](const WindowAt& at) {  // a window's rows into registers
    const float4* src = reinterpret_cast<const float4*>(
        a.seq + ((at.bi * a.h + head) * a.s + at.wi * a.stride) * D);
#pragma unroll
    for (int v = 0; v < kPerThread; ++v) {
      const int i = tid + v * kPoolThreads;
      if (i < kVec4) next[v] = __ldcs(src + i);  // streamed: each block is read once a pass
    }
  };
  if (j0 < j1) fetch(ahead);
  // Every window adds the same positions: the forward keeps this thread's in registers; the
  // backward has none to spare and reads them per window (L1 hits).
  float4 pos[kBackward ? 1 : kPerThread];
  if constexpr (!kBackward) {
#pragma unroll
    for (int v = 0; v < kPerThread; ++v) {
      const int i = tid + v * kPoolThreads;
      if (i < kVec4) pos[v] = __ldg(pos4 + i);
    }
  }

  for (int64_t j = j0; j < j1; ++j, now.step(w)) {
    __syncthreads();  // the previous window is done with the block buffers
#pragma unroll
    for (int v = 0; v < kPerThread; ++v) {
      const int i = tid + v * kPoolThreads;
      if (i >= kVec4) continue;
      const float4 p = kBackward ? __ldg(pos4 + i) : pos[kBackward ? 0 : v];
      const float4 x =
          make_float4(next[v].x + p.x, next[v].y + p.y, next[v].z + p.z, next[v].w + p.w);
      const int r = 4 * i / D, c = 4 * i % D;
      *reinterpret_cast<float4*>(sx + r * kLd + c) = x;
    }
    __syncthreads();
    if (j + 1 < j1) {  // in flight while this window computes
      ahead.step(w);
      fetch(ahead);
    }

    // logits (n, d) = x (n, d) W^T
    Tiles::template rows_times_w<true>(sx, sw, nullptr, sl, kLd, warp);
    __syncthreads();

    // Per column: softmax over the block's rows, the pooled value; backward: the direct part of
    // dx (gy a) into the positions' sum and dlogits = alpha a gy (x - y) in place of the logits.
    // kParts threads share a column, kRows rows each, held in registers (unrolled: the loads
    // and exps of a thread's rows are independent), their partial max and sums met in `red`.
    const int64_t out = ((now.bi * a.h + head) * w + now.wi) * D;
    const int c = tid % D, part = tid / D, r0 = part * kRows;
    const float g = kBackward ? gy[out + c] : 0.0f;  // loaded early: its latency hides
    float l[kRows], xv[kRows];
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      l[i] = a.alpha * sl[(r0 + i) * kLd + c];
      xv[i] = sx[(r0 + i) * kLd + c];
      mx = fmaxf(mx, l[i]);
    }
    red[part * D + c] = mx;
    __syncthreads();
    mx = red[c];
#pragma unroll
    for (int p = 1; p < kParts; ++p) mx = fmaxf(mx, red[p * D + c]);
    float sum = 0.0f, pooled = 0.0f;
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      l[i] = __expf(l[i] - mx);  // now the unnormalized weight
      sum += l[i];
      pooled += l[i] * xv[i];
    }
    red[(kParts + part) * D + c] = sum;
    red[(2 * kParts + part) * D + c] = pooled;
    __syncthreads();
    sum = 0.0f;
    pooled = 0.0f;
#pragma unroll
    for (int p = 0; p < kParts; ++p) {
      sum += red[(kParts + p) * D + c];
      pooled += red[(2 * kParts + p) * D + c];
    }
    const float inv = 1.0f / sum, yc = pooled * inv;
    if constexpr (!kBackward) {
      if (part == 0) y[out + c] = yc;
    } else {
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int at = (r0 + i) * kLd + c;
        const float p = l[i] * inv;
        sg[at] += g * p;
        const float dl = a.alpha * p * g * (xv[i] - yc);
        ss[at] += dl;
        sl[at] = dl;
      }
    }
    if constexpr (kBackward) {
      __syncthreads();
      // dW (d, d) += dlogits^T (d, n) x (n, d): this warp's tiles share one A fragment.
      const int tm = warp * kWPerWarp / (D / 16);
#pragma unroll
      for (int k0 = 0; k0 < N; k0 += M::kK) {
        typename M::template A<wmma::col_major> fa;
        M::load(fa, sl + k0 * kLd + tm * 16, kLd);
#pragma unroll
        for (int i = 0; i < kWPerWarp; ++i) {
          const int tn = (warp * kWPerWarp + i) % (D / 16);
          typename M::template B<wmma::row_major> fb;
          M::load(fb, sx + k0 * kLd + tn * 16, kLd);
          M::mac(dw[i], fa, fb);
        }
      }
    }
  }
  if constexpr (kBackward) {
    float* my_w = part_w + blockIdx.x * int64_t{D * D};
#pragma unroll
    for (int i = 0; i < kWPerWarp; ++i) {
      const int t = warp * kWPerWarp + i, tm = t / (D / 16), tn = t % (D / 16);
      wmma::store_matrix_sync(my_w + tm * 16 * D + tn * 16, dw[i], D, wmma::mem_row_major);
    }
    // The positions' part: sum of gy a + (sum of dlogits) W.
    __syncthreads();
    float* my_pos = part_pos + blockIdx.x * int64_t{N * D};  // blockIdx = head * chunks + chunk
    Tiles::template rows_times_w<false>(ss, sw, sg, sg, kLd, warp);
    __syncthreads();
    for (int e = tid; e < N * D; e += kPoolThreads) my_pos[e] = sg[(e / D) * kLd + e % D];
  }
#endif
}

// The bf16 layer on mma.sync, its logits never leaving registers. Warp w owns the 16 output
// columns [16 ct, 16 ct + 16), ct = w % kColWarps, of window slot w / kColWarps: a CTA step covers
// kWin = 8 / kColWarps consecutive windows (1 at d = 128, 2 at d = 64). The B fragments of W^T
// for the warp's columns are read from global memory once and stay in registers (d / 4 of them);
// a step's blocks (sequence rows plus positions) land in shared memory as float32 and as bf16,
// the A fragments come from the bf16 copy by ldmatrix, and the softmax over a block's rows runs
// on the accumulators: a column's rows lie in the 8 lanes of equal t (three xor-shuffles). The
// pooled sum reads the float32 rows. Two barriers a step, none between the product and the output
// (the wmma kernel stores the logits and meets at four).
//
// Backward, per window and on the same accumulators: dlogits = alpha a gy (x - y), the float32
// rows read once into registers (gy fetched a window ahead with the blocks); gy a and dlogits add
// into this thread's sums over its windows, registers in the logits' fragment layout; the warp
// writes its dlogits columns in bf16 to shared memory and, after a __syncwarp only, adds
// dlogits^T x to the 16 rows of dW its columns index: both operands by ldmatrix.trans (dlogits
// and x are stored row by row; the product runs over the block's rows), the d / 2 accumulators of
// a 16 x d slice of dW in registers for the CTA's whole run. That is ~254 registers: one CTA an
// SM (a form with the sums in shared memory and two CTAs an SM spilled and ran slower). At the end
// each warp writes its dW slice (a part per window slot), the sums go to shared memory, and the
// positions' part G + S W comes from the slots' sums on mma.sync (S rounded to bf16 once, as the
// wmma kernel does).
template <int N, int D>
struct PoolMmaLayout {
  static constexpr int kColWarps = D / 16;
  static constexpr int kWin = kPoolWarps / kColWarps;  // windows per step
  static constexpr int kRows = kWin * N;               // block rows per step
  static constexpr int kLdX = D + 4;                   // float32 rows
  // bf16 rows: 16-byte aligned, and the 8 rows an ldmatrix reads at once on distinct banks
  static constexpr int kLdOp = D + 8;
  static constexpr size_t kX = 0;
  static constexpr size_t kXOp = kX + size_t{4} * kRows * kLdX;
  static constexpr size_t kForwardBytes = kXOp + size_t{2} * kRows * kLdOp;
  // Backward: bf16 dlogits; for the end only, the float32 sums of gy a (G) and of dlogits (S)
  // per window slot and W (out, in) in bf16 for the positions' product G + S W.
  static constexpr size_t kDl = kForwardBytes;
  static constexpr size_t kG = kDl + size_t{2} * kRows * kLdOp;
  static constexpr size_t kS = kG + size_t{4} * kRows * kLdX;
  static constexpr size_t kW = kS + size_t{4} * kRows * kLdX;
  static constexpr size_t kBackwardBytes = kW + size_t{2} * D * kLdOp;
};

// Forward: y. seq16, where not null, gets the bf16 rounding of every sequence element the CTA
// reads (the launcher passes it only where the windows tile the sequence, so that every element
// is written once): the attention target's copy of K or V (bf16_copy_to_fill), at 2 bytes an
// element instead of a pass of 6. Backward: from gy, this CTA's dW parts (one per window slot,
// part_w[blockIdx * kWin + slot]) and its positions' part (part_pos[blockIdx]).
template <int N, int D, bool kBackward>
__global__ void __launch_bounds__(kPoolThreads, kBackward ? 1 : 2)
    attention_pool_mma_kernel(AttentionPoolArgs a, PoolGrid grid, const float* __restrict__ gy,
                              float* __restrict__ y, uint16_t* __restrict__ seq16,
                              float* __restrict__ part_w, float* __restrict__ part_pos) {
  using L = PoolMmaLayout<N, D>;
  constexpr int kMTiles = N / 16, kKSteps = D / 16, kNTiles = D / 8;
  constexpr int kWinVec4 = N * D / 4;  // float4s per block
  constexpr int kPerThread = L::kWin * kWinVec4 / kPoolThreads;
  static_assert(kWinVec4 % kPoolThreads == 0, "attention_pool: whole float4s per thread");

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync bf16 needs sm_80; attention_pool_fits refuses older GPUs
#else
  extern __shared__ __align__(128) unsigned char smem[];
  float* sx = reinterpret_cast<float*>(smem + L::kX);
  uint16_t* xop = reinterpret_cast<uint16_t*>(smem + L::kXOp);
  uint16_t* sdl = reinterpret_cast<uint16_t*>(smem + L::kDl);
  float* sg = reinterpret_cast<float*>(smem + L::kG);
  float* ss = reinterpret_cast<float*>(smem + L::kS);
  uint16_t* sw = reinterpret_cast<uint16_t*>(smem + L::kW);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int ct = warp % L::kColWarps, slot = warp / L::kColWarps;
  const int64_t head = blockIdx.x / grid.chunks, chunk = blockIdx.x % grid.chunks;
  const int64_t w = (a.s - N) / a.stride + 1, windows = a.b * w;
  const int64_t j0 = min(windows, chunk * grid.per_chunk);
  const int64_t j1 = min(windows, j0 + grid.per_chunk);

  // B[k][n] = W[n][k], n this warp's columns (two 8-column tiles), k every step of 16.
  uint32_t wt[kKSteps][2][2];
  if constexpr (kBackward) {  // W in bf16 for the positions' product at the end
    for (int e = 2 * tid; e < D * D; e += 2 * kPoolThreads) {
      const float2 v = __ldg(reinterpret_cast<const float2*>(a.weight + e));
      *reinterpret_cast<uint32_t*>(sw + (e / D) * L::kLdOp + e % D) = pack_bf16(v.x, v.y);
    }
  }
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
    for (int nj = 0; nj < 2; ++nj) {
      const float* row = a.weight + (ct * 16 + nj * 8 + g) * D + ks * 16 + 2 * t;
      const float2 lo = __ldg(reinterpret_cast<const float2*>(row));
      const float2 hi = __ldg(reinterpret_cast<const float2*>(row + 8));
      wt[ks][nj][0] = pack_bf16(lo.x, lo.y);
      wt[ks][nj][1] = pack_bf16(hi.x, hi.y);
    }
  }
  // Backward: rows [16 ct, 16 ct + 16) of dW, all d columns: element e of dw[nt] is row
  // 16 ct + g + 8 (e / 2), column 8 nt + 2 t + e % 2.
  float dw[kBackward ? kNTiles : 1][4] = {};
  // Backward: this warp's elements of the sums of gy a and of dlogits over its windows, in the
  // logits' fragment layout.
  float gsum[kBackward ? kMTiles : 1][2][4] = {}, ssum[kBackward ? kMTiles : 1][2][4] = {};

  const float4* pos4 = reinterpret_cast<const float4*>(a.positions + head * N * D);
  struct WindowAt {  // window wi of batch row bi; stepped, never divided (see the wmma kernel)
    int64_t bi, wi;
    __device__ void step(int64_t w) {
      if (++wi == w) wi = 0, ++bi;
    }
  };
  // Where window `at`'s block starts in the sequence (float32 elements).
  const auto block_start = [&](WindowAt at) {
    return ((at.bi * a.h + head) * a.s + at.wi * a.stride) * D;
  };
  float4 next[kPerThread];
  auto fetch = [&](WindowAt at, int64_t j) {  // the blocks of windows j, j + 1, ... into registers
#pragma unroll
    for (int v = 0; v < kPerThread; ++v) {
      const int ws = v * kPoolThreads / kWinVec4, i = (tid + v * kPoolThreads) % kWinVec4;
      if (v > 0 && ws != (v - 1) * kPoolThreads / kWinVec4) at.step(w);
      if (j + ws < j1) {
        next[v] = __ldcs(reinterpret_cast<const float4*>(a.seq + block_start(at)) + i);
      }
    }
  };
  // The output row of window `at` at this warp's columns 16 ct + 2 t (+ 8 nj, + 1).
  const auto out_at = [&](WindowAt at) {
    return ((at.bi * a.h + head) * w + at.wi) * D + ct * 16 + 2 * t;
  };
  // Backward: gy there for this warp's window of the step starting at `at`, fetched a step ahead
  // like the blocks (loaded where it is used, its latency would stall every window).
  float gnext[2][2];
  auto fetch_gy = [&](WindowAt at, int64_t j) {
    if (!kBackward || j + slot >= j1) return;
    if (slot > 0) at.step(w);
    const float* src = gy + out_at(at);
#pragma unroll
    for (int nj = 0; nj < 2; ++nj)
      gnext[nj][0] = __ldg(src + nj * 8), gnext[nj][1] = __ldg(src + nj * 8 + 1);
  };
  WindowAt first{j0 / w, j0 % w};  // the step's first window
  if (j0 < j1) fetch(first, j0), fetch_gy(first, j0);

  for (int64_t j = j0; j < j1; j += L::kWin) {
    __syncthreads();  // the step before is done with the blocks
#pragma unroll
    for (int v = 0; v < kPerThread; ++v) {
      const int ws = v * kPoolThreads / kWinVec4, i = (tid + v * kPoolThreads) % kWinVec4;
      const float4 p = __ldg(pos4 + i);
      const float4 x =
          make_float4(next[v].x + p.x, next[v].y + p.y, next[v].z + p.z, next[v].w + p.w);
      const int r = ws * N + 4 * i / D, c = 4 * i % D;
      *reinterpret_cast<float4*>(sx + r * L::kLdX + c) = x;
      *reinterpret_cast<uint2*>(xop + r * L::kLdOp + c) =
          make_uint2(pack_bf16(x.x, x.y), pack_bf16(x.z, x.w));
      if (!kBackward && seq16 != nullptr && j + ws < j1) {
        WindowAt at = first;
        for (int k = 0; k < ws; ++k) at.step(w);
        *reinterpret_cast<uint2*>(seq16 + block_start(at) + 4 * i) =
            make_uint2(pack_bf16(next[v].x, next[v].y), pack_bf16(next[v].z, next[v].w));
      }
    }
    __syncthreads();
    WindowAt mine = first;  // this warp's window
    if (slot > 0) mine.step(w);
    for (int s = 0; s < L::kWin; ++s) first.step(w);
    float gv[2][2];
#pragma unroll
    for (int nj = 0; nj < 2; ++nj) gv[nj][0] = gnext[nj][0], gv[nj][1] = gnext[nj][1];
    if (j + L::kWin < j1) {  // in flight while this step computes
      fetch(first, j + L::kWin);
      fetch_gy(first, j + L::kWin);
    }
    if (j + slot >= j1) continue;  // past the CTA's last window (warp-uniform; no barrier below)
    const int64_t out = out_at(mine);

    // logits (this warp's block rows, its 16 columns) = x W^T
    float acc[kMTiles][2][4];
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
      for (int nj = 0; nj < 2; ++nj)
        acc[mi][nj][0] = acc[mi][nj][1] = acc[mi][nj][2] = acc[mi][nj][3] = 0.f;
    }
    const uint16_t* xs = xop + (slot * N + (lane & 15)) * L::kLdOp + (lane >> 4) * 8;
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi) {
        uint32_t af[4];
        ldmatrix_x4(af, xs + mi * 16 * L::kLdOp + ks * 16);
        mma_bf16(acc[mi][0], af, wt[ks][0][0], wt[ks][0][1]);
        mma_bf16(acc[mi][1], af, wt[ks][1][0], wt[ks][1][1]);
      }
    }

    // Per column: the softmax over the block's rows and the pooled value. Element e of
    // acc[mi][nj] is row 16 mi + g + 8 (e / 2), column 16 ct + 8 nj + 2 t + e % 2.
    const int row0 = slot * N + g, col0 = ct * 16 + 2 * t;
    const float* xrow = sx + row0 * L::kLdX + col0;
#pragma unroll
    for (int nj = 0; nj < 2; ++nj) {
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          acc[mi][nj][e] *= a.alpha;
          mx[e % 2] = fmaxf(mx[e % 2], acc[mi][nj][e]);
        }
      }
      float sum[2] = {0.f, 0.f}, pooled[2] = {0.f, 0.f};
#pragma unroll
      for (int c = 0; c < 2; ++c) {
#pragma unroll
        for (int o = 4; o < 32; o <<= 1)
          mx[c] = fmaxf(mx[c], __shfl_xor_sync(0xffffffffu, mx[c], o));
      }
      float2 xv[kMTiles][2];  // the float32 rows, read once
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float2 x = xv[mi][h] =
              *reinterpret_cast<const float2*>(xrow + (mi * 16 + 8 * h) * L::kLdX + nj * 8);
          const float p0 = __expf(acc[mi][nj][2 * h] - mx[0]);
          const float p1 = __expf(acc[mi][nj][2 * h + 1] - mx[1]);
          if constexpr (kBackward) acc[mi][nj][2 * h] = p0, acc[mi][nj][2 * h + 1] = p1;
          sum[0] += p0;
          sum[1] += p1;
          pooled[0] += p0 * x.x;
          pooled[1] += p1 * x.y;
        }
      }
#pragma unroll
      for (int c = 0; c < 2; ++c) {
#pragma unroll
        for (int o = 4; o < 32; o <<= 1) {
          sum[c] += __shfl_xor_sync(0xffffffffu, sum[c], o);
          pooled[c] += __shfl_xor_sync(0xffffffffu, pooled[c], o);
        }
      }
      if constexpr (!kBackward) {
        if (g == 0) {
          *reinterpret_cast<float2*>(y + out + nj * 8) =
              make_float2(pooled[0] / sum[0], pooled[1] / sum[1]);
        }
      } else {
        // a = p / sum; G += gy a; dlogits = alpha gy a (x - y) into S and, in bf16, sdl.
        float ga[2], k[2], yc[2];
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float inv = 1.0f / sum[c];
          ga[c] = gv[nj][c] * inv;
          k[c] = a.alpha * ga[c];
          yc[c] = pooled[c] * inv;
        }
#pragma unroll
        for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float2 x = xv[mi][h];
            const float p0 = acc[mi][nj][2 * h], p1 = acc[mi][nj][2 * h + 1];
            const float dl0 = p0 * k[0] * (x.x - yc[0]), dl1 = p1 * k[1] * (x.y - yc[1]);
            gsum[mi][nj][2 * h] += p0 * ga[0];
            gsum[mi][nj][2 * h + 1] += p1 * ga[1];
            ssum[mi][nj][2 * h] += dl0;
            ssum[mi][nj][2 * h + 1] += dl1;
            *reinterpret_cast<uint32_t*>(sdl + (row0 + mi * 16 + 8 * h) * L::kLdOp + col0 +
                                         nj * 8) = pack_bf16(dl0, dl1);
          }
        }
      }
    }
    if constexpr (kBackward) {
      __syncwarp();  // this warp's dlogits columns are in sdl
      // dW[o][i] += sum over the block's rows r of dlogits[r][o] x[r][i], o this warp's 16
      // columns. A (o, r) = dlogits^T: ldmatrix.trans of the 8 x 8 tiles (r, o), lanes 0-7 rows
      // r 0-7 at o 0, 8-15 the same rows at o 8, 16-31 rows r 8-15. B (r, i) = x: the trans
      // tiles (r, i), lanes 0-7 rows r 0-7, 8-15 rows r 8-15, 16-31 the same at i + 8.
      const uint16_t* da = sdl + (slot * N + (lane & 7) + ((lane >> 4) << 3)) * L::kLdOp + ct * 16 +
                           ((lane >> 3) & 1) * 8;
      const uint16_t* xb =
          xop + (slot * N + (lane & 7) + ((lane >> 3) & 1) * 8) * L::kLdOp + (lane >> 4) * 8;
#pragma unroll
      for (int kk = 0; kk < kMTiles; ++kk) {
        uint32_t af[4];
        ldmatrix_x4_trans(af, da + kk * 16 * L::kLdOp);
#pragma unroll
        for (int np = 0; np < kNTiles / 2; ++np) {
          uint32_t bf[4];
          ldmatrix_x4_trans(bf, xb + kk * 16 * L::kLdOp + np * 16);
          mma_bf16(dw[2 * np], af, bf[0], bf[1]);
          mma_bf16(dw[2 * np + 1], af, bf[2], bf[3]);
        }
      }
    }
  }

  if constexpr (kBackward) {
    // This warp's slice of dW, in the part of its window slot.
    float* my_w = part_w + (int64_t{blockIdx.x} * L::kWin + slot) * D * D;
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      float* at = my_w + (ct * 16 + g) * D + nt * 8 + 2 * t;
      *reinterpret_cast<float2*>(at) = make_float2(dw[nt][0], dw[nt][1]);
      *reinterpret_cast<float2*>(at + 8 * D) = make_float2(dw[nt][2], dw[nt][3]);
    }
    // The positions' part: G + S W over the slots' sums, S rounded to bf16 (into xop) once.
    __syncthreads();  // every warp is done with the blocks
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int at = (slot * N + mi * 16 + g + 8 * h) * L::kLdX + ct * 16 + nj * 8 + 2 * t;
          *reinterpret_cast<float2*>(sg + at) =
              make_float2(gsum[mi][nj][2 * h], gsum[mi][nj][2 * h + 1]);
          *reinterpret_cast<float2*>(ss + at) =
              make_float2(ssum[mi][nj][2 * h], ssum[mi][nj][2 * h + 1]);
        }
      }
    }
    __syncthreads();
    for (int e = tid; e < N * D; e += kPoolThreads) {
      const int at = (e / D) * L::kLdX + e % D;
      float gs = sg[at], sd = ss[at];
#pragma unroll
      for (int s = 1; s < L::kWin; ++s)
        gs += sg[at + s * N * L::kLdX], sd += ss[at + s * N * L::kLdX];
      sg[at] = gs;
      reinterpret_cast<__nv_bfloat16*>(xop)[(e / D) * L::kLdOp + e % D] = __float2bfloat16_rn(sd);
    }
    __syncthreads();
    // B (o, c) = W[o][c], c this warp's columns: the trans tiles (o, c) of W, lanes as x's in
    // the dW product.
    const uint16_t* wc =
        sw + ((lane & 7) + ((lane >> 3) & 1) * 8) * L::kLdOp + ct * 16 + (lane >> 4) * 8;
    float* my_pos = part_pos + int64_t{blockIdx.x} * N * D;  // blockIdx = head * chunks + chunk
    for (int mi = slot; mi < kMTiles; mi += L::kWin) {       // the slots split the row tiles
      float acc[2][4];
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float2 v = *reinterpret_cast<const float2*>(sg + (mi * 16 + g + 8 * h) * L::kLdX +
                                                            ct * 16 + nj * 8 + 2 * t);
          acc[nj][2 * h] = v.x;
          acc[nj][2 * h + 1] = v.y;
        }
      }
      const uint16_t* sa = xop + (mi * 16 + (lane & 15)) * L::kLdOp + (lane >> 4) * 8;
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        uint32_t af[4], b[4];
        ldmatrix_x4(af, sa + ks * 16);
        ldmatrix_x4_trans(b, wc + ks * 16 * L::kLdOp);
        mma_bf16(acc[0], af, b[0], b[1]);
        mma_bf16(acc[1], af, b[2], b[3]);
      }
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          *reinterpret_cast<float2*>(my_pos + (mi * 16 + g + 8 * h) * D + ct * 16 + nj * 8 +
                                     2 * t) = make_float2(acc[nj][2 * h], acc[nj][2 * h + 1]);
        }
      }
    }
  }
#endif
}

// out[g, i] (+)= sum over p < parts of part[g, p, i], in a fixed order (the same every run): a
// CTA per (g, 32 columns); its 8 warps each sum every 8th part from their own (one coalesced
// 128-byte row a load), then warp 0 adds the 8 sums in order. Many CTAs each with few loads in
// flight per thread: a thread per column walking all parts alone left most SMs idle.
constexpr int kSumCols = 32;
constexpr int kSumWarps = 8;
__global__ void __launch_bounds__(kSumCols* kSumWarps)
    sum_parts_kernel(const float* __restrict__ part, float* __restrict__ out, int64_t parts,
                     int64_t size, bool accumulate) {
  __shared__ float sums[kSumWarps][kSumCols];
  const int64_t col_blocks = (size + kSumCols - 1) / kSumCols;
  const int64_t g = blockIdx.x / col_blocks;
  const int lane = threadIdx.x % kSumCols, warp = threadIdx.x / kSumCols;
  const int64_t i = (blockIdx.x % col_blocks) * kSumCols + lane;
  float s = 0.0f;
  if (i < size) {
    const float* src = part + g * parts * size + i;
    for (int64_t p = warp; p < parts; p += kSumWarps) s += src[p * size];
  }
  sums[warp][lane] = s;
  __syncthreads();
  if (warp == 0 && i < size) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kSumWarps; ++w) total += sums[w][lane];
    float* dst = out + g * size + i;
    *dst = accumulate ? *dst + total : total;
  }
}

void sum_parts(const float* part, float* out, int64_t groups, int64_t parts, int64_t size,
               bool accumulate) {
  const int64_t ctas = groups * ((size + kSumCols - 1) / kSumCols);
  KVC_CHECK(ctas <= INT32_MAX, "attention_pool: ", groups, " x ", size, " gradient too large");
  sum_parts_kernel<<<static_cast<unsigned>(ctas), kSumCols * kSumWarps, 0, stream()>>>(
      part, out, parts, size, accumulate);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <int N, int D, PoolMode kMode, bool kBackward>
void launch(const AttentionPoolArgs& a, const float* gy, float* y, float* g_positions,
            float* g_weight, bool acc_positions, bool acc_weight) {
  // bf16 keeps its logits in registers on mma.sync; tf32 and fp32 run the wmma kernel.
  constexpr bool kMma = kMode == PoolMode::bf16;
  using Lay = PoolLayout<N, D>;
  using MmaLay = PoolMmaLayout<N, D>;
  constexpr size_t kBytes = kMma ? (kBackward ? MmaLay::kBackwardBytes : MmaLay::kForwardBytes)
                            : kBackward ? Lay::kBackwardBytes
                                        : Lay::kForwardBytes;
  constexpr auto* kernel = [] {
    if constexpr (kMma) {
      return attention_pool_mma_kernel<N, D, kBackward>;
    } else {
      return attention_pool_kernel<N, D, kMode, kBackward>;
    }
  }();
  // One wave of CTAs, each a contiguous run of one head's windows (b and w flattened).
  const int64_t resident = resident_ctas<kernel>(kPoolThreads, kBytes);
  const int64_t windows = a.b * ((a.s - N) / a.stride + 1);
  PoolGrid grid;
  grid.chunks =
      static_cast<int>(std::clamp<int64_t>(resident / std::max<int64_t>(a.h, 1), 1, windows));
  grid.per_chunk = (windows + grid.chunks - 1) / grid.chunks;
  const int64_t ctas = a.h * grid.chunks;
  KVC_CHECK(ctas <= INT32_MAX, "attention_pool: ", a.h, " heads exceed the grid");
  // The mma kernel's backward writes a dW part per window slot of each CTA.
  const int64_t w_parts = ctas * (kMma ? MmaLay::kWin : 1);
  Scratch part_w(kBackward ? sizeof(float) * w_parts * D * D : 0);
  Scratch part_pos(kBackward ? sizeof(float) * ctas * N * D : 0);
  if constexpr (kMma) {
    // Windows that tile the sequence read each element once: the forward rounds all of it on
    // the way, where a later op will want it (bf16_copy_to_fill).
    const bool tiles = !kBackward && a.stride == N && a.s % N == 0;
    const Bf16Fill seq16 = tiles ? bf16_copy_to_fill(a.seq, a.b * a.h * a.s * D) : Bf16Fill{};
    kernel<<<static_cast<unsigned>(ctas), kPoolThreads, kBytes, stream()>>>(
        a, grid, gy, y, reinterpret_cast<uint16_t*>(seq16.p), part_w.as<float>(),
        part_pos.as<float>());
  } else {
    kernel<<<static_cast<unsigned>(ctas), kPoolThreads, kBytes, stream()>>>(
        a, grid, gy, y, part_w.as<float>(), part_pos.as<float>());
  }
  KVC_CUDA_CHECK(cudaGetLastError());
  if constexpr (kBackward) {
    if (g_weight) sum_parts(part_w.as<float>(), g_weight, 1, w_parts, D * D, acc_weight);
    if (g_positions) {
      sum_parts(part_pos.as<float>(), g_positions, a.h, grid.chunks, N * D, acc_positions);
    }
  }
}

// The (n, d) instantiations; `call` receives the launch of the matching one.
template <PoolMode kMode, bool kBackward>
void dispatch(const AttentionPoolArgs& a, const float* gy, float* y, float* g_positions,
              float* g_weight, bool acc_positions, bool acc_weight) {
#define KVC_POOL_CASE(NN, DD)                                                               \
  if (a.n == NN && a.d == DD) {                                                             \
    return launch<NN, DD, kMode, kBackward>(a, gy, y, g_positions, g_weight, acc_positions, \
                                            acc_weight);                                    \
  }
  KVC_POOL_CASE(16, 64)
  KVC_POOL_CASE(32, 64)
  KVC_POOL_CASE(64, 64)
  KVC_POOL_CASE(16, 128)
  KVC_POOL_CASE(32, 128)
  KVC_POOL_CASE(64, 128)
#undef KVC_POOL_CASE
  KVC_FAIL("attention_pool: no fused kernel for blocks of ", a.n, " x ", a.d);
}

template <bool kBackward>
void run(const AttentionPoolArgs& a, const float* gy, float* y, float* g_positions, float* g_weight,
         bool acc_positions, bool acc_weight) {
  KVC_CHECK(attention_pool_fits(a.n, a.d), "attention_pool: blocks of ", a.n, " x ", a.d, " in ",
            precision_name(math_precision()), " have no fused kernel");
  KVC_CHECK(a.b >= 1 && a.h >= 1 && a.stride >= 1 && a.s >= a.n, "attention_pool: b ", a.b, ", h ",
            a.h, ", seq ", a.s, ", stride ", a.stride, " out of range for block ", a.n);
  switch (math_precision()) {
    case MathPrecision::bf16:
      return dispatch<PoolMode::bf16, kBackward>(a, gy, y, g_positions, g_weight, acc_positions,
                                                 acc_weight);
    case MathPrecision::tf32:
      return dispatch<PoolMode::tf32, kBackward>(a, gy, y, g_positions, g_weight, acc_positions,
                                                 acc_weight);
    case MathPrecision::fp32:
      break;
  }
  dispatch<PoolMode::tf32x3, kBackward>(a, gy, y, g_positions, g_weight, acc_positions, acc_weight);
}

}  // namespace

bool attention_pool_fits(int64_t n, int64_t d) {
  return compute_capability() >= 80 && (n == 16 || n == 32 || n == 64) && (d == 64 || d == 128);
}

void attention_pool_forward(const AttentionPoolArgs& args, float* y) {
  run<false>(args, nullptr, y, nullptr, nullptr, false, false);
}

void attention_pool_backward(const AttentionPoolArgs& args, const float* gy, float* g_positions,
                             float* g_weight, bool acc_positions, bool acc_weight) {
  run<true>(args, gy, nullptr, g_positions, g_weight, acc_positions, acc_weight);
}

}  // namespace kvc::kernels::cuda
