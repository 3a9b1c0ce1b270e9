// Overlapping windows of a sequence (NSA's compression blocks at a stride) and the causal
// visibility of keys and blocks per query, for every backend.
#pragma once

#include <cstdint>

namespace kvc::kernels {

#define KVC_WINDOW_KERNELS                                                                    \
  /* The adjoint of taking windows: g (bh, w, n, d) is the gradient of the windows, window i  \
     covering tokens [i * stride, i * stride + n); gs (bh, seq, d) = the sum over the windows \
     holding each token (0 for tokens in none). Written, not accumulated; a gather per token, \
     so no atomics and the same sums in the same order on every backend. */                   \
  template <typename T>                                                                       \
  void window_backward(const T* g, T* gs, int64_t bh, int64_t seq, int64_t d, int64_t w,      \
                       int64_t n, int64_t stride);                                            \
  /* Per row r of (batch, rows_per_batch) query rows, whose position is                       \
     pos[(r / rows_per_batch) * nq + r % nq]: visible[r] = clamp(floor((pos - first) / step)  \
     + 1, 0, limit), the count of a prefix of keys (first 0, step 1, limit seq) or of blocks  \
     (first n - 1, step stride, limit w) that the query sees. weight[r] (may be null) =       \
     1 / (kept * scale) for a row that sees something, else 0, kept = the rows that do (all   \
     weights 0 when none does): the weights of a mean over the kept rows. */                  \
  template <typename T>                                                                       \
  void visible_counts(const T* pos, int32_t* visible, T* weight, int64_t rows,                \
                      int64_t rows_per_batch, int64_t nq, int64_t first, int64_t step,        \
                      int64_t limit, double scale);                                           \
  /* Softmax of each row r of x (rows, n) over its first visible[r] entries; the rest of the  \
     row is 0, and so is a row that sees nothing. y may be x. CUDA float32: where an open     \
     SharedBf16Copies lists y, y's bf16 copy is written on the way. */                        \
  template <typename T>                                                                       \
  void masked_softmax_forward(const T* x, T* y, int64_t rows, int64_t n, const int32_t* visible);

namespace cpu {
KVC_WINDOW_KERNELS
}
namespace cuda {
KVC_WINDOW_KERNELS
}
#undef KVC_WINDOW_KERNELS

#define KVC_WINDOW_INSTANTIATE(T)                                                             \
  template void window_backward<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                   int64_t);                                                  \
  template void visible_counts<T>(const T*, int32_t*, T*, int64_t, int64_t, int64_t, int64_t, \
                                  int64_t, int64_t, double);                                  \
  template void masked_softmax_forward<T>(const T*, T*, int64_t, int64_t, const int32_t*);

}  // namespace kvc::kernels
