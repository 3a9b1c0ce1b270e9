// The attention over trainable keys on bf16 tensor cores (see kernels/attention_backward.h). The
// forward is the target's flash kernel (kernels/cuda/attention_tc.cu, attention_wgmma.cu) with
// each row's log-sum-exp kept. The backward is flash-attention-2's without dQ: one CTA of 4 warps
// owns 64 keys of one batch entry (16 a warp; K in bf16 in shared memory, V's bf16 fragments in
// registers) and walks all query rows in tiles of 32: each tile's q (scaled to log2 units) and gy
// in bf16, and its rows' rowsum(gy y), log-sum-exp and visible count arrive by cp.async three
// stages deep. Per tile and warp, with the keys as the products' rows:
//   S^T (16 keys x 32 queries) = K q^T      A: K by ldmatrix, B: q by ldmatrix
//   dP^T = V gy^T                          A: V's fragments, B: gy by ldmatrix
//   P^T = 2^(S^T - lse), dS^T = P^T (dP^T - delta), in the accumulators' layout
//   dV += P^T gy,  dK += dS^T q            A: P^T and dS^T packed from those registers (an mma's C
//                                          layout is its A layout), B: gy and q by ldmatrix.trans
// The 16 x d sums of dK and dV stay in registers; each key row is written once, by its warp.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/attention_backward.h"
#include "kernels/cuda/attention_split.cuh"
#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma_sync.cuh"

namespace kvc::kernels::cuda {

namespace {

using attention_detail::cp_async16;
using attention_detail::cp_async_commit;
using attention_detail::cp_async_wait;

constexpr int kBwdWarps = 4;
constexpr int kBwdThreads = 32 * kBwdWarps;
constexpr int kKeysPerCta = 16 * kBwdWarps;
constexpr int kQueryTile = 32;
constexpr int kBwdStages = 3;

// Shared memory, byte offsets: per stage q and gy in bf16 (rows of d + 8: the 8 rows an
// ldmatrix reads start 4 banks apart) and the tile's rows' delta, log-sum-exp and visible count;
// after the stages the CTA's 64 keys of K in bf16 (rows of d + 8).
template <int D>
struct BwdLayout {
  static constexpr int kLd16 = D + 8;
  static constexpr size_t kQ = 0;
  static constexpr size_t kGy = kQ + size_t{2} * kQueryTile * kLd16;
  static constexpr size_t kDelta = kGy + size_t{2} * kQueryTile * kLd16;
  static constexpr size_t kLse = kDelta + size_t{4} * kQueryTile;
  static constexpr size_t kVisible = kLse + size_t{4} * kQueryTile;
  static constexpr size_t kStage = kVisible + size_t{4} * kQueryTile;
  static constexpr size_t kK = kBwdStages * kStage;
  static constexpr size_t kBytes = kK + size_t{2} * kKeysPerCta * kLd16;
  static_assert(kGy % 16 == 0 && kDelta % 16 == 0 && kStage % 16 == 0, "16-byte aligned tiles");
};

// What the kernel reads per query row, padded to whole query tiles (m_pad rows a batch entry) so
// that every copy is a whole 16-byte piece: q scaled to log2 units and gy in bf16, delta =
// rowsum(gy y), the log-sum-exp and the visible count. Padding rows: zeros, lse +inf (P = 0) and
// count 0. One warp a row, a lane a column.
struct RowInputs {
  uint16_t* q16;
  uint16_t* gy16;
  float* delta;
  float* lse;
  int32_t* visible;  // null when the attention is not masked
};
template <int D>
__global__ void attention_backward_rows_kernel(AttentionBackwardArgs a, RowInputs r, int64_t m_pad,
                                               float scale_log2) {
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  const int lane = threadIdx.x % 32;
  for (int64_t row = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32;
       row < a.batch * m_pad; row += warps) {
    const int64_t b = row / m_pad, i = row % m_pad, src = b * a.m + i;
    const bool real = i < a.m;
    float dot = 0.f;  // scalar loads: gy may be any view's storage
#pragma unroll
    for (int c = lane; c < D; c += 32) {
      const float q = real ? a.q[src * D + c] : 0.f, gy = real ? a.gy[src * D + c] : 0.f;
      if (real) dot = fmaf(gy, a.y[src * D + c], dot);
      store_bf16(r.q16 + row * D + c, q * scale_log2);
      store_bf16(r.gy16 + row * D + c, gy);
    }
    dot = warp_sum(dot);
    if (lane == 0) {
      r.delta[row] = dot;
      r.lse[row] = real ? a.lse[src] : INFINITY;
      if (r.visible) r.visible[row] = real ? a.visible[src] : 0;
    }
  }
}

template <int D, bool kMasked>
__global__ void __launch_bounds__(kBwdThreads, 2)
    attention_backward_kv_kernel(AttentionBackwardArgs a, RowInputs r, int64_t m_pad,
                                 float* __restrict__ gk, float* __restrict__ gv, float k_scale,
                                 bool acc_k, bool acc_v) {
  using L = BwdLayout<D>;
  constexpr int kKSteps = D / 16;          // k-steps of S^T and dP^T (over d)
  constexpr int kQTiles = kQueryTile / 8;  // 8-query column tiles of S^T and dP^T
  constexpr int kDTiles = D / 8;           // 8-column tiles of dK and dV

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync bf16 needs sm_80; attention_kv_fused_fits refuses older GPUs
#else
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int64_t key_tiles = (a.s + kKeysPerCta - 1) / kKeysPerCta;
  const int64_t b = blockIdx.x / key_tiles;
  const int64_t k0 = (blockIdx.x % key_tiles) * kKeysPerCta;
  const int kw = warp * 16;  // this warp's first key in the tile
  const int64_t q_tiles = m_pad / kQueryTile;

  // Stage `st` <- query tile `it`: q and gy rows, delta, lse and (masked) the visible counts.
  const auto load_stage = [&](int st, int64_t it) {
    unsigned char* base = smem + st * L::kStage;
    const int64_t row0 = b * m_pad + it * kQueryTile;
    constexpr int kVec16 = D / 8;  // 16-byte pieces per bf16 row
#pragma unroll
    for (int n = 0; n < kQueryTile * kVec16 / kBwdThreads; ++n) {
      const int i = tid + n * kBwdThreads, row = i / kVec16, c = (i % kVec16) * 8;
      const int64_t at = (row0 + row) * D + c;
      cp_async16(reinterpret_cast<float*>(base + L::kQ + 2 * (row * L::kLd16 + c)),
                 reinterpret_cast<const float*>(r.q16 + at), true);
      cp_async16(reinterpret_cast<float*>(base + L::kGy + 2 * (row * L::kLd16 + c)),
                 reinterpret_cast<const float*>(r.gy16 + at), true);
    }
    constexpr int kPieces = kQueryTile / 4;  // 16-byte pieces of one per-row array
    if (tid < kPieces) {
      cp_async16(reinterpret_cast<float*>(base + L::kDelta) + 4 * tid, r.delta + row0 + 4 * tid,
                 true);
    } else if (tid < 2 * kPieces) {
      const int i = tid - kPieces;
      cp_async16(reinterpret_cast<float*>(base + L::kLse) + 4 * i, r.lse + row0 + 4 * i, true);
    } else if (kMasked && tid < 3 * kPieces) {
      const int i = tid - 2 * kPieces;
      cp_async16(reinterpret_cast<float*>(base + L::kVisible) + 4 * i,
                 reinterpret_cast<const float*>(r.visible + row0 + 4 * i), true);
    }
  };

#pragma unroll
  for (int st = 0; st < kBwdStages - 1; ++st) {
    if (st < q_tiles) load_stage(st, st);
    cp_async_commit();
  }

  // The CTA's keys of K in bf16 into shared memory (zero past s; published by the loop's first
  // barrier), and this warp's A fragments of V (16 keys x 16 of d per k-step).
  uint16_t* sk = reinterpret_cast<uint16_t*>(smem + L::kK);
  for (int i = tid; i < kKeysPerCta * D / 4; i += kBwdThreads) {
    const int row = i / (D / 4), c = (i % (D / 4)) * 4;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (k0 + row < a.s)
      x = __ldg(reinterpret_cast<const float4*>(a.k + (b * a.s + k0 + row) * D + c));
    *reinterpret_cast<uint2*>(sk + row * L::kLd16 + c) =
        make_uint2(pack_bf16(x.x, x.y), pack_bf16(x.z, x.w));
  }
  uint32_t vf[kKSteps][4];
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t key = k0 + kw + g + 8 * (i & 1);
      const int c = ks * 16 + 2 * t + 8 * (i >> 1);
      float2 x = make_float2(0.f, 0.f);
      if (key < a.s) x = __ldg(reinterpret_cast<const float2*>(a.v + (b * a.s + key) * D + c));
      vf[ks][i] = pack_bf16(x.x, x.y);
    }
  }
  float dk[kDTiles][4] = {}, dv[kDTiles][4] = {};
  // This lane's keys (rows g and g + 8 of the warp's 16): the keys past s take P = 0.
  const int64_t key_lo = k0 + kw + g, key_hi = key_lo + 8;

  for (int64_t it = 0; it < q_tiles; ++it) {
    cp_async_wait<kBwdStages - 2>();
    __syncthreads();  // tile it has landed for every thread; tile it - 1's buffer is free
    if (it + kBwdStages - 1 < q_tiles) {
      load_stage(static_cast<int>((it + kBwdStages - 1) % kBwdStages), it + kBwdStages - 1);
    }
    cp_async_commit();
    const unsigned char* base = smem + (it % kBwdStages) * L::kStage;
    const uint16_t* sq = reinterpret_cast<const uint16_t*>(base + L::kQ);
    const uint16_t* sgy = reinterpret_cast<const uint16_t*>(base + L::kGy);
    const float* sdelta = reinterpret_cast<const float*>(base + L::kDelta);
    const float* slse = reinterpret_cast<const float*>(base + L::kLse);
    const int32_t* svisible = reinterpret_cast<const int32_t*>(base + L::kVisible);

    // S^T = K q^T and dP^T = V gy^T. A of K: plain ldmatrix of the warp's 16 key rows (lanes 0-15
    // rows 0-15 at d, 16-31 the same at d + 8). B (d x queries) from q's and gy's rows, plain
    // ldmatrix (lanes 0-7 rows q 0-7 at d, 8-15 at d + 8, 16-31 rows q 8-15): b0, b1 of two
    // 8-query tiles.
    float st[kQTiles][4] = {}, dp[kQTiles][4] = {};
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      uint32_t kf[4];
      ldmatrix_x4(kf, sk + (kw + (lane & 15)) * L::kLd16 + ks * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int np = 0; np < kQTiles / 2; ++np) {
        const int at = (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * L::kLd16 + ks * 16 +
                       ((lane >> 3) & 1) * 8;
        uint32_t bf[4];
        ldmatrix_x4(bf, sgy + at);
        mma_bf16(dp[2 * np], vf[ks], bf[0], bf[1]);
        mma_bf16(dp[2 * np + 1], vf[ks], bf[2], bf[3]);
        ldmatrix_x4(bf, sq + at);
        mma_bf16(st[2 * np], kf, bf[0], bf[1]);
        mma_bf16(st[2 * np + 1], kf, bf[2], bf[3]);
      }
    }
    // P^T into st and dS^T into dp, in the accumulators' layout: element e of tile nq is key
    // key_lo + 8 (e / 2), query 8 nq + 2 t + e % 2.
#pragma unroll
    for (int nq = 0; nq < kQTiles; ++nq) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = 8 * nq + 2 * t + (e & 1);
        const int64_t key = (e >> 1) ? key_hi : key_lo;
        const bool seen = key < a.s && (!kMasked || key < svisible[row]);
        st[nq][e] = seen ? exp2f(st[nq][e] - slse[row]) : 0.f;
        dp[nq][e] = st[nq][e] * (dp[nq][e] - sdelta[row]);
      }
    }
    // dV += P^T gy, dK += dS^T q over the tile's queries, 16 a k-step. A: tiles 2 kq and
    // 2 kq + 1 of P^T / dS^T (a0 = c0 c1 of the first, a1 = its c2 c3, a2 and a3 the second's).
    // B (queries x d) = gy, q: trans tiles, lanes 0-7 rows q 0-7, 8-15 rows 8-15, 16-31 the
    // same at d + 8.
#pragma unroll
    for (int kq = 0; kq < kQTiles / 2; ++kq) {
      const uint32_t ap[4] = {pack_bf16(st[2 * kq][0], st[2 * kq][1]),
                              pack_bf16(st[2 * kq][2], st[2 * kq][3]),
                              pack_bf16(st[2 * kq + 1][0], st[2 * kq + 1][1]),
                              pack_bf16(st[2 * kq + 1][2], st[2 * kq + 1][3])};
      const uint32_t as[4] = {pack_bf16(dp[2 * kq][0], dp[2 * kq][1]),
                              pack_bf16(dp[2 * kq][2], dp[2 * kq][3]),
                              pack_bf16(dp[2 * kq + 1][0], dp[2 * kq + 1][1]),
                              pack_bf16(dp[2 * kq + 1][2], dp[2 * kq + 1][3])};
      const int row = (kq * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * L::kLd16 + (lane >> 4) * 8;
#pragma unroll
      for (int np = 0; np < kDTiles / 2; ++np) {
        uint32_t bf[4];
        ldmatrix_x4_trans(bf, sgy + row + np * 16);
        mma_bf16(dv[2 * np], ap, bf[0], bf[1]);
        mma_bf16(dv[2 * np + 1], ap, bf[2], bf[3]);
        ldmatrix_x4_trans(bf, sq + row + np * 16);
        mma_bf16(dk[2 * np], as, bf[0], bf[1]);
        mma_bf16(dk[2 * np + 1], as, bf[2], bf[3]);
      }
    }
  }
  cp_async_wait<0>();  // no copy outlives the kernel

  // Each key row of dK (times k_scale: q was scaled to log2 units) and dV, once: out (+)= scale
  // sums.
  const auto store = [&](float* out, const float(&sums)[kDTiles][4], float scale, bool acc) {
    if (!out) return;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t key = h ? key_hi : key_lo;
      if (key >= a.s) continue;
#pragma unroll
      for (int nt = 0; nt < kDTiles; ++nt) {
        float2* at = reinterpret_cast<float2*>(out + (b * a.s + key) * D + 2 * t + nt * 8);
        float2 x = make_float2(scale * sums[nt][2 * h], scale * sums[nt][2 * h + 1]);
        if (acc) x.x += at->x, x.y += at->y;
        *at = x;
      }
    }
  };
  store(gk, dk, k_scale, acc_k);
  store(gv, dv, 1.0f, acc_v);
#endif
}

template <int D, bool kMasked>
void launch(const AttentionBackwardArgs& a, float* gk, float* gv, bool acc_k, bool acc_v) {
  using L = BwdLayout<D>;
  const int64_t m_pad = (a.m + kQueryTile - 1) / kQueryTile * kQueryTile;
  const int64_t rows = a.batch * m_pad;
  // The forward's scale: q k^T in log2 units is (alpha log2(e) q) k^T, q rounded after scaling.
  const float scale_log2 = attention_detail::scale_log2(a.alpha);
  Scratch q16(sizeof(uint16_t) * rows * D), gy16(sizeof(uint16_t) * rows * D);
  Scratch stats(sizeof(float) * rows * (kMasked ? 3 : 2));
  RowInputs r;
  r.q16 = q16.as<uint16_t>();
  r.gy16 = gy16.as<uint16_t>();
  r.delta = stats.as<float>();
  r.lse = r.delta + rows;
  r.visible = kMasked ? reinterpret_cast<int32_t*>(r.lse + rows) : nullptr;
  attention_backward_rows_kernel<D>
      <<<grid_for(rows * 32), kThreads, 0, stream()>>>(a, r, m_pad, scale_log2);
  KVC_CUDA_CHECK(cudaGetLastError());
  constexpr auto kernel = attention_backward_kv_kernel<D, kMasked>;
  resident_ctas<kernel>(kBwdThreads, L::kBytes);  // raises the shared-memory limit
  const int64_t ctas = a.batch * ((a.s + kKeysPerCta - 1) / kKeysPerCta);
  KVC_CHECK(ctas <= INT32_MAX, "attention backward: ", a.batch, " x ", a.s,
            " keys exceed the grid");
  // dK = alpha dS^T q = (alpha / scale_log2) dS^T (scale_log2 q).
  const float k_scale = static_cast<float>(a.alpha / scale_log2);
  kernel<<<static_cast<unsigned>(ctas), kBwdThreads, L::kBytes, stream()>>>(a, r, m_pad, gk, gv,
                                                                            k_scale, acc_k, acc_v);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <int D>
void launch_d(const AttentionBackwardArgs& a, float* gk, float* gv, bool acc_k, bool acc_v) {
  if (a.visible) return launch<D, true>(a, gk, gv, acc_k, acc_v);
  launch<D, false>(a, gk, gv, acc_k, acc_v);
}

void check_sizes(const char* op, int64_t batch, int64_t m, int64_t s, int64_t d) {
  KVC_CHECK(attention_kv_fused_fits(d, d), op, ": head size ", d, " has no fused kernel");
  KVC_CHECK(batch >= 1 && m >= 1 && s >= 1, op, ": batch ", batch, ", ", m, " query rows, ", s,
            " keys");
  KVC_CHECK(m <= INT32_MAX && s <= INT32_MAX, op, ": sizes (", batch, ", ", m, ", ", s,
            ") too large");
}

}  // namespace

bool attention_kv_fused_fits(int64_t d, int64_t e) {
  return compute_capability() >= 80 && d == e && (d == 64 || d == 128);
}

void attention_forward_lse(const float* q, const float* k, const float* v, float* out, float* lse,
                           int64_t batch, int64_t m, int64_t s, int64_t d, double alpha,
                           const int32_t* visible) {
  check_sizes("attention forward", batch, m, s, d);
  attention_forward_tc(q, k, v, out, batch, m, s, d, alpha, MathPrecision::bf16, visible,
                       TcKernel::fastest, lse);
}

void attention_backward_kv(const AttentionBackwardArgs& a, float* gk, float* gv, bool acc_k,
                           bool acc_v) {
  check_sizes("attention backward", a.batch, a.m, a.s, a.d);
  if (!gk && !gv) return;
  if (a.d == 64) return launch_d<64>(a, gk, gv, acc_k, acc_v);
  launch_d<128>(a, gk, gv, acc_k, acc_v);
}

}  // namespace kvc::kernels::cuda
