// CPU batched GEMM: one OpenBLAS CBLAS call (row-major) per batch entry.
#include "kernels/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "base/error.h"

namespace kvc::kernels::cpu {

namespace {

// CBLAS takes 32-bit ints (blasint) here; a silent wrap would compute garbage.
blasint to_blas(int64_t v, const char* what) {
  KVC_CHECK(v >= 0 && v <= INT_MAX, "gemm: ", what, " = ", v, " does not fit a BLAS int");
  return static_cast<blasint>(v);
}

void gemm_one(const GemmArgs& g, const float* a, const float* b, float* c, blasint m, blasint n,
              blasint k, blasint lda, blasint ldb, blasint ldc) {
  cblas_sgemm(CblasRowMajor, g.trans_a ? CblasTrans : CblasNoTrans,
              g.trans_b ? CblasTrans : CblasNoTrans, m, n, k, static_cast<float>(g.alpha), a, lda,
              b, ldb, static_cast<float>(g.beta), c, ldc);
}

void gemm_one(const GemmArgs& g, const double* a, const double* b, double* c, blasint m, blasint n,
              blasint k, blasint lda, blasint ldb, blasint ldc) {
  cblas_dgemm(CblasRowMajor, g.trans_a ? CblasTrans : CblasNoTrans,
              g.trans_b ? CblasTrans : CblasNoTrans, m, n, k, g.alpha, a, lda, b, ldb, g.beta, c,
              ldc);
}

// C = beta * C, with beta == 0 writing zeros (NaN in C must not survive, as BLAS promises).
template <typename T>
void scale_c(const GemmArgs& g, T* c) {
  const T beta = static_cast<T>(g.beta);
  for (int64_t i = 0; i < g.m; ++i) {
    T* row = c + i * g.ldc;
    if (g.beta == 0) {
      std::fill(row, row + g.n, T(0));
    } else {
      for (int64_t j = 0; j < g.n; ++j) row[j] *= beta;
    }
  }
}

// OpenBLAS splits a product over all its threads from 2^18 multiply-adds on, where waking and
// joining them costs more than the split saves. On a 2-core machine (sgemm, one thread against
// two): (64, 64, 256) took 2.1x as long on two, (1024, 32, 32) 2.7x; at 2^22 two threads were
// 0.88-1.56x of one over seven shapes, at 2^23 0.66-1.35x (most below 1), at 2^24 0.64-0.97x. So a
// product gets one thread per kMacsPerThread multiply-adds, at most as many as OpenBLAS was given
// (OPENBLAS_NUM_THREADS, else one a core): small ones run on the calling thread alone, and a
// machine with many cores does not split a mid-sized product into slivers.
constexpr double kMacsPerThread = double{1 << 22};

// Holds OpenBLAS to the threads a product of `macs` multiply-adds pays for while it lives.
class ProductThreads {
 public:
  explicit ProductThreads(double macs) {
    static const int configured = openblas_get_num_threads();
    const double paid = std::max(1.0, std::floor(macs / kMacsPerThread));
    if (paid < configured) {
      restore_ = configured;
      openblas_set_num_threads(static_cast<int>(paid));
    }
  }
  ~ProductThreads() {
    if (restore_ > 0) openblas_set_num_threads(restore_);
  }
  ProductThreads(const ProductThreads&) = delete;
  ProductThreads& operator=(const ProductThreads&) = delete;

 private:
  int restore_ = 0;
};

}  // namespace

template <typename T>
void gemm(const GemmArgs& g, const T* a, const T* b, T* c) {
  KVC_CHECK(g.m >= 0 && g.n >= 0 && g.k >= 0, "gemm: negative size m ", g.m, " n ", g.n, " k ",
            g.k);
  if (g.m == 0 || g.n == 0 || g.batch_outer == 0 || g.batch_inner == 0) return;
  const blasint m = to_blas(g.m, "m"), n = to_blas(g.n, "n"), k = to_blas(g.k, "k");
  // BLAS rejects a leading dimension below the row length even when k == 0 makes it unused.
  const blasint lda = to_blas(std::max<int64_t>(g.lda, 1), "lda");
  const blasint ldb = to_blas(std::max<int64_t>(g.ldb, 1), "ldb");
  const blasint ldc = to_blas(g.ldc, "ldc");
  const ProductThreads threads(static_cast<double>(g.m) * static_cast<double>(g.n) *
                               static_cast<double>(g.k));
  for (int64_t p = 0; p < g.batch_outer; ++p) {
    for (int64_t q = 0; q < g.batch_inner; ++q) {
      const T* ap = a + p * g.outer_stride_a + q * g.inner_stride_a;
      const T* bp = b + p * g.outer_stride_b + q * g.inner_stride_b;
      T* cp = c + p * g.outer_stride_c + q * g.inner_stride_c;
      if (k == 0 || g.alpha == 0) {
        scale_c(g, cp);  // an empty sum: BLAS may skip the beta pass, so do it here
      } else {
        gemm_one(g, ap, bp, cp, m, n, k, lda, ldb, ldc);
      }
    }
  }
}

template void gemm<float>(const GemmArgs&, const float*, const float*, float*);
template void gemm<double>(const GemmArgs&, const double*, const double*, double*);

}  // namespace kvc::kernels::cpu
