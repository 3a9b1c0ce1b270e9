// CPU fused attention forward (no grad): OpenBLAS GEMMs on (query block, key block) tiles with an
// online, max-subtracted softmax between them, so no (nq, seq) buffer is ever allocated.
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/vec_math.h"
#include "kernels/gemm.h"

namespace kvc::kernels::cpu {

namespace {

// Tiles large enough for the GEMMs to run near peak, small enough that S stays in L2.
constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyBlock = 256;

}  // namespace

template <typename T>
KVC_CPU_CLONES void attention_forward(const T* q, const T* k, const T* v, T* out,
                                      int64_t batch_heads, int64_t nq, int64_t seq, int64_t d,
                                      double alpha, const int32_t* visible) {
  if (batch_heads <= 0 || nq <= 0 || d <= 0) return;
  std::vector<T> s(static_cast<size_t>(kQueryBlock * kKeyBlock));  // scores, then P in place
  std::vector<T> m(static_cast<size_t>(kQueryBlock)), l(static_cast<size_t>(kQueryBlock));
  for (int64_t b = 0; b < batch_heads; ++b) {
    const T* kb = k + b * seq * d;
    const T* vb = v + b * seq * d;
    for (int64_t q0 = 0; q0 < nq; q0 += kQueryBlock) {
      const int64_t rows = std::min(kQueryBlock, nq - q0);
      const T* qb = q + (b * nq + q0) * d;
      T* ob = out + (b * nq + q0) * d;
      std::fill(ob, ob + rows * d, T(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
      std::fill(l.begin(), l.end(), T(0));
      // The keys any row of this query block sees: later tiles are skipped.
      int64_t keys = seq;
      if (visible != nullptr) {
        const int32_t* vr = visible + b * nq + q0;
        keys = std::min<int64_t>(seq, *std::max_element(vr, vr + rows));
      }
      for (int64_t k0 = 0; k0 < keys; k0 += kKeyBlock) {
        const int64_t cols = std::min(kKeyBlock, keys - k0);
        GemmArgs g;  // S (rows, cols) = alpha Q (rows, d) K^T (d, cols)
        g.trans_b = true;
        g.m = rows;
        g.n = cols;
        g.k = d;
        g.lda = d;
        g.ldb = d;
        g.ldc = kKeyBlock;
        g.alpha = alpha;
        g.beta = 0.0;
        gemm<T>(g, qb, kb + k0 * d, s.data());
        for (int64_t r = 0; r < rows; ++r) {
          T* sr = s.data() + r * kKeyBlock;
          if (visible != nullptr) {
            const int64_t lim = visible[b * nq + q0 + r] - k0;
            for (int64_t j = std::max<int64_t>(lim, 0); j < cols; ++j) {
              sr[j] = -std::numeric_limits<T>::infinity();
            }
          }
          const T mx = row_max(sr, cols, m[r]);
          if (mx == -std::numeric_limits<T>::infinity()) {  // nothing seen yet: no weight
            std::fill(sr, sr + cols, T(0));
            continue;
          }
          // The old accumulators were weighted by exp(-m_old); move them to exp(-m_new).
          const T corr = std::exp(m[r] - mx);
          const T sum = exp_row_sum(sr, sr, cols, mx);
          l[r] = l[r] * corr + sum;
          m[r] = mx;
          if (corr != T(1)) {
            T* orow = ob + r * d;
            for (int64_t c = 0; c < d; ++c) orow[c] *= corr;
          }
        }
        GemmArgs pv;  // O (rows, d) += P (rows, cols) V (cols, d)
        pv.m = rows;
        pv.n = d;
        pv.k = cols;
        pv.lda = kKeyBlock;
        pv.ldb = d;
        pv.ldc = d;
        pv.alpha = 1.0;
        pv.beta = 1.0;
        gemm<T>(pv, s.data(), vb + k0 * d, ob);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const T inv = T(1) / l[r];
        T* orow = ob + r * d;
        for (int64_t c = 0; c < d; ++c) orow[c] *= inv;
      }
    }
  }
}

KVC_ATTENTION_INSTANTIATE(float)
KVC_ATTENTION_INSTANTIATE(double)

}  // namespace kvc::kernels::cpu
