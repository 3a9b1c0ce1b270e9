// The fused K / V gradients of attention on bf16 mma.sync (see kernels/attention_backward.h),
// flash-attention-2 style but reading the kept probabilities instead of recomputing them. One
// CTA of 4 warps owns 64 keys of one batch entry (16 a warp) and walks all query rows in tiles of
// 32: each tile's P (float32), q and gy (bf16 copies) and rowsum(gy y) arrive by cp.async three
// stages deep. Per tile and warp, with the keys as the products' rows:
//   dP^T (16 keys x 32 queries) = V gy^T    A: V's bf16 fragments, in registers for the CTA's run
//   dS^T = P^T (dP^T - delta)              P^T read from the float32 tile in dP^T's layout
//   dV += P^T gy,  dK += dS^T q            A: P^T and dS^T packed from those registers (an mma's C
//                                          layout is its A layout), B: gy and q by ldmatrix.trans
// The 16 x d sums of dK and dV stay in registers; each key row is written once, by its warp.
#include <algorithm>
#include <cstdint>

#include "kernels/attention_backward.h"
#include "kernels/cuda/attention_split.cuh"
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

// One stage's shared memory, byte offsets: P (queries x keys, float32, rows of 68: lanes (g, t)
// read rows 2t, 2t + 1 at column g, banks 8t + g, all distinct), q and gy in bf16 (rows of d + 8:
// the 8 rows an ldmatrix reads start 4 banks apart), delta.
template <int D>
struct BwdLayout {
  static constexpr int kLdP = kKeysPerCta + 4;
  static constexpr int kLd16 = D + 8;
  static constexpr size_t kP = 0;
  static constexpr size_t kQ = kP + size_t{4} * kQueryTile * kLdP;
  static constexpr size_t kGy = kQ + size_t{2} * kQueryTile * kLd16;
  static constexpr size_t kDelta = kGy + size_t{2} * kQueryTile * kLd16;
  static constexpr size_t kStage = kDelta + size_t{4} * kQueryTile;
  static constexpr size_t kBytes = kBwdStages * kStage;
  static_assert(kQ % 16 == 0 && kGy % 16 == 0 && kDelta % 16 == 0 && kStage % 16 == 0,
                "16-byte aligned tiles");
};

// delta[b, r] = sum over d of gy[b, r, :] y[b, r, :] for r < m, 0 for m <= r < m_pad: one warp a
// row, rows padded to whole query tiles so that the kernel copies them in 16-byte pieces.
__global__ void attention_delta_kernel(const float* __restrict__ gy, const float* __restrict__ y,
                                       float* __restrict__ delta, int64_t batch, int64_t m,
                                       int64_t m_pad, int64_t d) {
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  for (int64_t row = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32; row < batch * m_pad;
       row += warps) {
    const int64_t b = row / m_pad, r = row % m_pad;
    float s = 0.f;
    if (r < m) {
      const int64_t at = (b * m + r) * d;
      for (int64_t c = threadIdx.x % 32; c < d; c += 32) s += gy[at + c] * y[at + c];
    }
    s = warp_sum(s);
    if (threadIdx.x % 32 == 0) delta[row] = s;
  }
}

template <int D>
__global__ void __launch_bounds__(kBwdThreads, 2)
    attention_backward_kv_kernel(AttentionBackwardArgs a, const uint16_t* __restrict__ q16,
                                 const uint16_t* __restrict__ gy16, const float* __restrict__ delta,
                                 int64_t m_pad, float* __restrict__ gk, float* __restrict__ gv,
                                 bool acc_k, bool acc_v) {
  using L = BwdLayout<D>;
  constexpr int kKSteps = D / 16;          // k-steps of dP^T (over d)
  constexpr int kQTiles = kQueryTile / 8;  // 8-query column tiles of dP^T
  constexpr int kDTiles = D / 8;           // 8-column tiles of dK and dV

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync bf16 needs sm_80; attention_backward_kv_fits refuses older GPUs
#else
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int64_t key_tiles = (a.s + kKeysPerCta - 1) / kKeysPerCta;
  const int64_t b = blockIdx.x / key_tiles;
  const int64_t k0 = (blockIdx.x % key_tiles) * kKeysPerCta;
  const int kw = warp * 16;  // this warp's first key in the tile
  const int64_t q_tiles = (a.m + kQueryTile - 1) / kQueryTile;

  // Stage `st` <- query tile `it`: P rows (keys past s and rows past m zero), q and gy rows, delta.
  const auto load_stage = [&](int st, int64_t it) {
    unsigned char* base = smem + st * L::kStage;
    const int64_t q0 = it * kQueryTile;
    constexpr int kPVec = kKeysPerCta / 4;  // 16-byte pieces per P row
#pragma unroll
    for (int n = 0; n < kQueryTile * kPVec / kBwdThreads; ++n) {
      const int i = tid + n * kBwdThreads, r = i / kPVec, c = (i % kPVec) * 4;
      const bool valid = q0 + r < a.m && k0 + c < a.s;
      const float* src = a.p + (valid ? (b * a.m + q0 + r) * a.s + k0 + c : 0);
      cp_async16(reinterpret_cast<float*>(base + L::kP) + r * L::kLdP + c, src, valid);
    }
    constexpr int kVec16 = D / 8;  // 16-byte pieces per bf16 row
#pragma unroll
    for (int n = 0; n < kQueryTile * kVec16 / kBwdThreads; ++n) {
      const int i = tid + n * kBwdThreads, r = i / kVec16, c = (i % kVec16) * 8;
      const bool valid = q0 + r < a.m;
      const int64_t at = valid ? (b * a.m + q0 + r) * D + c : 0;
      cp_async16(reinterpret_cast<float*>(base + L::kQ + 2 * (r * L::kLd16 + c)),
                 reinterpret_cast<const float*>(q16 + at), valid);
      cp_async16(reinterpret_cast<float*>(base + L::kGy + 2 * (r * L::kLd16 + c)),
                 reinterpret_cast<const float*>(gy16 + at), valid);
    }
    if (tid < kQueryTile / 4) {  // delta's rows are padded to whole tiles
      cp_async16(reinterpret_cast<float*>(base + L::kDelta) + 4 * tid,
                 delta + b * m_pad + q0 + 4 * tid, true);
    }
  };

  // A fragments of V (16 keys x 16 of d per k-step), zero past s.
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

#pragma unroll
  for (int st = 0; st < kBwdStages - 1; ++st) {
    if (st < q_tiles) load_stage(st, st);
    cp_async_commit();
  }
  for (int64_t it = 0; it < q_tiles; ++it) {
    cp_async_wait<kBwdStages - 2>();
    __syncthreads();  // tile it has landed for every thread; tile it - 1's buffer is free
    if (it + kBwdStages - 1 < q_tiles) {
      load_stage(static_cast<int>((it + kBwdStages - 1) % kBwdStages), it + kBwdStages - 1);
    }
    cp_async_commit();
    const unsigned char* base = smem + (it % kBwdStages) * L::kStage;
    const float* sp = reinterpret_cast<const float*>(base + L::kP);
    const uint16_t* sq = reinterpret_cast<const uint16_t*>(base + L::kQ);
    const uint16_t* sgy = reinterpret_cast<const uint16_t*>(base + L::kGy);
    const float* sdelta = reinterpret_cast<const float*>(base + L::kDelta);

    // dP^T = V gy^T: B (d x queries) from gy's rows, plain ldmatrix (lanes 0-7 rows q 0-7 at d 0,
    // 8-15 at d 8, 16-31 rows q 8-15): b0, b1 of two 8-query tiles.
    float dp[kQTiles][4] = {};
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
      for (int np = 0; np < kQTiles / 2; ++np) {
        uint32_t bf[4];
        ldmatrix_x4(bf, sgy + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * L::kLd16 + ks * 16 +
                            ((lane >> 3) & 1) * 8);
        mma_bf16(dp[2 * np], vf[ks], bf[0], bf[1]);
        mma_bf16(dp[2 * np + 1], vf[ks], bf[2], bf[3]);
      }
    }
    // P^T and dS^T in dP^T's layout: element e of tile nq is key kw + g + 8 (e / 2), query
    // 8 nq + 2 t + e % 2.
    float pt[kQTiles][4];
#pragma unroll
    for (int nq = 0; nq < kQTiles; ++nq) {
      const float d0 = sdelta[8 * nq + 2 * t], d1 = sdelta[8 * nq + 2 * t + 1];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        pt[nq][e] = sp[(8 * nq + 2 * t + (e & 1)) * L::kLdP + kw + g + 8 * (e >> 1)];
        dp[nq][e] = pt[nq][e] * (dp[nq][e] - ((e & 1) ? d1 : d0));  // now dS^T
      }
    }
    // dV += P^T gy, dK += dS^T q over the tile's queries, 16 a k-step. A: tiles 2 kq and
    // 2 kq + 1 of P^T / dS^T (a0 = c0 c1 of the first, a1 = its c2 c3, a2 and a3 the second's).
    // B (queries x d) = gy, q: trans tiles, lanes 0-7 rows q 0-7, 8-15 rows 8-15, 16-31 the
    // same at d + 8.
#pragma unroll
    for (int kq = 0; kq < kQTiles / 2; ++kq) {
      const uint32_t ap[4] = {pack_bf16(pt[2 * kq][0], pt[2 * kq][1]),
                              pack_bf16(pt[2 * kq][2], pt[2 * kq][3]),
                              pack_bf16(pt[2 * kq + 1][0], pt[2 * kq + 1][1]),
                              pack_bf16(pt[2 * kq + 1][2], pt[2 * kq + 1][3])};
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

  // Each key row of dK (times alpha) and dV, once: out (+)= scale sums.
  const auto store = [&](float* out, const float(&sums)[kDTiles][4], float scale, bool acc) {
    if (!out) return;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t key = k0 + kw + g + 8 * h;
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
  store(gk, dk, a.alpha, acc_k);
  store(gv, dv, 1.0f, acc_v);
#endif
}

template <int D>
void launch(const AttentionBackwardArgs& a, float* gk, float* gv, bool acc_k, bool acc_v) {
  using L = BwdLayout<D>;
  const int64_t m_pad = (a.m + kQueryTile - 1) / kQueryTile * kQueryTile;
  Scratch delta(sizeof(float) * a.batch * m_pad);
  attention_delta_kernel<<<grid_for(a.batch * m_pad * 32), kThreads, 0, stream()>>>(
      a.gy, a.y, delta.as<float>(), a.batch, a.m, m_pad, D);
  KVC_CUDA_CHECK(cudaGetLastError());
  const Bf16Copy q16 = bf16_copy(a.q, a.batch * a.m * D);
  const Bf16Copy gy16 = bf16_copy(a.gy, a.batch * a.m * D);
  resident_ctas<attention_backward_kv_kernel<D>>(kBwdThreads, L::kBytes);  // raises the limit
  const int64_t ctas = a.batch * ((a.s + kKeysPerCta - 1) / kKeysPerCta);
  KVC_CHECK(ctas <= INT32_MAX, "attention backward: ", a.batch, " x ", a.s,
            " keys exceed the grid");
  attention_backward_kv_kernel<D>
      <<<static_cast<unsigned>(ctas), kBwdThreads, L::kBytes, stream()>>>(
          a, reinterpret_cast<const uint16_t*>(q16.p), reinterpret_cast<const uint16_t*>(gy16.p),
          delta.as<float>(), m_pad, gk, gv, acc_k, acc_v);
  KVC_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

bool attention_backward_kv_fits(int64_t s, int64_t d, int64_t e) {
  return compute_capability() >= 80 && d == e && (d == 64 || d == 128) && s % 4 == 0;
}

void attention_backward_kv(const AttentionBackwardArgs& a, float* gk, float* gv, bool acc_k,
                           bool acc_v) {
  KVC_CHECK(attention_backward_kv_fits(a.s, a.d, a.d), "attention backward: ", a.s, " keys of ",
            a.d, " have no fused kernel");
  KVC_CHECK(a.batch >= 1 && a.m >= 1, "attention backward: batch ", a.batch, ", ", a.m,
            " query rows");
  if (!gk && !gv) return;
  if (a.d == 64) return launch<64>(a, gk, gv, acc_k, acc_v);
  launch<128>(a, gk, gv, acc_k, acc_v);
}

}  // namespace kvc::kernels::cuda
