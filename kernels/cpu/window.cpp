// CPU window kernels: the scatter of overlapping windows back onto the sequence, the causal
// visible counts and the row-masked softmax.
#include "kernels/window.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/softmax_row.h"
#include "kernels/cpu/vec_math.h"
#include "kernels/math/window.h"

namespace kvc::kernels::cpu {

template <typename T>
void window_backward(const T* g, T* gs, int64_t bh, int64_t seq, int64_t d, int64_t w, int64_t n,
                     int64_t stride) {
  for (int64_t b = 0; b < bh; ++b) {
    const T* gb = g + b * w * n * d;
    for (int64_t t = 0; t < seq; ++t) {
      T* out = gs + (b * seq + t) * d;
      std::fill(out, out + d, T(0));
      const math::WindowRange r = math::windows_holding(t, w, n, stride);
      for (int64_t i = r.first; i <= r.last; ++i) {
        const T* src = gb + (i * n + (t - i * stride)) * d;
        for (int64_t c = 0; c < d; ++c) out[c] += src[c];
      }
    }
  }
}

template <typename T>
void visible_counts(const T* pos, int32_t* visible, T* weight, int64_t rows, int64_t rows_per_batch,
                    int64_t nq, int64_t first, int64_t step, int64_t limit, double scale) {
  int64_t kept = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T p = pos[(r / rows_per_batch) * nq + r % nq];
    visible[r] = math::visible_count(p, first, step, limit);
    kept += visible[r] > 0;
  }
  if (weight == nullptr) return;
  const T w = kept > 0 ? static_cast<T>(1.0 / (static_cast<double>(kept) * scale)) : T(0);
  for (int64_t r = 0; r < rows; ++r) weight[r] = visible[r] > 0 ? w : T(0);
}

template <typename T>
KVC_CPU_CLONES void masked_softmax_forward(const T* x, T* y, int64_t rows, int64_t n,
                                           const int32_t* visible) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * n;
    T* yr = y + r * n;
    const int64_t m = std::min<int64_t>(n, visible[r]);
    if (m > 0) softmax_row(xr, yr, m);
    std::fill(yr + std::max<int64_t>(m, 0), yr + n, T(0));
  }
}

KVC_WINDOW_INSTANTIATE(float)
KVC_WINDOW_INSTANTIATE(double)

}  // namespace kvc::kernels::cpu
