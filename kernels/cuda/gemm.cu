// Batched GEMM on cuBLAS: row-major C = op(A) op(B) computed as column-major C^T = op(B)^T op(A)^T.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <memory>
#include <type_traits>

#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/gemm.h"
#include "kernels/precision.h"

namespace kvc::kernels::cuda {

namespace {

std::atomic<MathPrecision> g_precision{MathPrecision::fp32};

// Created on first use, on stream(). Never destroyed (nor its workspace), like the allocator's
// cache: destroying it from a static destructor may run after the CUDA runtime has shut down.
cublasHandle_t handle() {
  static cublasHandle_t h = [] {
    cublasHandle_t created = nullptr;
    KVC_CUBLAS_CHECK(cublasCreate(&created));
    KVC_CUBLAS_CHECK(cublasSetStream(created, stream()));
    // An explicit workspace (32 MiB, what cuBLAS recommends for Hopper): cuBLAS then never
    // allocates during a call, which a step captured in a CUDA graph needs.
    constexpr size_t kWorkspace = size_t{32} << 20;
    void* workspace = nullptr;
    KVC_CUDA_CHECK(cudaMalloc(&workspace, kWorkspace));
    KVC_CUBLAS_CHECK(cublasSetWorkspace(created, workspace, kWorkspace));
    return created;
  }();
  return h;
}

int checked_int(int64_t v, const char* what) {
  KVC_CHECK(v >= 0 && v <= INT_MAX, "gemm: ", what, " = ", v, " does not fit cuBLAS's int");
  return static_cast<int>(v);
}

template <typename T>
struct CublasType;
template <>
struct CublasType<float> {
  static constexpr cudaDataType_t data = CUDA_R_32F;
  static cublasComputeType_t compute() {
    switch (g_precision.load()) {
      case MathPrecision::tf32:
        return CUBLAS_COMPUTE_32F_FAST_TF32;
      case MathPrecision::bf16:  // operands rounded to bfloat16 inside cuBLAS, FP32 accumulation
        return CUBLAS_COMPUTE_32F_FAST_16BF;
      case MathPrecision::fp32:
        break;
    }
    return CUBLAS_COMPUTE_32F;
  }
};
template <>
struct CublasType<double> {
  static constexpr cudaDataType_t data = CUDA_R_64F;
  static cublasComputeType_t compute() { return CUBLAS_COMPUTE_64F; }
};

// k == 0: C = beta * C (no product to add); cuBLAS is not asked about empty products.
template <typename T>
__global__ void scale_c_kernel(T* c, int64_t batches, int64_t outer_inner, int64_t m, int64_t n,
                               int64_t ldc, int64_t outer_stride, int64_t inner_stride, T beta) {
  const int64_t total = batches * m * n;
  KVC_GRID_LOOP(idx, total) {
    const int64_t col = idx % n, row = (idx / n) % m, batch = idx / (m * n);
    const int64_t p = batch / outer_inner, q = batch % outer_inner;
    T* x = c + p * outer_stride + q * inner_stride + row * ldc + col;
    *x = beta == T(0) ? T(0) : beta * *x;
  }
}

// Elements from an operand's first one to its last: rows of `ld` elements, `cols` of each used,
// at every batch offset.
int64_t operand_extent(int64_t rows, int64_t cols, int64_t ld, const GemmArgs& g,
                       int64_t outer_stride, int64_t inner_stride) {
  return (g.batch_outer - 1) * outer_stride + (g.batch_inner - 1) * inner_stride + (rows - 1) * ld +
         cols;
}

// Products with a short inner dimension (bias broadcasts, k == 1) gain nothing from bf16.
constexpr int64_t kBf16MinK = 16;

// Whether rounding the operands to bf16 pays for its conversion pass (read float32, write bf16:
// 6 bytes an element; none for an operand whose copy another op holds, *_held) with a product
// that reads half the bytes at twice TF32's tensor-core rate.
// A memory-bound product (few FLOPs per byte: thin weights over many rows, their gradients) does
// not gain: it keeps float32 operands on TF32 tensor cores, more precise than bf16, so no result
// gets worse. Times in units of one byte of HBM traffic; the rates are the H100/H200 ratios
// (~100 TF32 FLOPs per byte of bandwidth, bf16 tensor cores ~2x TF32).
bool bf16_pays(double flops, double a_elems, double b_elems, double c_elems, bool a_held,
               bool b_held) {
  constexpr double kTf32FlopsPerByte = 100.0;
  const double tf32 = std::max(flops / kTf32FlopsPerByte, 4.0 * (a_elems + b_elems + c_elems));
  const double bf16 =
      6.0 * ((a_held ? 0.0 : a_elems) + (b_held ? 0.0 : b_elems)) +
      std::max(flops / (2 * kTf32FlopsPerByte), 2.0 * (a_elems + b_elems) + 4.0 * c_elems);
  return bf16 < tf32;
}

}  // namespace

void set_math_precision(MathPrecision p) { g_precision.store(p); }
MathPrecision math_precision() { return g_precision.load(); }

template <typename T>
void gemm(const GemmArgs& args, const T* a, const T* b, T* c) {
  if (args.m == 0 || args.n == 0 || args.batch_outer == 0 || args.batch_inner == 0) return;
  GemmArgs g = args;
  if (g.k == 0) {
    const int64_t total = g.batch_outer * g.batch_inner * g.m * g.n;
    scale_c_kernel<T><<<grid_for(total), kThreads, 0, stream()>>>(
        c, g.batch_outer * g.batch_inner, g.batch_inner, g.m, g.n, g.ldc, g.outer_stride_c,
        g.inner_stride_c, static_cast<T>(g.beta));
    KVC_CUDA_CHECK(cudaGetLastError());
    return;
  }
  // Fewer cuBLAS calls: a lone inner batch makes the outer one strided, and an outer stride that
  // continues the inner one (for A, B and C alike) folds both into one strided batch.
  if (g.batch_inner == 1) {
    g.batch_inner = g.batch_outer;
    g.inner_stride_a = g.outer_stride_a;
    g.inner_stride_b = g.outer_stride_b;
    g.inner_stride_c = g.outer_stride_c;
    g.batch_outer = 1;
  } else if (g.batch_outer > 1 && g.outer_stride_a == g.inner_stride_a * g.batch_inner &&
             g.outer_stride_b == g.inner_stride_b * g.batch_inner &&
             g.outer_stride_c == g.inner_stride_c * g.batch_inner) {
    g.batch_inner *= g.batch_outer;
    g.batch_outer = 1;
  }
  const cublasOperation_t op_a = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int m = checked_int(g.m, "m"), n = checked_int(g.n, "n"), k = checked_int(g.k, "k");
  const int lda = checked_int(g.lda, "lda"), ldb = checked_int(g.ldb, "ldb");
  const int ldc = checked_int(g.ldc, "ldc");
  // Entries that share one C (stride 0) must run one after another, as on the CPU, where with
  // beta == 1 they add up; inside one strided-batched call they would race.
  const bool shared_c = g.inner_stride_c == 0 && g.batch_inner > 1;
  const int64_t inner_calls = shared_c ? g.batch_inner : 1;
  const int batch = shared_c ? 1 : checked_int(g.batch_inner, "batch_inner");
  const T alpha = static_cast<T>(g.alpha), beta = static_cast<T>(g.beta);
  cudaDataType_t type_ab = CublasType<T>::data;
  const cudaDataType_t type_c = CublasType<T>::data;
  cublasComputeType_t compute = CublasType<T>::compute();
  size_t elem_ab = sizeof(T);
  // bf16: copies of the operands, same layout. cuBLAS's CUBLAS_COMPUTE_32F_FAST_16BF on float32
  // operands is free to run TF32 kernels (and does), so bf16 math rounds the operands itself and
  // runs the product on bf16 tensor cores.
  Bf16Copy a16, b16;
  if constexpr (std::is_same_v<T, float>) {
    if (g_precision.load() == MathPrecision::bf16 && g.k >= kBf16MinK) {
      const int64_t a_rows = g.trans_a ? g.k : g.m, a_cols = g.trans_a ? g.m : g.k;
      const int64_t b_rows = g.trans_b ? g.n : g.k, b_cols = g.trans_b ? g.k : g.n;
      const int64_t a_extent =
          operand_extent(a_rows, a_cols, g.lda, g, g.outer_stride_a, g.inner_stride_a);
      const int64_t b_extent =
          operand_extent(b_rows, b_cols, g.ldb, g, g.outer_stride_b, g.inner_stride_b);
      const double products = static_cast<double>(g.batch_outer) * g.batch_inner;
      const double flops = 2.0 * products * g.m * g.n * g.k;
      if (bf16_pays(flops, a_extent, b_extent, products * g.m * g.n, bf16_copy_held(a, a_extent),
                    bf16_copy_held(b, b_extent))) {
        a16 = bf16_copy(a, a_extent);
        b16 = bf16_copy(b, b_extent);
        type_ab = CUDA_R_16BF;
        compute = CUBLAS_COMPUTE_32F;
        elem_ab = sizeof(__nv_bfloat16);
      } else {
        compute = CUBLAS_COMPUTE_32F_FAST_TF32;
      }
    }
  }
  const char* a_base =
      a16.p ? reinterpret_cast<const char*>(a16.p) : reinterpret_cast<const char*>(a);
  const char* b_base =
      b16.p ? reinterpret_cast<const char*>(b16.p) : reinterpret_cast<const char*>(b);
  cublasHandle_t h = handle();
  for (int64_t p = 0; p < g.batch_outer; ++p) {
    for (int64_t q = 0; q < inner_calls; ++q) {
      const void* pa = a_base + (p * g.outer_stride_a + q * g.inner_stride_a) * elem_ab;
      const void* pb = b_base + (p * g.outer_stride_b + q * g.inner_stride_b) * elem_ab;
      T* pc = c + p * g.outer_stride_c;
      // Column-major view: C^T (n x m) = op(B)^T (n x k) @ op(A)^T (k x m); each row-major
      // operand is its own transpose in column-major with the same leading dimension.
      KVC_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
          h, op_b, op_a, n, m, k, &alpha, pb, type_ab, ldb, g.inner_stride_b, pa, type_ab, lda,
          g.inner_stride_a, &beta, pc, type_c, ldc, g.inner_stride_c, batch, compute,
          CUBLAS_GEMM_DEFAULT));
    }
  }
}

template void gemm<float>(const GemmArgs&, const float*, const float*, float*);
template void gemm<double>(const GemmArgs&, const double*, const double*, double*);

}  // namespace kvc::kernels::cuda
