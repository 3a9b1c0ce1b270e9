// Batched GEMM in row-major terms: OpenBLAS on the CPU, cuBLAS on CUDA (float32 GEMMs there
// round their operands as kernels/precision.h's setting says).
#pragma once

#include <cstdint>

namespace kvc::kernels {

// For every batch index (p, q), p < batch_outer, q < batch_inner:
//   C[p,q] = alpha * op(A[p,q]) @ op(B[p,q]) + beta * C[p,q]
// op(A) is (m, k), op(B) is (k, n), C is (m, n); all row-major with leading dims lda/ldb/ldc.
// X[p,q] starts at X + p * outer_stride_x + q * inner_stride_x (a stride of 0 shares an operand,
// e.g. one weight per head across the batch). beta == 0 ignores C's old contents.
struct GemmArgs {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t batch_outer = 1, batch_inner = 1;
  int64_t outer_stride_a = 0, outer_stride_b = 0, outer_stride_c = 0;
  int64_t inner_stride_a = 0, inner_stride_b = 0, inner_stride_c = 0;
  double alpha = 1.0, beta = 0.0;
};

#define KVC_GEMM_KERNELS \
  template <typename T>  \
  void gemm(const GemmArgs& args, const T* a, const T* b, T* c);

namespace cpu {
KVC_GEMM_KERNELS
}
namespace cuda {
KVC_GEMM_KERNELS
}  // namespace cuda
#undef KVC_GEMM_KERNELS

}  // namespace kvc::kernels
