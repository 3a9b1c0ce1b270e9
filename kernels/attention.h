// Fused attention forward without gradients (the distillation target), for every backend.
#pragma once

#include <cstdint>

namespace kvc::kernels {

// out[b] (nq, d) = softmax(alpha q[b] k[b]^T) v[b] for b < batch_heads, all row-major and
// contiguous: q (bh, nq, d), k and v (bh, seq, d), out (bh, nq, d). The softmax is max-subtracted
// and online over key tiles: nothing of size nq * seq is ever stored. Forward only.
// visible (bh * nq, may be null: every key): row r attends to keys 0 .. visible[r] - 1 only
// (causal attention), each count in [1, seq]; key tiles wholly past a query tile's counts are
// skipped.
#define KVC_ATTENTION_KERNELS                                                             \
  template <typename T>                                                                   \
  void attention_forward(const T* q, const T* k, const T* v, T* out, int64_t batch_heads, \
                         int64_t nq, int64_t seq, int64_t d, double alpha,                \
                         const int32_t* visible = nullptr);

namespace cpu {
KVC_ATTENTION_KERNELS
}
namespace cuda {
KVC_ATTENTION_KERNELS
}
#undef KVC_ATTENTION_KERNELS

// Explicit instantiations, one list for both backends.
#define KVC_ATTENTION_INSTANTIATE(T)                                                              \
  template void attention_forward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, \
                                     int64_t, double, const int32_t*);

}  // namespace kvc::kernels
