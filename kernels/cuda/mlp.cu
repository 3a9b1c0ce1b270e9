// The MLP kinds' two layers on cuBLASLt with fused epilogues (see kernels/mlp.h).
//
// Every product is written in row-major terms, as kernels/gemm.h's: C (m, n) = op(A) op(B) per
// batch entry. cuBLASLt is column-major, so it computes C^T = op(B)^T op(A)^T: its "A" is our B,
// and its bias (one value per row of its D) is one value per column of our C.
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "kernels/cuda/attention_split.cuh"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma_sync.cuh"
#include "kernels/elementwise.h"
#include "kernels/fill.h"
#include "kernels/math/elementwise.h"
#include "kernels/memory.h"
#include "kernels/mlp.h"
#include "kernels/precision.h"
#include "kernels/reduce.h"

namespace kvc::kernels::cuda {

namespace {

// cuBLASLt's recommended workspace on Hopper. Allocated once and never freed (as gemm.cu's):
// a fixed workspace keeps every call capturable in a CUDA graph.
constexpr size_t kWorkspace = size_t{32} << 20;

cublasLtHandle_t lt_handle() {
  static cublasLtHandle_t h = [] {
    cublasLtHandle_t created = nullptr;
    KVC_CUBLAS_CHECK(cublasLtCreate(&created));
    return created;
  }();
  return h;
}

void* lt_workspace() {
  static void* w = [] {
    void* p = nullptr;
    KVC_CUDA_CHECK(cudaMalloc(&p, kWorkspace));
    return p;
  }();
  return w;
}

// Products independent of one another (one per batch index) run side by side on kLanes streams
// forked from stream() and joined back before their launcher goes on (side_by_side below): at
// `nsa` each is a few dozen CTAs, too few to fill the GPU alone. Lane i runs on side stream i
// with slice i of the workspace; kMainLane is stream() with all of it. The join orders every
// later use of their memory after them, as stream() promises the caching allocator.
constexpr int kLanes = 4, kMainLane = -1;
// The largest weight gradient computed as a partial per lane and added up (see mlp_backward).
constexpr size_t kPartialGradBytes = size_t{4} << 20;

struct LaneStreams {
  cudaStream_t side[kLanes] = {};
  cudaEvent_t fork = nullptr, join[kLanes] = {};
};

// Created once, never destroyed (as stream()).
const LaneStreams& lane_streams() {
  static const LaneStreams l = [] {
    LaneStreams made;
    KVC_CUDA_CHECK(cudaEventCreateWithFlags(&made.fork, cudaEventDisableTiming));
    for (int i = 0; i < kLanes; ++i) {
      KVC_CUDA_CHECK(cudaStreamCreateWithFlags(&made.side[i], cudaStreamNonBlocking));
      KVC_CUDA_CHECK(cudaEventCreateWithFlags(&made.join[i], cudaEventDisableTiming));
    }
    return made;
  }();
  return l;
}

cudaStream_t lane_stream(int lane) {
  return lane == kMainLane ? stream() : lane_streams().side[lane];
}
size_t lane_workspace_bytes(int lane) {
  return lane == kMainLane ? kWorkspace : kWorkspace / kLanes;
}
void* lane_workspace(int lane) {
  return static_cast<char*>(lt_workspace()) +
         (lane == kMainLane ? 0 : lane * (kWorkspace / kLanes));
}

// f(i, lane) for i < n: with `fork`, side by side on the lanes (i on lane i % kLanes, each lane's
// calls in order), else one after another on stream(); either way after everything queued on
// stream() before and before everything queued after.
template <typename F>
void side_by_side(int64_t n, bool fork, F&& f) {
  if (n <= 1 || !fork) {
    for (int64_t i = 0; i < n; ++i) f(i, kMainLane);
    return;
  }
  const LaneStreams& l = lane_streams();
  const int used = static_cast<int>(std::min<int64_t>(n, kLanes));
  KVC_CUDA_CHECK(cudaEventRecord(l.fork, stream()));
  for (int i = 0; i < used; ++i) KVC_CUDA_CHECK(cudaStreamWaitEvent(l.side[i], l.fork, 0));
  const auto join = [&] {  // also on the way out of a throw: a capture needs every fork joined
    cudaError_t first = cudaSuccess;
    for (int i = 0; i < used; ++i) {
      cudaError_t e = cudaEventRecord(l.join[i], l.side[i]);
      if (e == cudaSuccess) e = cudaStreamWaitEvent(stream(), l.join[i], 0);
      if (first == cudaSuccess) first = e;
    }
    return first;
  };
  try {
    for (int64_t i = 0; i < n; ++i) f(i, static_cast<int>(i % kLanes));
  } catch (...) {
    join();
    throw;
  }
  KVC_CUDA_CHECK(join());
}

// One (batched) product and its epilogue. Strides and leading dimensions in elements.
struct Product {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldc = 0;
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
  cudaDataType_t ab = CUDA_R_32F, c = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // n values per batch entry, C's type
  int64_t bias_stride = 0;
  float beta = 0.0f;
  int lane = kMainLane;  // where it runs (side_by_side)
};

template <typename V>
void set_attr(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& value) {
  KVC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof value));
}

struct Layout {
  cublasLtMatrixLayout_t handle = nullptr;
  Layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
         int64_t stride) {
    KVC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&handle, type, static_cast<uint64_t>(rows),
                                                static_cast<uint64_t>(cols), ld));
    if (batch > 1) {
      const int32_t count = static_cast<int32_t>(batch);
      KVC_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(handle, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                        &count, sizeof count));
      KVC_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
          handle, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
    }
  }
  ~Layout() { cublasLtMatrixLayoutDestroy(handle); }
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;
};

struct Desc {
  cublasLtMatmulDesc_t handle = nullptr;
  explicit Desc(cublasComputeType_t compute) {
    KVC_CUBLAS_CHECK(cublasLtMatmulDescCreate(&handle, compute, CUDA_R_32F));
  }
  ~Desc() { cublasLtMatmulDescDestroy(handle); }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
};

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The algorithm cuBLASLt's heuristic ranks first, asked once per problem (sizes, types,
// epilogue and the pointers' 16-byte alignment, on which its choice depends).
cublasLtMatmulAlgo_t best_algo(const Product& p, const void* a, const void* b, const void* c,
                               cublasLtMatmulDesc_t desc, const Layout& la, const Layout& lb,
                               const Layout& lc) {
  static std::mutex mutex;
  static std::map<std::vector<int64_t>, cublasLtMatmulAlgo_t> cache;
  const std::vector<int64_t> key{
      p.trans_a,
      p.trans_b,
      p.m,
      p.n,
      p.k,
      p.lda,
      p.ldb,
      p.ldc,
      p.batch,
      p.stride_a,
      p.stride_b,
      p.stride_c,
      p.ab,
      p.c,
      p.compute,
      p.epilogue,
      p.bias_stride,
      aligned16(a) + 2 * aligned16(b) + 4 * aligned16(c) + 8 * aligned16(p.bias),
      static_cast<int64_t>(lane_workspace_bytes(p.lane))};
  std::lock_guard<std::mutex> lock(mutex);
  const auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  cublasLtMatmulPreference_t pref = nullptr;
  KVC_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t workspace = lane_workspace_bytes(p.lane);
  cublasLtMatmulHeuristicResult_t result{};
  int count = 0;
  const cublasStatus_t status = [&] {
    const cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    return cublasLtMatmulAlgoGetHeuristic(lt_handle(), desc, la.handle, lb.handle, lc.handle,
                                          lc.handle, pref, 1, &result, &count);
  }();
  cublasLtMatmulPreferenceDestroy(pref);
  KVC_CUBLAS_CHECK(status);
  KVC_CHECK(count > 0, "cuBLASLt has no algorithm for the MLP product m ", p.m, ", n ", p.n, ", k ",
            p.k, ", batch ", p.batch, ", epilogue ", static_cast<int>(p.epilogue));
  cache.emplace(key, result.algo);
  return result.algo;
}

// Whether a launcher's independent products pay for running side by side. Measured on the H200 at
// `nsa` (b 4): TF32 products (a few dozen CTAs each) took 60-80 us less a step side by side;
// bf16 ones, shorter, lost 15-45 us. FP32 ones were not tried.
bool side_by_side_pays(const Product& p) { return p.compute == CUBLAS_COMPUTE_32F_FAST_TF32; }

void run(const Product& p, const void* a, const void* b, void* c) {
  Desc desc(p.compute);
  const cublasOperation_t op_a = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A: our B
  const cublasOperation_t op_b = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  set_attr(desc.handle, CUBLASLT_MATMUL_DESC_TRANSA, op_a);
  set_attr(desc.handle, CUBLASLT_MATMUL_DESC_TRANSB, op_b);
  if (p.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    set_attr(desc.handle, CUBLASLT_MATMUL_DESC_EPILOGUE, p.epilogue);
    if (p.bias) {
      set_attr(desc.handle, CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.bias);
      set_attr(desc.handle, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, p.bias_stride);
    }
  }
  // Column-major shapes: our B is (k, n) row-major = (n, k) column-major, and so on.
  const Layout la(p.ab, p.trans_b ? p.k : p.n, p.trans_b ? p.n : p.k, p.ldb, p.batch, p.stride_b);
  const Layout lb(p.ab, p.trans_a ? p.m : p.k, p.trans_a ? p.k : p.m, p.lda, p.batch, p.stride_a);
  const Layout lc(p.c, p.n, p.m, p.ldc, p.batch, p.stride_c);
  const cublasLtMatmulAlgo_t algo = best_algo(p, a, b, c, desc.handle, la, lb, lc);
  const float alpha = 1.0f, beta = p.beta;
  KVC_CUBLAS_CHECK(cublasLtMatmul(lt_handle(), desc.handle, &alpha, b, la.handle, a, lb.handle,
                                  &beta, c, lc.handle, c, lc.handle, &algo, lane_workspace(p.lane),
                                  lane_workspace_bytes(p.lane), lane_stream(p.lane)));
}

// Launches one of the elementwise kernels below, which move 16 bytes of T a thread and step (the
// n % (16 / sizeof(T)) last elements one by one): a grid for the steps.
template <typename T, typename Kernel, typename... Args>
void launch_16_bytes(Kernel kernel, int64_t n, Args... args) {
  const int64_t steps = n / (16 / static_cast<int64_t>(sizeof(T)));
  kernel<<<grid_for(std::max<int64_t>(steps, 1)), kThreads, 0, stream()>>>(args...);
  KVC_CUDA_CHECK(cudaGetLastError());
}

// GELU for the hidden values of operand type T. Under bf16 (values rounded to bfloat16) from
// erfc's exponential form (kernels/math: about half the instructions, which bound the GELU
// product and the hidden gradient, and accurate in the negative tail where 1 + erf cancels), in
// every bf16 kernel alike, so that a backward recomputes the forward's values; the erf form
// elsewhere, as every other GELU of the project.
template <typename T>
__device__ __forceinline__ float mlp_gelu(float x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return math::gelu_erfc(x);
  } else {
    return math::gelu(x);
  }
}
// gy GELU'(x), and GELU(x) in *act, as mlp_gelu<T> computes it.
template <typename T>
__device__ __forceinline__ float mlp_gelu_with_backward(float x, float gy, float* act) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return math::gelu_erfc_with_backward(x, gy, act);
  } else {
    return math::gelu_with_backward(x, gy, act);
  }
}

// a = mlp_gelu<T>(p) (float32 math) over n elements, p == a in place; 16 bytes a thread and step
// as activation_backward_kernel below.
template <typename T>
__global__ void gelu_kernel(const T* p, T* a, int64_t n) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t vecs = n / kVec;
  KVC_GRID_LOOP(i, vecs) {
    uint4 v = __ldcs(reinterpret_cast<const uint4*>(p) + i);
    T* e = reinterpret_cast<T*>(&v);
#pragma unroll
    for (int j = 0; j < kVec; ++j) e[j] = static_cast<T>(mlp_gelu<T>(static_cast<float>(e[j])));
    reinterpret_cast<uint4*>(a)[i] = v;
  }
  KVC_GRID_LOOP(i, n - vecs * kVec) {
    const int64_t e = vecs * kVec + i;
    a[e] = static_cast<T>(mlp_gelu<T>(static_cast<float>(p[e])));
  }
}

// GELU's derivative, g = g * gelu'(p) per element (f(saved, g) -> g); ReLU's is relu_masked below.
template <typename T>
struct GeluGrad {  // saved: GELU's input
  __device__ float operator()(float p, float g) const {
    float act;
    return mlp_gelu_with_backward<T>(p, g, &act);
  }
};

// g[i] = f(saved[i], g[i]) in place over n elements, 16 bytes of each per thread and step (the
// pass moves three bytes per byte of g and is bound by them), the n % (16 / sizeof(T)) last ones
// one by one.
template <typename T, typename F>
__global__ void activation_backward_kernel(const T* __restrict__ saved, T* __restrict__ g,
                                           int64_t n, F f) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t vecs = n / kVec;
  KVC_GRID_LOOP(i, vecs) {
    const uint4 sv = __ldcs(reinterpret_cast<const uint4*>(saved) + i);
    uint4 gv = __ldcs(reinterpret_cast<const uint4*>(g) + i);
    const T* se = reinterpret_cast<const T*>(&sv);
    T* ge = reinterpret_cast<T*>(&gv);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      ge[e] = static_cast<T>(f(static_cast<float>(se[e]), static_cast<float>(ge[e])));
    }
    reinterpret_cast<uint4*>(g)[i] = gv;
  }
  KVC_GRID_LOOP(i, n - vecs * kVec) {
    const int64_t e = vecs * kVec + i;
    g[e] = static_cast<T>(f(static_cast<float>(saved[e]), static_cast<float>(g[e])));
  }
}

template <typename T, typename F>
void activation_backward(const void* saved, void* g, int64_t n, F f) {
  launch_16_bytes<T>(activation_backward_kernel<T, F>, n, static_cast<const T*>(saved),
                     static_cast<T*>(g), n, f);
}

// ReLU's derivative from signs kept aside, so that the backward can write the gradient over the
// kept activations themselves: mask[i] has bit e set where element (16 / sizeof(T)) i + e of a
// (ReLU's output) is positive, a byte per 16 bytes of a; the n % (16 / sizeof(T)) last elements
// take a byte each after them (relu_mask_bytes).
template <typename T>
int64_t relu_mask_bytes(int64_t n) {
  constexpr int kVec = 16 / sizeof(T);
  return n / kVec + n % kVec;
}
template <typename T>
__global__ void relu_mask_kernel(const T* __restrict__ a, uint8_t* __restrict__ mask, int64_t n) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t vecs = n / kVec;
  KVC_GRID_LOOP(i, vecs) {
    const uint4 v = __ldcs(reinterpret_cast<const uint4*>(a) + i);
    const T* e = reinterpret_cast<const T*>(&v);
    unsigned bits = 0;
#pragma unroll
    for (int j = 0; j < kVec; ++j) bits |= (static_cast<float>(e[j]) > 0.0f ? 1u : 0u) << j;
    mask[i] = static_cast<uint8_t>(bits);
  }
  KVC_GRID_LOOP(i, n - vecs * kVec) {
    mask[vecs + i] = static_cast<float>(a[vecs * kVec + i]) > 0.0f ? 1 : 0;
  }
}
// g = g where the mask's bit is set, else 0, in place (the mask as relu_mask_kernel wrote it).
template <typename T>
__global__ void relu_masked_kernel(const uint8_t* __restrict__ mask, T* __restrict__ g, int64_t n) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t vecs = n / kVec;
  KVC_GRID_LOOP(i, vecs) {
    uint4 v = __ldcs(reinterpret_cast<const uint4*>(g) + i);
    T* e = reinterpret_cast<T*>(&v);
    const unsigned bits = mask[i];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if (!((bits >> j) & 1u)) e[j] = static_cast<T>(0.0f);
    }
    reinterpret_cast<uint4*>(g)[i] = v;
  }
  KVC_GRID_LOOP(i, n - vecs * kVec) {
    if (!mask[vecs + i]) g[vecs * kVec + i] = static_cast<T>(0.0f);
  }
}
template <typename T>
void relu_mask(const void* a, void* mask, int64_t n) {
  launch_16_bytes<T>(relu_mask_kernel<T>, n, static_cast<const T*>(a), static_cast<uint8_t*>(mask),
                     n);
}
template <typename T>
void relu_masked(const void* mask, void* g, int64_t n) {
  launch_16_bytes<T>(relu_masked_kernel<T>, n, static_cast<const uint8_t*>(mask),
                     static_cast<T*>(g), n);
}

// One k-step (16) of a warp's 32 x (8 kNTiles) tile, 2 x kNTiles mma tiles of 16 x 8, from
// shared memory: A held as (rows, k) rows (kAKMajor: k contiguous) or as (k, rows) rows, read
// with ldmatrix's transpose, `a_ld` elements a row, the warp's rows from a_row0; B held as (n, k)
// rows (kBKMajor) or as (k, n) rows, `b_ld` elements a row, the warp's columns from n0.
template <bool kBKMajor, int kNTiles, bool kAKMajor = true>
__device__ __forceinline__ void warp_tile_k16(float (&acc)[2][kNTiles][4], const uint16_t* as,
                                              int a_ld, int a_row0, const uint16_t* bs, int b_ld,
                                              int n0, int ks, int lane) {
  static_assert(kNTiles % 2 == 0, "column tiles come in pairs (one ldmatrix_x4 each)");
  const int mi = lane / 8;
  uint32_t a[2][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
    if constexpr (kAKMajor) {
      ldmatrix_x4(a[mt], as + (a_row0 + mt * 16 + lane % 16) * a_ld + ks + lane / 16 * 8);
    } else {
      // Matrix i = lane / 8 of the four: k from ks + 8 (i / 2), rows from 8 (i % 2).
      ldmatrix_x4_trans(
          a[mt], as + (ks + lane / 16 * 8 + lane % 8) * a_ld + a_row0 + mt * 16 + (mi & 1) * 8);
    }
  }
#pragma unroll
  for (int np = 0; np < kNTiles / 2; ++np) {  // pairs of column tiles
    uint32_t b[4];
    const int n = n0 + np * 16 + (mi >> 1) * 8;
    if constexpr (kBKMajor) {
      ldmatrix_x4(b, bs + (n + lane % 8) * b_ld + ks + (mi & 1) * 8);
    } else {
      ldmatrix_x4_trans(b, bs + (ks + (mi & 1) * 8 + lane % 8) * b_ld + n);
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      mma_bf16(acc[mt][2 * np], a[mt], b[0], b[1]);
      mma_bf16(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
    }
  }
}

// Rows [0, kRowsN) of a bf16 matrix with k <= kMaxK values a row (k % 8 == 0) into shared memory
// rows `ld` elements apart, 16 bytes a cp.async (committed by the caller): row r from
// src + r src_ld, zeros where !row_ok(r). Thread tid copies chunk tid % (kMaxK / 8) of every
// (kThreads / (kMaxK / 8))-th row from tid / (kMaxK / 8), so that no index is divided by the
// runtime k; chunks past k are left alone (the products stop at k).
template <int kRowsN, int kMaxK, int kThreads, typename RowOk>
__device__ __forceinline__ void copy_rows_async(uint16_t* dst, int ld, const uint16_t* src,
                                                int64_t src_ld, int k, int tid, RowOk&& row_ok) {
  constexpr int kRowChunks = kMaxK / 8, kPassRows = kThreads / kRowChunks;
  static_assert(kThreads % kRowChunks == 0 && kRowsN % kPassRows == 0, "whole passes");
  const int c = tid % kRowChunks * 8;
  if (c >= k) return;
#pragma unroll
  for (int j = 0; j < kRowsN / kPassRows; ++j) {
    const int r = tid / kRowChunks + j * kPassRows;
    const bool valid = row_ok(r);
    attention_detail::cp_async16(reinterpret_cast<float*>(dst + r * ld + c),
                                 reinterpret_cast<const float*>(valid ? src + r * src_ld + c : src),
                                 valid);
  }
}

// The gradient at the first product's output at two adjacent values: p (of gy W2^T) times the
// activation's derivative at the kept value a (GELU's input; or ReLU's output, whose sign is its
// input's), and under GELU GELU's output at a in *act (one erf for both).
template <bool kGelu>
__device__ __forceinline__ float2 hidden_grad_pair(float2 a, float p0, float p1, float2* act) {
  if constexpr (kGelu) {
    return make_float2(mlp_gelu_with_backward<__nv_bfloat16>(a.x, p0, &act->x),
                       mlp_gelu_with_backward<__nv_bfloat16>(a.y, p1, &act->y));
  } else {
    *act = a;
    return make_float2(a.x > 0.0f ? p0 : 0.0f, a.y > 0.0f ? p1 : 0.0f);
  }
}

// Both hidden-gradient kernels' epilogue over a warp's 2 x kNt mma tiles of 16 x 8 at (row0,
// col0) of a tile: at each pair of adjacent values, the kept values in shared memory (`kept`,
// kLd bf16 a row) and the products `acc` give the bfloat16 gradient pair o, whose columns add
// into csum (the values as a ones-vector product over them would sum them); put(r, c, o, act,
// at) then stores o and GELU's output act where the kernel wants them (at: the pair in `kept`).
template <bool kGelu, int kNt, int kLd, typename Put>
__device__ __forceinline__ void hidden_grad_epilogue(const float (&acc)[2][kNt][4], uint16_t* kept,
                                                     int row0, int col0, int lane,
                                                     float (&csum)[kNt][2], Put&& put) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = row0 + mt * 16 + g + 8 * half, c = col0 + nt * 8 + 2 * t;
        __nv_bfloat162* at = reinterpret_cast<__nv_bfloat162*>(kept + r * kLd + c);
        float2 act;
        const float2 v = hidden_grad_pair<kGelu>(__bfloat1622float2(*at), acc[mt][nt][2 * half],
                                                 acc[mt][nt][2 * half + 1], &act);
        const __nv_bfloat162 o = __floats2bfloat162_rn(v.x, v.y);
        put(r, c, o, act, at);
        csum[nt][0] += __low2float(o);
        csum[nt][1] += __high2float(o);
      }
    }
  }
}

// The gradient at the first product's output under bf16 in one pass, where it would otherwise
// take four (the product gy W2^T into the hidden buffer; ReLU's signs kept aside and applied
// after, or GELU's derivative in a pass of its own; b1's sum a ones-vector product over the
// result), for both weight layouts (under GELU with per-head weights hidden_grad_w2_kernel below
// serves instead). A CTA takes kRows rows of one (batch index, head), keeps their gy (k = out <=
// kMaxK) in shared memory, and walks a range of hidden columns kCols at a time; each tile's W2^T
// columns and kept activations arrive by cp.async a tile ahead (two stages). One barrier a tile:
// past it every warp is done with the tile before (its stage takes the next tile's copies) and this
// tile's copies have landed. From there each warp works on its own 32 x 32 part alone: its
// products (mma.sync), the derivative from the kept values at the same places in shared memory,
// the bfloat16 gradient written over them and then copied out 16 bytes a lane (under GELU,
// GELU's output goes out from registers), and b1's partial column sums over its 32 rows (of the
// bfloat16 values, as the ones-vector product summed them), so that one warp's stores overlap
// another's products. `saved` may be `dst` (ReLU writes over its kept output) or `gelu_out`
// (GELU's output over its kept input): a warp reads its part of each tile before it writes that
// part, and no other warp or CTA touches it. Each (batch index, head) holds `slots` rows of
// saved, dst and gelu_out (rows of them, and with the shift's row in the layout, one more that
// this kernel leaves alone).
namespace hidden_grad {
constexpr int kRows = 128, kCols = 64, kMaxK = 128, kCtaThreads = 256, kStages = 2;
constexpr int kALd = kMaxK + 8;   // bf16 a row of gy's tile (kRows, k): ldmatrix without conflicts
constexpr int kBKLd = kMaxK + 8;  // W2^T's tile as (kCols, k), Mix's layout
constexpr int kTLd = kCols + 8;   // (k, kCols) F.linear's W2 tile, and the kept tile
constexpr size_t kABytes = size_t{kRows} * kALd * sizeof(uint16_t);
constexpr size_t kBBytes =
    (kCols * kBKLd > kMaxK * kTLd ? size_t{kCols} * kBKLd : size_t{kMaxK} * kTLd) *
    sizeof(uint16_t);
constexpr size_t kTileBytes = size_t{kRows} * kTLd * sizeof(uint16_t);
constexpr size_t kStageBytes = kBBytes + kTileBytes;  // W2's tile, then the kept tile
constexpr size_t kSmemBytes = kABytes + kStages * kStageBytes;
// Warps down the tile (32 rows each), 2 across (32 columns each); b1's partial sums come a warp
// row at a time: kWarpRows parts per row tile.
constexpr int kWarpRows = 4;
static_assert(kRows == 32 * kWarpRows && kCols == 64 && kCtaThreads == 256, "8 warps of 32 x 32");
static_assert(2 * (kSmemBytes + 1024) <= 228 * 1024, "two CTAs an SM");

// Whether one of the two hidden-gradient kernels takes g: whole 16-byte copies a row of gy and of
// the hidden values, and grids within CUDA's 65535 rows and layers (this kernel's: a row tile a
// grid row, a (batch index, head) a layer; hidden_grad_w2_kernel's: a head a layer).
bool fits(const MlpArgs& g) {
  const int64_t row_tiles = (g.w + kRows - 1) / kRows;
  const bool grid = row_tiles <= 65535 && g.b * g.h <= 65535;
  return g.out % 16 == 0 && g.out <= kMaxK && g.hidden % 8 == 0 && grid;
}
}  // namespace hidden_grad

// kShared: W2 (out, hidden) for every head (F.linear's), else (h, hidden, out) (Mix's). The CTA
// takes column tiles [blockIdx.x tiles_per_cta, + tiles_per_cta) of the hidden values.
template <bool kGelu, bool kShared>
__global__ void __launch_bounds__(hidden_grad::kCtaThreads, 2)
    hidden_grad_kernel(const uint16_t* __restrict__ gy, const uint16_t* __restrict__ w2,
                       const uint16_t* saved, uint16_t* dst, float* __restrict__ col_sums,
                       uint16_t* gelu_out, int64_t heads, int64_t rows, int64_t slots,
                       int64_t hidden, int k, int64_t tiles_per_cta) {
  using namespace hidden_grad;
  extern __shared__ __align__(16) unsigned char smem[];
  uint16_t* as = reinterpret_cast<uint16_t*>(smem);
  const auto w2_stage = [&](int s) {
    return reinterpret_cast<uint16_t*>(smem + kABytes + s * kStageBytes);
  };
  const auto kept_stage = [&](int s) {
    return reinterpret_cast<uint16_t*>(smem + kABytes + s * kStageBytes + kBBytes);
  };
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t z = blockIdx.z, head = z % heads, bi = z / heads;
  const int64_t row0 = int64_t{blockIdx.y} * kRows;
  const int64_t tiles = (hidden + kCols - 1) / kCols;
  const int64_t first = int64_t{blockIdx.x} * tiles_per_cta;
  const int64_t last = first + tiles_per_cta < tiles ? first + tiles_per_cta : tiles;
  if (first >= last) return;
  const uint16_t* gz = gy + z * rows * k;
  const uint16_t* wz = w2 + (kShared ? 0 : head * hidden * k);
  const int64_t hz = z * slots * hidden;  // this (batch index, head)'s rows in saved and dst
  const auto copy16 = [](uint16_t* to, const uint16_t* from, bool valid) {
    attention_detail::cp_async16(reinterpret_cast<float*>(to), reinterpret_cast<const float*>(from),
                                 valid);
  };

  // gy's rows (kRows, k), zeros past `rows`, once (they join the first tile's group).
  copy_rows_async<kRows, kMaxK, kCtaThreads>(as, kALd, gz + row0 * k, k, k, tid,
                                             [&](int r) { return row0 + r < rows; });
  // Tile `tile` into stage s: W2^T's columns as (kCols, k) (Mix's, k contiguous) or (k, kCols)
  // (F.linear's), and the kept activations (kRows, kCols); zeros past the matrices (a zero
  // product and a zero kept value give a zero gradient, GELU's output 0: nothing past them is
  // written, and nothing adds to the sums).
  const auto issue = [&](int64_t tile, int s) {
    const int64_t col0 = tile * kCols;
    uint16_t* bs = w2_stage(s);
    uint16_t* ts = kept_stage(s);
    if constexpr (kShared) {
      for (int i = tid; i < k * (kCols / 8); i += kCtaThreads) {
        const int kk = i / (kCols / 8), c = i % (kCols / 8) * 8;
        const bool valid = col0 + c < hidden;
        copy16(bs + kk * kTLd + c, wz + (valid ? kk * hidden + col0 + c : 0), valid);
      }
    } else {
      copy_rows_async<kCols, kMaxK, kCtaThreads>(bs, kBKLd, wz + col0 * k, k, k, tid,
                                                 [&](int n) { return col0 + n < hidden; });
    }
#pragma unroll
    for (int j = 0; j < kRows * (kCols / 8) / kCtaThreads; ++j) {
      const int i = tid + kCtaThreads * j;
      const int r = i / (kCols / 8), c = i % (kCols / 8) * 8;
      const bool valid = row0 + r < rows && col0 + c < hidden;
      copy16(ts + r * kTLd + c, saved + (valid ? hz + (row0 + r) * hidden + col0 + c : 0), valid);
    }
  };
  issue(first, 0);
  attention_detail::cp_async_commit();

  // Warp (wm, wn) owns rows 32 wm.. and columns 32 wn.. of each tile: 2 x 4 mma tiles of 16 x 8.
  const int wm = warp % kWarpRows, wn = warp / kWarpRows;
  const int g = lane >> 2, t = lane & 3;
  const int64_t batches = gridDim.z / heads;
  // This warp row's partial sums: part (blockIdx.y kWarpRows + wm) of kWarpRows gridDim.y.
  float* sums_row = col_sums ? col_sums + ((head * batches + bi) * gridDim.y * kWarpRows +
                                           blockIdx.y * kWarpRows + wm) *
                                              hidden
                             : nullptr;
  for (int64_t tile = first; tile < last; ++tile) {
    const int s = static_cast<int>((tile - first) % kStages);
    const int64_t col0 = tile * kCols;
    attention_detail::cp_async_wait<0>();  // this thread's copies of the tile
    __syncthreads();  // everyone's; and every warp is past the tile before, whose stage is free
    if (tile + 1 < last) issue(tile + 1, s ^ 1);
    attention_detail::cp_async_commit();
    float acc[2][4][4] = {};
    const uint16_t* bs = w2_stage(s);
    for (int ks = 0; ks < k; ks += 16) {
      warp_tile_k16<!kShared>(acc, as, kALd, wm * 32, bs, kShared ? kTLd : kBKLd, wn * 32, ks,
                              lane);
    }
    uint16_t* ts = kept_stage(s);
    // The tile's valid rows and columns, and where it starts in dst and gelu_out.
    const int rows_here = static_cast<int>(rows - row0 < kRows ? rows - row0 : kRows);
    const int cols_here = static_cast<int>(hidden - col0 < kCols ? hidden - col0 : kCols);
    const int64_t at0 = hz + row0 * hidden + col0;
    float csum[4][2] = {};
    hidden_grad_epilogue<kGelu, 4, kTLd>(
        acc, ts, wm * 32, wn * 32, lane, csum,
        [&](int r, int c, __nv_bfloat162 o, float2 act, __nv_bfloat162* at) {
          if (kGelu && gelu_out && r < rows_here && c < cols_here) {  // hidden % 8: c + 1 too
            *reinterpret_cast<__nv_bfloat162*>(gelu_out + at0 + r * hidden + c) =
                __floats2bfloat162_rn(act.x, act.y);
          }
          *at = o;  // the gradient over the kept value, copied out below
        });
    __syncwarp();  // the warp's part of the gradient is in shared memory
                   // Out 16 bytes a lane: the part's 32 rows of 4 x 8 values.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int i = lane + 32 * j, r = wm * 32 + i / 4, c = wn * 32 + i % 4 * 8;
      if (r >= rows_here || c >= cols_here) continue;
      *reinterpret_cast<uint4*>(dst + at0 + r * hidden + c) =
          *reinterpret_cast<const uint4*>(ts + r * kTLd + c);
    }
    // Column sums over the warp's 32 rows: the lanes of one t share columns.
    if (sums_row) {
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const float v = sum_over_fragment_rows(csum[nt][j]);
          const int c = wn * 32 + nt * 8 + 2 * t + j;
          if (g == 0 && c < cols_here) sums_row[col0 + c] = v;
        }
      }
    }
  }
}

// The pass's buffers, all bfloat16 but the column sums: dst (b, h, w, hidden) from gy (b, h, w,
// out), W2 and `saved` (ReLU's output or GELU's input); with col_sums, each column's partial sums
// (h, b, ceil(w / kRows) kWarpRows, hidden), a part per warp row of each row tile; with gelu_out
// (GELU only, may be `saved`), GELU's output too.
// saved, dst and gelu_out hold `slots` rows a (batch index, head): w, or w + 1 (shift_in_rows).
struct HiddenGradIo {
  const void* gy = nullptr;
  const void* w2 = nullptr;
  const void* saved = nullptr;
  void* dst = nullptr;
  float* col_sums = nullptr;
  void* gelu_out = nullptr;
  int64_t slots = 0;
};

template <bool kGelu, bool kShared>
void launch_hidden_grad(const MlpArgs& g, const HiddenGradIo& io) {
  using namespace hidden_grad;
  static const bool sized = [] {  // once per instantiation
    KVC_CUDA_CHECK(cudaFuncSetAttribute(hidden_grad_kernel<kGelu, kShared>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kSmemBytes)));
    return true;
  }();
  (void)sized;
  // Column tiles split over as many CTAs as fill the GPU twice over (2 CTAs an SM), each CTA
  // walking its share: at `long` the 256 (row tile, head) CTAs walk all 64 tiles each.
  const int64_t tiles = (g.hidden + kCols - 1) / kCols, row_tiles = (g.w + kRows - 1) / kRows;
  const int64_t ctas = row_tiles * g.b * g.h, want = 2 * int64_t{sm_count()};
  const int64_t groups = std::min(tiles, std::max<int64_t>(1, (want + ctas / 2) / ctas));
  const int64_t per_cta = (tiles + groups - 1) / groups;
  const dim3 grid(static_cast<unsigned>((tiles + per_cta - 1) / per_cta),
                  static_cast<unsigned>(row_tiles), static_cast<unsigned>(g.b * g.h));
  hidden_grad_kernel<kGelu, kShared><<<grid, kCtaThreads, kSmemBytes, stream()>>>(
      static_cast<const uint16_t*>(io.gy), static_cast<const uint16_t*>(io.w2),
      static_cast<const uint16_t*>(io.saved), static_cast<uint16_t*>(io.dst), io.col_sums,
      static_cast<uint16_t*>(io.gelu_out), g.h, g.w, io.slots, g.hidden, static_cast<int>(g.out),
      per_cta);
  KVC_CUDA_CHECK(cudaGetLastError());
}

// hidden_grad_kernel for g's activation and weight layout (hidden_grad::fits(g) true).
void hidden_grad_bf16(const MlpArgs& g, const HiddenGradIo& io) {
  const bool gelu = g.act == MlpActivation::gelu;
  // GELU with per-head weights is hidden_grad_w2_kernel's (hidden_grad_w2::fits).
  KVC_CHECK(!gelu || g.shared_weights,
            "hidden_grad_bf16: GELU with per-head weights goes to hidden_grad_w2_bf16");
  if (gelu) {
    launch_hidden_grad<true, true>(g, io);
  } else if (g.shared_weights) {
    launch_hidden_grad<false, true>(g, io);
  } else {
    launch_hidden_grad<false, false>(g, io);
  }
}

// The same gradient with W2's in the same pass, for per-head weights: a CTA owns kCols hidden
// columns of one head and walks kRows rows at a time down a split of that head's rows (every
// batch index's, in order), its W2^T columns in shared memory for the whole walk and each tile's
// gy and kept values arriving by cp.async a tile ahead (two stages). A tile: S = gy W2^T
// (mma.sync, warps 2 down x 4 across), the derivative from the kept values, the bfloat16
// gradient stored from registers over the kept input, b1's column sums (a part per warp row);
// then the activation as the backward's GEMM would have read it (GELU's output rounded to
// bfloat16, written over the kept tile in shared memory; ReLU's is the kept value) and dW2 +=
// act^T gy (mma.sync, warps 2 down x 4 across the (kCols, out) part, accumulated in registers
// over the whole walk). So GELU's output is never written, no GEMM reads the hidden values again
// for dW2, and each CTA writes its (kCols, out) part of dW2 once: (h, splits, hidden, out),
// summed over the splits after.
namespace hidden_grad_w2 {
constexpr int kRows = 64, kCols = 64, kMaxK = 128, kCtaThreads = 256, kStages = 2;
constexpr int kGyLd = kMaxK + 8;  // bf16 a row of gy's tile (kRows, k) and of W2^T's (kCols, k)
constexpr int kTLd = kCols + 8;   // bf16 a row of the kept / activation tile (kRows, kCols)
constexpr size_t kW2Bytes = size_t{kCols} * kGyLd * sizeof(uint16_t);
constexpr size_t kGyBytes = size_t{kRows} * kGyLd * sizeof(uint16_t);
constexpr size_t kKeptBytes = size_t{kRows} * kTLd * sizeof(uint16_t);
constexpr size_t kStageBytes = kGyBytes + kKeptBytes;
constexpr size_t kOutBytes = kKeptBytes;  // the tile's gradient on its way out
constexpr size_t kSmemBytes = kW2Bytes + kStages * kStageBytes + kOutBytes;
constexpr int kWarpRows = 2;  // warps down S's tile: b1's partial sums, kWarpRows a split
static_assert(kRows == 32 * kWarpRows && kCols == 64 && kCtaThreads == 256, "8 warps");
static_assert(kCols == 2 * 32 && kMaxK == 4 * 32, "dW2's part: warps 2 x 4 of 32 x 32");
static_assert(2 * (kSmemBytes + 1024) <= 228 * 1024, "two CTAs an SM");

// Per-head weights under GELU only. Under ReLU hidden_grad_kernel and a GEMM for dW2 were faster
// (H100, grouped_mlp at `long` bf16, ncu: 1773 us a step here against 976 + 396 + 113): ReLU's
// output is kept anyway, so the pass saves no buffer there, and its dW2 product on mma.sync runs
// well below cuBLASLt's. Under GELU it takes the same time and spares GELU's output (256 MiB a
// compressor at `long`).
bool fits(const MlpArgs& g) {
  return !g.shared_weights && g.act == MlpActivation::gelu && hidden_grad::fits(g);
}
}  // namespace hidden_grad_w2

template <bool kGelu>
__global__ void __launch_bounds__(hidden_grad_w2::kCtaThreads, 2)
    hidden_grad_w2_kernel(const uint16_t* __restrict__ gy, const uint16_t* __restrict__ w2,
                          const uint16_t* saved, uint16_t* dst, float* __restrict__ col_sums,
                          float* __restrict__ w2_parts, int64_t heads, int64_t batches,
                          int64_t rows, int64_t slots, int64_t hidden, int k,
                          int64_t tiles_per_split, int64_t batch_parts) {
  using namespace hidden_grad_w2;
  extern __shared__ __align__(16) unsigned char smem[];
  uint16_t* w2s = reinterpret_cast<uint16_t*>(smem);  // (kCols, k): W2^T's columns
  const auto gy_stage = [&](int s) {
    return reinterpret_cast<uint16_t*>(smem + kW2Bytes + s * kStageBytes);
  };
  const auto kept_stage = [&](int s) {
    return reinterpret_cast<uint16_t*>(smem + kW2Bytes + s * kStageBytes + kGyBytes);
  };
  // (kRows, kCols): each warp's part of a tile's gradient, stored 16 bytes a lane from here
  uint16_t* outs = reinterpret_cast<uint16_t*>(smem + kW2Bytes + kStages * kStageBytes);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t head = blockIdx.z, split = blockIdx.y, splits = gridDim.y;
  const int64_t col0 = int64_t{blockIdx.x} * kCols;
  const int cols_here = static_cast<int>(hidden - col0 < kCols ? hidden - col0 : kCols);
  const int64_t row_tiles = (rows + kRows - 1) / kRows, total = batches * row_tiles;
  const int64_t t_first = split * tiles_per_split;
  const int64_t t_last = t_first + tiles_per_split < total ? t_first + tiles_per_split : total;
  const auto copy16 = [](uint16_t* to, const uint16_t* from, bool valid) {
    attention_detail::cp_async16(reinterpret_cast<float*>(to), reinterpret_cast<const float*>(from),
                                 valid);
  };

  // W2^T's columns of this CTA, zeros past hidden (they join the first tile's group).
  copy_rows_async<kCols, kMaxK, kCtaThreads>(w2s, kGyLd, w2 + (head * hidden + col0) * k, k, k, tid,
                                             [&](int n) { return col0 + n < hidden; });
  // Where a tile lies: batch index tile / row_tiles, first row (tile % row_tiles) kRows. The
  // tiles come in order, so the pair steps along rather than being divided out of the index.
  struct TilePos {
    int64_t bi, row0;
  };
  const auto next_pos = [&](TilePos p) {
    p.row0 += kRows;
    if (p.row0 >= rows) p.row0 = 0, ++p.bi;
    return p;
  };
  // The tile at p into stage s: gy's rows (kRows, k) and the kept values (kRows, kCols), zeros
  // past the matrices (a zero product and a zero kept value give a zero gradient and a zero
  // activation: nothing is written there, nothing adds to the sums or to dW2).
  const auto issue = [&](TilePos p, int s) {
    const int64_t z = p.bi * heads + head;
    uint16_t* ks = kept_stage(s);
    copy_rows_async<kRows, kMaxK, kCtaThreads>(gy_stage(s), kGyLd, gy + (z * rows + p.row0) * k, k,
                                               k, tid, [&](int r) { return p.row0 + r < rows; });
#pragma unroll
    for (int j = 0; j < kRows * (kCols / 8) / kCtaThreads; ++j) {
      const int i = tid + kCtaThreads * j;
      const int r = i / (kCols / 8), c = i % (kCols / 8) * 8;
      const bool valid = p.row0 + r < rows && col0 + c < hidden;
      copy16(ks + r * kTLd + c, saved + (valid ? (z * slots + p.row0 + r) * hidden + col0 + c : 0),
             valid);
    }
  };
  TilePos pos{t_first / row_tiles, t_first % row_tiles * kRows};
  issue(pos, 0);
  attention_detail::cp_async_commit();

  // S's warp (wm, wn): rows 32 wm.., columns 16 wn..; dW2's warp (wh, wo): hidden columns 32 wh..,
  // outputs 32 wo.. (none where wo 32 >= k).
  const int wm = warp % kWarpRows, wn = warp / kWarpRows;
  const int wh = warp % 2, wo = warp / 2;
  const bool w2_warp = w2_parts != nullptr && wo * 32 < k;
  float dacc[2][4][4] = {};
  float csum[2][2] = {};
  // b1's partial sums of this warp row for batch index bi: part slot kWarpRows + wm of bi's
  // batch_parts kWarpRows, slot counting the splits that take rows of bi (the first of them 0).
  const int64_t parts = batch_parts * kWarpRows;
  const auto write_sums = [&](int64_t bi) {
    const int64_t slot = split - bi * row_tiles / tiles_per_split;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const float v = sum_over_fragment_rows(csum[nt][j]);
        const int c = wn * 16 + nt * 8 + 2 * t + j;
        if (g == 0 && c < cols_here) {
          col_sums[((head * batches + bi) * parts + slot * kWarpRows + wm) * hidden + col0 + c] = v;
        }
        csum[nt][j] = 0.0f;
      }
    }
  };
  int64_t bi_now = pos.bi;
  for (int64_t tile = t_first; tile < t_last; ++tile) {
    const int s = static_cast<int>((tile - t_first) % kStages);
    attention_detail::cp_async_wait<0>();  // this thread's copies of the tile
    __syncthreads();  // everyone's; and every warp is past the tile before, whose stage is free
    const TilePos next = next_pos(pos);
    if (tile + 1 < t_last) issue(next, s ^ 1);
    attention_detail::cp_async_commit();
    const int64_t bi = pos.bi, row0 = pos.row0, z = bi * heads + head;
    pos = next;
    if (bi != bi_now) {  // the batch index before is done: its sums out
      if (col_sums) write_sums(bi_now);
      bi_now = bi;
    }
    uint16_t* gs = gy_stage(s);
    uint16_t* ks = kept_stage(s);
    float acc[2][2][4] = {};
    for (int kk = 0; kk < k; kk += 16) {
      warp_tile_k16<true>(acc, gs, kGyLd, wm * 32, w2s, kGyLd, wn * 16, kk, lane);
    }
    const int rows_here = static_cast<int>(rows - row0 < kRows ? rows - row0 : kRows);
    uint16_t* out0 = dst + (z * slots + row0) * hidden + col0;
    hidden_grad_epilogue<kGelu, 2, kTLd>(
        acc, ks, wm * 32, wn * 16, lane, csum,
        [&](int r, int c, __nv_bfloat162 o, float2 act, __nv_bfloat162* at) {
          // The activation dW2 reads: GELU's output; ReLU's is the kept value as it is.
          if constexpr (kGelu) *at = __floats2bfloat162_rn(act.x, act.y);
          *reinterpret_cast<__nv_bfloat162*>(outs + r * kTLd + c) = o;
        });
    // Out 16 bytes a lane, two lanes a row of the warp's 32 x 16 part: whole 32-byte sectors,
    // where a quad's pairs filled half of one each. The next write of this part comes after the
    // next tile's barrier.
    __syncwarp();
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int i = lane + 32 * j, r = wm * 32 + i / 2, c = wn * 16 + i % 2 * 8;
      if (r < rows_here && c < cols_here) {  // hidden % 8: whole chunks
        *reinterpret_cast<uint4*>(out0 + r * hidden + c) =
            *reinterpret_cast<const uint4*>(outs + r * kTLd + c);
      }
    }
    if (w2_parts) {
      __syncthreads();  // the tile's activations, every warp's, are in shared memory
      if (w2_warp) {
        for (int kk = 0; kk < kRows; kk += 16) {  // dW2 part += act^T gy over the tile's rows
          warp_tile_k16<false, 4, false>(dacc, ks, kTLd, wh * 32, gs, kGyLd, wo * 32, kk, lane);
        }
      }
    }
  }
  if (col_sums) write_sums(bi_now);
  if (w2_warp) {  // (kCols, out) part: hidden columns col0 + 32 wh.., outputs 32 wo..
    float* part = w2_parts + ((head * splits + split) * hidden + col0) * k;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int m = wh * 32 + mt * 16 + g + 8 * half, n = wo * 32 + nt * 8 + 2 * t;
          if (m < cols_here && n < k) {  // k % 16: n + 1 too
            *reinterpret_cast<float2*>(part + int64_t{m} * k + n) =
                make_float2(dacc[mt][nt][2 * half], dacc[mt][nt][2 * half + 1]);
          }
        }
      }
    }
  }
}

// How hidden_grad_w2_kernel splits each head's row tiles (every batch index's, in order): splits
// of tiles_per_split, the last perhaps shorter. A split may end inside a batch index and the next
// start there, so up to batch_parts splits take rows of one batch index: b1's partial sums hold
// batch_parts kWarpRows parts a (head, batch index).
struct HiddenGradW2Split {
  int64_t splits = 1, tiles_per_split = 1, batch_parts = 1;
};
HiddenGradW2Split hidden_grad_w2_split(const MlpArgs& g) {
  using namespace hidden_grad_w2;
  // Splits of each head's rows so that the CTAs fill the GPU's two slots an SM about once:
  // at `long` (512 column tiles x heads) one split, at `nsa` (128) two.
  const int64_t col_tiles = (g.hidden + kCols - 1) / kCols;
  const int64_t total = g.b * ((g.w + kRows - 1) / kRows);
  const int64_t want = std::clamp<int64_t>(2 * int64_t{sm_count()} / (col_tiles * g.h), 1, total);
  HiddenGradW2Split sp;
  sp.tiles_per_split = (total + want - 1) / want;
  sp.splits = (total + sp.tiles_per_split - 1) / sp.tiles_per_split;  // none empty
  const int64_t row_tiles = total / g.b;
  for (int64_t bi = 0; bi < g.b; ++bi) {  // the splits from bi's first row tile to its last
    const int64_t first = bi * row_tiles / sp.tiles_per_split;
    const int64_t last = ((bi + 1) * row_tiles - 1) / sp.tiles_per_split;
    sp.batch_parts = std::max(sp.batch_parts, last - first + 1);
  }
  return sp;
}

// hidden_grad_w2_kernel over g (hidden_grad_w2::fits(g)), split as sp says: io as
// hidden_grad_bf16's but no gelu_out; col_sums (h, b, sp.batch_parts kWarpRows, hidden), the parts
// no split takes zero (the caller's); w2_parts (h, splits, hidden, out) float32 (null: no dW2).

void hidden_grad_w2_bf16(const MlpArgs& g, const HiddenGradIo& io, const HiddenGradW2Split& sp,
                         float* w2_parts) {
  using namespace hidden_grad_w2;
  static const bool sized = [] {
    for (auto kernel : {hidden_grad_w2_kernel<true>, hidden_grad_w2_kernel<false>}) {
      KVC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(kSmemBytes)));
    }
    return true;
  }();
  (void)sized;
  KVC_CHECK(g.h <= 65535 && sp.splits <= 65535, "hidden gradient: ", g.h, " heads and ", sp.splits,
            " splits exceed a grid's 65535");
  const dim3 grid(static_cast<unsigned>((g.hidden + kCols - 1) / kCols),
                  static_cast<unsigned>(sp.splits), static_cast<unsigned>(g.h));
  auto kernel =
      g.act == MlpActivation::gelu ? hidden_grad_w2_kernel<true> : hidden_grad_w2_kernel<false>;
  kernel<<<grid, kCtaThreads, kSmemBytes, stream()>>>(
      static_cast<const uint16_t*>(io.gy), static_cast<const uint16_t*>(io.w2),
      static_cast<const uint16_t*>(io.saved), static_cast<uint16_t*>(io.dst), io.col_sums, w2_parts,
      g.h, g.b, g.w, io.slots, g.hidden, static_cast<int>(g.out), sp.tiles_per_split,
      sp.batch_parts);
  KVC_CUDA_CHECK(cudaGetLastError());
}

// y = GELU(pre) W2 + b2 under bf16 with GELU applied as the product reads its input, where it
// would otherwise be a pass of its own writing GELU's output (and, with a backward to come, a
// second (b, h, w, hidden) buffer beside the kept input): per (batch index, head) a CTA takes
// kRows rows and all out <= kCols columns, walking the hidden values kChunk at a time through
// kStages shared-memory stages filled by cp.async. Each thread applies GELU (the exact one in
// float32, mlp_gelu, rounded to bfloat16 as the pass wrote it) in place to the part of a chunk it
// copied itself, once its copies landed, while the chunk before is multiplied on mma.sync. y
// float32, b2 added in float32. Each (batch index, head) holds `slots` rows of pre, the first w of
// them its rows.
namespace gelu_product {
constexpr int kRows = 128, kCols = 128, kChunk = 64, kStages = 3, kCtaThreads = 256;
constexpr int kALd = kChunk + 8;  // bf16 a row of A's chunk (kRows, kChunk) and of F.linear's B
constexpr int kBLd = kCols + 8;   // bf16 a row of Mix's B chunk (kChunk, kCols)
constexpr int kLoads = kRows * kChunk / 8 / kCtaThreads;  // 16-byte copies a thread, each operand
constexpr size_t kABytes = size_t{kRows} * kALd * sizeof(uint16_t);
constexpr size_t kBBytes =
    (size_t{kChunk} * kBLd > size_t{kCols} * kALd ? size_t{kChunk} * kBLd : size_t{kCols} * kALd) *
    sizeof(uint16_t);
constexpr size_t kStageBytes = kABytes + kBBytes;
constexpr size_t kSmemBytes = kStages * kStageBytes;
static_assert(kLoads * kCtaThreads * 8 == kChunk * kCols, "B's chunk takes as many loads as A's");
static_assert(kRows == 128 && kCols == 128 && kCtaThreads == 256, "8 warps of 32 x 64");
static_assert(2 * (kSmemBytes + 1024) <= 228 * 1024, "two CTAs an SM");

bool fits(const MlpArgs& g) {
  const bool grid = (g.w + kRows - 1) / kRows <= 65535 && g.b * g.h <= 65535;  // grid rows, layers
  return g.out % 8 == 0 && g.out <= kCols && g.hidden % 8 == 0 && grid;
}
}  // namespace gelu_product

// kShared: W2 (out, hidden) for every head (F.linear's), else (h, hidden, out) (Mix's).
template <bool kShared>
__global__ void __launch_bounds__(gelu_product::kCtaThreads, 2)
    gelu_product_kernel(const uint16_t* __restrict__ pre, const uint16_t* __restrict__ w2,
                        const float* __restrict__ b2, bool b2_per_head, float* __restrict__ y,
                        int64_t heads, int64_t rows, int64_t slots, int64_t hidden, int out) {
  using namespace gelu_product;
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t z = blockIdx.z, head = z % heads;
  const int64_t row0 = int64_t{blockIdx.y} * kRows;
  const uint16_t* pz = pre + z * slots * hidden;
  const uint16_t* wz = w2 + (kShared ? 0 : head * hidden * out);
  const auto a_stage = [&](int s) { return reinterpret_cast<uint16_t*>(smem + s * kStageBytes); };
  const auto b_stage = [&](int s) {
    return reinterpret_cast<uint16_t*>(smem + s * kStageBytes + kABytes);
  };
  const auto copy16 = [](uint16_t* to, const uint16_t* from, bool valid) {
    attention_detail::cp_async16(reinterpret_cast<float*>(to), reinterpret_cast<const float*>(from),
                                 valid);
  };

  // Copy i of this thread: A row a_r + i kARows, 8 values from column a_c of the chunk; B (Mix's)
  // chunk row b_k + i kBRows, 8 columns from b_n; or (F.linear's) W2's row a_r + i kARows, 8
  // values from a_c. Zeros past the matrices (GELU(0) = 0: they add nothing). The same rows and
  // columns every chunk, k0 further on: each copy's address is a base and a multiple of one stride,
  // and a whole chunk (every chunk of a CTA whose rows all exist but perhaps the last) takes no
  // per-copy test.
  constexpr int kARows = kCtaThreads / (kChunk / 8), kBRows = kCtaThreads / (kCols / 8);
  static_assert(kLoads * kARows == kRows && kLoads * kBRows == kChunk, "one copy a row a pass");
  const int a_r = tid / (kChunk / 8), a_c = tid % (kChunk / 8) * 8;
  const int b_k = tid / (kCols / 8), b_n = tid % (kCols / 8) * 8;
  const uint16_t* a_src = pz + (row0 + a_r) * hidden + a_c;
  const int64_t a_step = kARows * hidden;
  const uint16_t* b_src = kShared ? wz + a_r * hidden + a_c : wz + b_k * out + b_n;
  const int64_t b_step = kShared ? kARows * hidden : kBRows * out;
  const bool rows_whole = row0 + kRows <= rows && (!kShared || out == kCols);
  const auto issue = [&](int64_t k0, int s) {
    uint16_t* as = a_stage(s) + a_r * kALd + a_c;
    uint16_t* bs = b_stage(s) + (kShared ? a_r * kALd + a_c : b_k * kBLd + b_n);
    const int64_t b_k0 = kShared ? k0 : k0 * out;  // the chunk's start in B
    if (rows_whole && k0 + kChunk <= hidden && (kShared || b_n < out)) {
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        copy16(as + i * kARows * kALd, a_src + k0 + i * a_step, true);
        copy16(bs + i * (kShared ? kARows * kALd : kBRows * kBLd), b_src + b_k0 + i * b_step, true);
      }
      return;
    }
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int r = a_r + i * kARows;
      const bool a_valid = row0 + r < rows && k0 + a_c < hidden;
      copy16(as + i * kARows * kALd, a_valid ? a_src + k0 + i * a_step : pz, a_valid);
      // F.linear's: W2's row r < out, hidden values k0 + a_c..; Mix's: row k0 + kk, columns b_n..
      const int kk = b_k + i * kBRows;
      const bool b_valid = kShared ? r < out && k0 + a_c < hidden : k0 + kk < hidden && b_n < out;
      copy16(bs + i * (kShared ? kARows * kALd : kBRows * kBLd),
             b_valid ? b_src + b_k0 + i * b_step : wz, b_valid);
    }
  };
  // GELU over this thread's own copies of A in stage s (visible to it once its group landed).
  const auto apply_gelu = [&](int s) {
    uint16_t* as = a_stage(s);
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int idx = tid + kCtaThreads * i;
      const int r = idx / (kChunk / 8), c = idx % (kChunk / 8) * 8;
      uint4 v = *reinterpret_cast<const uint4*>(as + r * kALd + c);
      __nv_bfloat162* e = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
      for (int j = 0; j < 4; ++j) {  // a pair at a time: one conversion rounds both
        const float2 f = __bfloat1622float2(e[j]);
        e[j] = __floats2bfloat162_rn(mlp_gelu<__nv_bfloat16>(f.x), mlp_gelu<__nv_bfloat16>(f.y));
      }
      *reinterpret_cast<uint4*>(as + r * kALd + c) = v;
    }
  };

  // Warp (wm, wn) multiplies rows 32 wm.. by columns 64 wn..: 2 x 8 tiles of 16 x 8.
  const int wm = warp % 4, wn = warp / 4;
  float acc[2][8][4] = {};
  // Chunk c lives in stage c % kStages. Each iteration multiplies chunk it (GELU applied) while
  // this thread applies GELU to its part of chunk it + 1, which landed during the iteration
  // before: the tensor pipe and the ALUs work at once (mma.sync issues without waiting for its
  // result). One barrier an iteration publishes chunk it + 1 and frees chunk it's stage for chunk
  // it + kStages.
  static_assert(kStages == 3, "chunk it + 1 is copied while chunk it - 1 is multiplied");
  const int64_t chunks = (hidden + kChunk - 1) / kChunk;
#pragma unroll
  for (int s = 0; s < kStages; ++s) {
    if (s < chunks) issue(s * kChunk, s);
    attention_detail::cp_async_commit();  // empty groups keep the count of the waits below
  }
  attention_detail::cp_async_wait<kStages - 1>();  // chunk 0's copies of this thread
  apply_gelu(0);
  __syncthreads();
  for (int64_t it = 0; it < chunks; ++it) {
    const int s = static_cast<int>(it % kStages);
    attention_detail::cp_async_wait<kStages - 2>();  // chunk it + 1's copies of this thread
    const uint16_t* as = a_stage(s);
    const uint16_t* bs = b_stage(s);
#pragma unroll
    for (int ks = 0; ks < kChunk; ks += 16) {
      warp_tile_k16<kShared>(acc, as, kALd, wm * 32, bs, kShared ? kALd : kBLd, wn * 64, ks, lane);
    }
    if (it + 1 < chunks) apply_gelu(static_cast<int>((it + 1) % kStages));
    __syncthreads();  // chunk it + 1 whole for every warp; chunk it's products all done
    if (it + kStages < chunks) issue((it + kStages) * kChunk, s);
    attention_detail::cp_async_commit();
  }

  const int g = lane >> 2, t = lane & 3;
  const float* bias = b2 + (b2_per_head ? head * out : 0);
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    const int col = wn * 64 + nt * 8 + 2 * t;
    if (col >= out) continue;
    const float2 bv = make_float2(bias[col], bias[col + 1]);
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t r = row0 + wm * 32 + mt * 16 + g + 8 * half;
        if (r >= rows) continue;
        *reinterpret_cast<float2*>(y + (z * rows + r) * out + col) =
            make_float2(acc[mt][nt][2 * half] + bv.x, acc[mt][nt][2 * half + 1] + bv.y);
      }
    }
  }
}

// y (b, h, w, out) = GELU(pre) W2 + b2 (gelu_product::fits(g) true): pre (b, h, slots, hidden)
// and W2 bfloat16, b2 and y float32.
void gelu_product_bf16(const MlpArgs& g, const void* pre, int64_t slots, const void* w2, float* y) {
  using namespace gelu_product;
  static const bool sized = [] {  // both kernels (one function-pointer type: set each by name)
    for (auto kernel : {gelu_product_kernel<true>, gelu_product_kernel<false>}) {
      KVC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(kSmemBytes)));
    }
    return true;
  }();
  (void)sized;
  const auto launch = [&](auto kernel) {
    kernel<<<dim3(1, static_cast<unsigned>((g.w + kRows - 1) / kRows),
                  static_cast<unsigned>(g.b * g.h)),
             kCtaThreads, kSmemBytes, stream()>>>(
        static_cast<const uint16_t*>(pre), static_cast<const uint16_t*>(w2), g.b2, g.b2_per_head, y,
        g.h, g.w, slots, g.hidden, static_cast<int>(g.out));
    KVC_CUDA_CHECK(cudaGetLastError());
  };
  if (g.shared_weights) {
    launch(gelu_product_kernel<true>);
  } else {
    launch(gelu_product_kernel<false>);
  }
}

// The element type of the products' operands and of the hidden activations.
struct Types {
  bool bf16 = false;
  cudaDataType_t data = CUDA_R_32F;
  size_t size = sizeof(float);
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;

  explicit Types(MathPrecision precision) : bf16(precision == MathPrecision::bf16) {
    if (bf16) {
      data = CUDA_R_16BF;
      size = sizeof(__nv_bfloat16);
    } else if (precision == MathPrecision::tf32) {
      compute = CUBLAS_COMPUTE_32F_FAST_TF32;
    }
  }
};

// f(T{}) with T the operand type t says (__nv_bfloat16 or float): one call site for kernels
// templated on it.
template <typename F>
void with_operand_type(const Types& t, F&& f) {
  if (t.bf16) {
    f(__nv_bfloat16{});
  } else {
    f(float{});
  }
}

// A bfloat16 copy (bf16 true; perhaps one shared with other ops, see SharedBf16Copies), or a
// float32 input used in place.
struct Operand {
  Bf16Copy copy;
  const void* p = nullptr;
  Operand() = default;
  Operand(const float* src, int64_t n, bool bf16) : p(src) {
    if (!bf16) return;
    copy = bf16_copy(src, n);
    p = copy.p;
  }
  explicit Operand(Bf16Copy made) : copy(std::move(made)), p(copy.p) {}
};

const char* at(const void* base, int64_t elems, size_t elem_size) {
  return static_cast<const char*>(base) + static_cast<size_t>(elems) * elem_size;
}
char* at(void* base, int64_t elems, size_t elem_size) {
  return static_cast<char*>(base) + static_cast<size_t>(elems) * elem_size;
}

// out (w, n) = in (w, k) @ W for every head's rows: one batched product (over heads) per batch
// index. W is a layer's weight as stored: per head (Mix), or one for every head (shared, stride
// 0), and `stored_kn` says whether it is kept as (k, n) or as (n, k) (then multiplied
// transposed). `p` brings the types, compute, epilogue and beta. A (batch index, head) holds
// in_slots rows of `in` and out_slots of `out` (0: w; more where the shift's row rides along).
void rows_times_weight(const MlpArgs& g, Product p, int64_t k, int64_t n, bool stored_kn,
                       const void* in, size_t in_size, const void* weight, void* out,
                       size_t out_size, int64_t in_slots = 0, int64_t out_slots = 0) {
  in_slots = in_slots ? in_slots : g.w;
  out_slots = out_slots ? out_slots : g.w;
  p.m = g.w, p.n = n, p.k = k;
  p.lda = k, p.stride_a = in_slots * k;
  p.trans_b = !stored_kn;
  p.ldb = stored_kn ? n : k;
  p.stride_b = g.shared_weights ? 0 : k * n;
  p.ldc = n, p.stride_c = out_slots * n;
  p.batch = g.h;
  side_by_side(g.b, side_by_side_pays(p), [&](int64_t bi, int lane) {
    p.lane = lane;
    run(p, at(in, bi * g.h * in_slots * k, in_size), weight,
        at(out, bi * g.h * out_slots * n, out_size));
  });
}

// The shift's rows, one per head, as rows_times_weight's input: each head's one row through its
// own weight, or with shared weights all h rows through the one weight in a single product.
MlpArgs shift_rows(const MlpArgs& g) {
  MlpArgs r = g;
  r.b = 1;
  r.w = g.shared_weights ? g.h : 1;
  r.h = g.shared_weights ? 1 : g.h;
  return r;
}

// out (h, hidden) = b1, per head or repeated for every head.
void b1_of_every_head(const MlpArgs& g, float* out) {
  if (g.b1_per_head || g.h == 1) {
    copy_d2d(out, g.b1, static_cast<size_t>(g.h * g.hidden) * sizeof(float));
  } else {
    for (int64_t h = 0; h < g.h; ++h) {
      copy_d2d(out + h * g.hidden, g.b1, static_cast<size_t>(g.hidden) * sizeof(float));
    }
  }
}

// out (h, hidden) = b1 + shift W1 per head, float32: the first product's bias with the shift
// moved in (MlpArgs::shift). `w1` as the products read it (bfloat16 under bf16).
void shifted_bias(const MlpArgs& g, const Types& t, const void* w1, float* out) {
  b1_of_every_head(g, out);
  const Operand shift(g.shift, g.h * g.in, t.bf16);
  Product p;
  p.ab = t.data;
  p.compute = t.compute;
  p.beta = 1.0f;
  rows_times_weight(shift_rows(g), p, g.in, g.hidden, !g.shared_weights, shift.p, t.size, w1, out,
                    sizeof(float));
}

// Per-head W1 (h, in, hidden) rounded to bfloat16 and, on the same pass, the shift's rows through
// it in float32: partial (h, chunks, hidden), chunk c the sum over rows [c kShiftRows, (c + 1)
// kShiftRows) of shift[h, r] W1[h, r, :]. A thread takes four columns (hidden % 4 == 0) of a
// chunk's rows, eight at a time: all eight loads before any store (the compiler keeps a load
// after a store that may alias it, which left one load a thread in flight).
constexpr int kShiftRows = 64, kShiftAhead = 8;
__global__ void round_w1_shift_kernel(const float* __restrict__ w1, const float* __restrict__ shift,
                                      __nv_bfloat16* __restrict__ w1_bf16,
                                      float* __restrict__ partial, int64_t in, int64_t hidden) {
  const int64_t head = blockIdx.z, chunk = blockIdx.y;
  const int64_t c = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) * 4;
  if (c >= hidden) return;
  const int64_t r0 = chunk * kShiftRows, r1 = min(in, r0 + kShiftRows);
  const float* src = w1 + head * in * hidden + c;
  __nv_bfloat16* dst = w1_bf16 + head * in * hidden + c;
  const float* sh = shift + head * in;
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int64_t r = r0; r < r1; r += kShiftAhead) {
    float4 v[kShiftAhead];
    float s[kShiftAhead];
#pragma unroll
    for (int k = 0; k < kShiftAhead; ++k) {
      if (r + k < r1) {
        v[k] = __ldcs(reinterpret_cast<const float4*>(src + (r + k) * hidden));
        s[k] = __ldg(sh + r + k);
      }
    }
#pragma unroll
    for (int k = 0; k < kShiftAhead; ++k) {
      if (r + k >= r1) break;
      __nv_bfloat16* to = dst + (r + k) * hidden;
      *reinterpret_cast<__nv_bfloat162*>(to) = __floats2bfloat162_rn(v[k].x, v[k].y);
      *reinterpret_cast<__nv_bfloat162*>(to + 2) = __floats2bfloat162_rn(v[k].z, v[k].w);
      acc = make_float4(fmaf(s[k], v[k].x, acc.x), fmaf(s[k], v[k].y, acc.y),
                        fmaf(s[k], v[k].z, acc.z), fmaf(s[k], v[k].w, acc.w));
    }
  }
  *reinterpret_cast<float4*>(partial + (head * gridDim.y + chunk) * hidden + c) = acc;
}

// Whether round_w1_shifted serves: bf16, per-head weights, a shift, whole float4s of W1's rows and
// no copy of W1 held already.
bool rounds_w1_shifted(const MlpArgs& g, const Types& t) {
  return t.bf16 && g.shift && !g.shared_weights && g.hidden % 4 == 0 &&
         !bf16_copy_held(g.w1, g.h * g.in * g.hidden);
}

// W1's bfloat16 copy for the products, and bias (h, hidden) = b1 + shift W1 per head in float32,
// in one pass over W1 (rounds_w1_shifted(g) true): the copy reads all of W1 anyway.
Operand round_w1_shifted(const MlpArgs& g, float* bias) {
  const int64_t n = g.h * g.in * g.hidden, chunks = (g.in + kShiftRows - 1) / kShiftRows;
  auto copy = std::make_shared<Scratch>(static_cast<size_t>(n) * sizeof(__nv_bfloat16));
  Scratch partial(static_cast<size_t>(g.h * chunks * g.hidden) * sizeof(float));
  const dim3 grid(static_cast<unsigned>((g.hidden / 4 + kThreads - 1) / kThreads),
                  static_cast<unsigned>(chunks), static_cast<unsigned>(g.h));
  round_w1_shift_kernel<<<grid, kThreads, 0, stream()>>>(g.w1, g.shift, copy->as<__nv_bfloat16>(),
                                                         partial.as<float>(), g.in, g.hidden);
  KVC_CUDA_CHECK(cudaGetLastError());
  b1_of_every_head(g, bias);  // then the chunks' sums added in a fixed order
  Scratch total(static_cast<size_t>(g.h * g.hidden) * sizeof(float));
  sum_axis<float>(partial.as<float>(), total.as<float>(), g.h, chunks, g.hidden, 1.0f);
  axpby<float>(bias, total.as<float>(), g.h * g.hidden, 1.0f, 1.0f);
  return Operand(Bf16Copy{copy, copy->as<__nv_bfloat16>()});
}

// The shift's row. Under bf16 with per-head weights, W1's gradient has the shift's share,
// shift[h]^T db1[h] (rank one), besides x^T times the hidden gradient. Where it can, the
// weight-gradient product takes that share as one more row of its operands. Each (batch index,
// head) then holds w + 1 rows ("slots") in x's bf16 copy and in the hidden buffer: x's copy has
// shift[h] in the last row, and the hidden gradient has the column sums of that (batch index,
// head) there. The product (k = w + 1) adds shift^T sums per batch index: no pass writes the
// share (W1's size in float32) and the product reads no C. The forward's products, the GELU
// product and the hidden gradient read the first w rows of each head.
bool shift_in_rows(const MlpArgs& g, const Types& t) {
  return t.bf16 && g.shift && !g.shared_weights && hidden_grad::fits(g) && g.in % 8 == 0 &&
         aligned16(g.x) && aligned16(g.shift) && g.b * g.h <= 65535;  // (b, h) a grid row
}

// dst (heads, w + 1, in) bfloat16 from x (heads, w, in) and shift (h, in): each (batch index,
// head) z its w rows of x, then shift[z % h]. blockIdx.y = z; four values a thread.
__global__ void round_rows_and_shift_kernel(const float* __restrict__ x,
                                            const float* __restrict__ shift,
                                            __nv_bfloat16* __restrict__ dst, int64_t h,
                                            int64_t head_elems, int64_t in) {
  const int64_t z = blockIdx.y, stride4 = (head_elems + in) / 4;
  const float* xz = x + z * head_elems;
  const float* sz = shift + (z % h) * in;
  __nv_bfloat16* dz = dst + z * (head_elems + in);
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < stride4;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t e = 4 * i;
    const float* from = e < head_elems ? xz + e : sz + (e - head_elems);
    const float4 v = __ldcs(reinterpret_cast<const float4*>(from));
    *reinterpret_cast<__nv_bfloat162*>(dz + e) = __floats2bfloat162_rn(v.x, v.y);
    *reinterpret_cast<__nv_bfloat162*>(dz + e + 2) = __floats2bfloat162_rn(v.z, v.w);
  }
}

// round_rows_and_shift_kernel that also writes the mean of each row's residual_block groups of
// out values (x_mean (heads, w, out), float32: the residual's, read on the way): a CTA rounds
// whole rows, rows blockIdx.x, + gridDim.x, .. of (batch index, head) blockIdx.y, the last of them
// the shift's. Thread i's values 4 i, + 1024, .. of a row share their columns (1024 % out == 0):
// it sums its groups in registers, then the threads of each column four in shared memory. A
// thread loads up to kRowMeanAhead float4s before it stores any (see round_w1_shift_kernel).
constexpr int kRowMeanStep = 4 * kThreads;  // values of a row a CTA's threads take at once
constexpr int kRowMeanAhead = 4;
bool row_mean_fits(const MlpArgs& g) { return g.out % 4 == 0 && kRowMeanStep % g.out == 0; }

__global__ void round_rows_mean_and_shift_kernel(const float* __restrict__ x,
                                                 const float* __restrict__ shift,
                                                 __nv_bfloat16* __restrict__ dst,
                                                 float* __restrict__ x_mean, int64_t h, int64_t w,
                                                 int64_t in, int64_t out, float inv_n) {
  __shared__ float4 partial[kThreads];
  const int tid = threadIdx.x;
  const int64_t z = blockIdx.y, stride = (w + 1) * in;
  for (int64_t r = blockIdx.x; r <= w; r += gridDim.x) {
    const bool shift_row = r == w;
    const float* from = shift_row ? shift + (z % h) * in : x + (z * w + r) * in;
    __nv_bfloat16* to = dst + z * stride + r * in;
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int64_t e0 = 4 * tid; e0 < in; e0 += kRowMeanAhead * kRowMeanStep) {
      float4 v[kRowMeanAhead];
#pragma unroll
      for (int k = 0; k < kRowMeanAhead; ++k) {
        const int64_t e = e0 + k * kRowMeanStep;
        if (e < in) {
          v[k] = shift_row ? *reinterpret_cast<const float4*>(from + e)
                           : __ldcs(reinterpret_cast<const float4*>(from + e));
        }
      }
#pragma unroll
      for (int k = 0; k < kRowMeanAhead; ++k) {
        const int64_t e = e0 + k * kRowMeanStep;
        if (e >= in) break;
        *reinterpret_cast<__nv_bfloat162*>(to + e) = __floats2bfloat162_rn(v[k].x, v[k].y);
        *reinterpret_cast<__nv_bfloat162*>(to + e + 2) = __floats2bfloat162_rn(v[k].z, v[k].w);
        sum.x += v[k].x, sum.y += v[k].y, sum.z += v[k].z, sum.w += v[k].w;
      }
    }
    if (shift_row) continue;  // the same for every thread of the CTA: no barrier skipped apart
    partial[tid] = sum;
    __syncthreads();
    const int col4 = static_cast<int>(out / 4);  // threads of one column four: tid % col4
    if (tid < col4) {
      float4 total = partial[tid];
      for (int k = tid + col4; k < kThreads; k += col4) {
        const float4 p = partial[k];
        total.x += p.x, total.y += p.y, total.z += p.z, total.w += p.w;
      }
      *reinterpret_cast<float4*>(x_mean + (z * w + r) * out + 4 * tid) =
          make_float4(total.x * inv_n, total.y * inv_n, total.z * inv_n, total.w * inv_n);
    }
    __syncthreads();  // partial is free for the next row
  }
}

// x's bf16 copy with the shift's row after each (batch index, head)'s rows (shift_in_rows(g)):
// the copy an open SharedBf16Copies lists for x's buffer, so that the attention target reads it
// (bf16_copy_heads), or one of this op's own. With x_mean (row_mean_fits(g)) the residual's
// means of x's rows on the way (round_rows_mean_and_shift_kernel).
Operand x_and_shift_rows(const MlpArgs& g, float* x_mean) {
  const int64_t heads = g.b * g.h, head_elems = g.w * g.in, stride = head_elems + g.in;
  Bf16Fill fill = bf16_copy_to_fill_heads(g.x, heads, head_elems, stride);
  std::shared_ptr<Scratch> owner = fill.owner;
  if (!owner) {
    owner = std::make_shared<Scratch>(static_cast<size_t>(heads * stride) * sizeof(__nv_bfloat16));
  }
  auto* dst = owner->as<__nv_bfloat16>();
  if (x_mean) {
    // Blocks a (batch index, head): a row each, or as many as are resident at once over all heads
    // (one wave: a second, partial one would hold whole CTAs' rows back).
    const int64_t resident = resident_ctas<round_rows_mean_and_shift_kernel>(kThreads, 0);
    const int64_t blocks = std::min<int64_t>(g.w + 1, std::max<int64_t>(1, resident / heads));
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(heads));
    round_rows_mean_and_shift_kernel<<<grid, kThreads, 0, stream()>>>(
        g.x, g.shift, dst, x_mean, g.h, g.w, g.in, g.out,
        1.0f / static_cast<float>(g.residual_block));
    KVC_CUDA_CHECK(cudaGetLastError());
    return Operand(Bf16Copy{owner, dst});
  }
  // Blocks a (batch index, head): enough for its row of values, or for ~4 a SM over all heads.
  const int64_t blocks = std::min<int64_t>((stride / 4 + kThreads - 1) / kThreads,
                                           std::max<int64_t>(1, 4 * sm_count() / heads));
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(heads));
  round_rows_and_shift_kernel<<<grid, kThreads, 0, stream()>>>(g.x, g.shift, dst, g.h, head_elems,
                                                               g.in);
  KVC_CUDA_CHECK(cudaGetLastError());
  return Operand(Bf16Copy{owner, dst});
}

// The hidden gradient's last row of each (batch index, head) z = bi h + head: its column sums,
// the partial sums from hidden_grad_kernel ((h, b, parts, hidden), added in a fixed order)
// rounded to bfloat16. blockIdx.y = z.
__global__ void shift_row_sums_kernel(const float* __restrict__ sums, uint16_t* __restrict__ dst,
                                      int64_t heads, int64_t batches, int64_t parts, int64_t hidden,
                                      int64_t slots) {
  const int64_t z = blockIdx.y, head = z % heads, bi = z / heads;
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= hidden) return;
  const float* p = sums + (head * batches + bi) * parts * hidden + c;
  float total = 0.0f;
  for (int64_t y = 0; y < parts; ++y) total += p[y * hidden];
  const __nv_bfloat16 b = __float2bfloat16_rn(total);
  dst[(z * slots + slots - 1) * hidden + c] = *reinterpret_cast<const uint16_t*>(&b);
}

// What the TF32 transposition (below) applies to each value before it rounds it: nothing, or
// GELU's derivative, g * gelu'(p) with p GELU's input (the first weight's gradient reads the
// gradient at the first product's output, finished here rather than in a pass of its own).
// Making GELU's output for the second weight's gradient here as well ran slower than a pass of
// its own and Ampere's kernel for that small product (the math slows the transposition down).
enum class Tf32Op { copy, gelu_grad };

// out (batch, cols, ld_out) = op(in) (batch, rows, cols) transposed, each value rounded to TF32 (to
// nearest; the tensor cores would truncate it); ld_out >= rows; aux (for gelu_grad) as `in`. A CTA
// of 32 x 8 threads moves a 32 x 32 block through shared memory, reads and writes coalesced. With
// `col_sums`, the block also writes each column's sum over its rows (after op, before rounding)
// to col_sums[batch * sums_stride + blockIdx.x * cols + column]: partial sums for a bias
// gradient, added up in a fixed order afterwards.
template <Tf32Op kOp>
__global__ void transpose_tf32_kernel(const float* __restrict__ in, const float* __restrict__ aux,
                                      float* __restrict__ out, int64_t rows, int64_t cols,
                                      int64_t ld_out, float* __restrict__ col_sums,
                                      int64_t sums_stride) {
  __shared__ float block[32][33];
  __shared__ float sums[8][32];  // each thread row's sum of its four values, per column
  const int64_t batch = blockIdx.z;
  const int64_t row0 = int64_t{blockIdx.x} * 32, col0 = int64_t{blockIdx.y} * 32;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t offset = batch * rows * cols;
  float* dst = out + batch * cols * ld_out;
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = row0 + ty + 8 * i, c = col0 + tx;
    if (r < rows && c < cols) {
      float v = in[offset + r * cols + c];
      if constexpr (kOp == Tf32Op::gelu_grad)
        v = math::gelu_backward(aux[offset + r * cols + c], v);
      block[ty + 8 * i][tx] = v;
      sum += v;
    }
  }
  if (col_sums) sums[ty][tx] = sum;
  __syncthreads();
  if (col_sums && ty == 0 && col0 + tx < cols) {
    float total = 0.0f;
#pragma unroll
    for (int r = 0; r < 8; ++r) total += sums[r][tx];
    col_sums[batch * sums_stride + int64_t{blockIdx.x} * cols + col0 + tx] = total;
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t c = col0 + ty + 8 * i, r = row0 + tx;
    if (r < rows && c < cols) dst[c * ld_out + r] = __uint_as_float(to_tf32(block[tx][ty + 8 * i]));
  }
}

// An operand of weight_grad_tf32: values (b, h, w, cols) float32 as the transposition reads them,
// through `op` (aux: GELU's input, same layout, for gelu_grad).
struct Tf32Operand {
  const float* v = nullptr;
  int64_t cols = 0;
  Tf32Op op = Tf32Op::copy;
  const float* aux = nullptr;
};

// Rows [row0, row0 + batch * rows) of `src` transposed into out, as transpose_tf32_kernel says.
void transpose_tf32(const Tf32Operand& src, int64_t row0, float* out, int64_t batch, int64_t rows,
                    int64_t ld_out, float* col_sums = nullptr, int64_t sums_stride = 0) {
  const int64_t cols = src.cols;
  if (batch * rows * cols == 0) return;
  const dim3 grid(static_cast<unsigned>((rows + 31) / 32), static_cast<unsigned>((cols + 31) / 32),
                  static_cast<unsigned>(batch));
  const float* in = src.v + row0 * cols;
  const float* aux = src.aux ? src.aux + row0 * cols : nullptr;
  const auto launch = [&](auto kernel) {
    kernel<<<grid, dim3(32, 8), 0, stream()>>>(in, aux, out, rows, cols, ld_out, col_sums,
                                               sums_stride);
  };
  switch (src.op) {
    case Tf32Op::copy:
      launch(transpose_tf32_kernel<Tf32Op::copy>);
      break;
    case Tf32Op::gelu_grad:
      launch(transpose_tf32_kernel<Tf32Op::gelu_grad>);
      break;
  }
  KVC_CUDA_CHECK(cudaGetLastError());
}

int64_t round_up4(int64_t n) { return (n + 3) / 4 * 4; }

// Column `col` of each of `batch` (rows, ld) blocks of out = src (batch, rows), rounded to TF32
// as transpose_tf32 rounds: one more element of the reduction for every row of the operand; and
// zeros in columns (col, end), so that the reduction can run to a multiple of 4 (cuBLASLt takes
// its Hopper kernels for aligned sizes) adding nothing more.
__global__ void tf32_column_kernel(const float* __restrict__ src, float* __restrict__ out,
                                   int64_t rows, int64_t ld, int64_t col, int64_t end) {
  const int64_t z = blockIdx.y, r = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  float* row = out + (z * rows + r) * ld;
  row[col] = __uint_as_float(to_tf32(src[z * rows + r]));
  for (int64_t c = col + 1; c < end; ++c) row[c] = 0.0f;
}

// The column at `col` and zeros after it to the next multiple of 4 (<= ld): returns that end.
int64_t tf32_column(const float* src, float* out, int64_t batch, int64_t rows, int64_t ld,
                    int64_t col) {
  const int64_t end = round_up4(col + 1);
  KVC_CHECK(end <= ld, "tf32_column: column ", col, " padded to ", end, " past ", ld);
  const dim3 grid(static_cast<unsigned>((rows + kThreads - 1) / kThreads),
                  static_cast<unsigned>(batch));
  tf32_column_kernel<<<grid, kThreads, 0, stream()>>>(src, out, rows, ld, col, end);
  KVC_CUDA_CHECK(cudaGetLastError());
  return end;
}

// A bias gradient wanted beside a weight gradient: dst (h, n) per head or (n) shared, written or
// (acc) added to.
struct BiasGrad {
  float* dst = nullptr;
  bool acc = false, per_head = true;
};

// Writes dst (n values), or adds to it (acc), what sum(out) writes into n floats at out.
template <typename Sum>
void write_or_add(float* dst, bool acc, int64_t n, Sum&& sum) {
  Scratch total(acc ? static_cast<size_t>(n) * sizeof(float) : 0);
  float* out = acc ? total.as<float>() : dst;
  sum(out);
  if (acc) axpby<float>(dst, out, n, 1.0f, 1.0f);
}

// Partial column sums per head of m (b h w, cols) float32, (h, b, tiles, cols): a CTA takes
// kColumnRows rows of one (batch index, head) zi = blockIdx.y (then + gridDim.y, where there are
// more than a grid's 65535); warps take its rows in turn, lanes 32 columns at a time, then the
// warps' sums add in a fixed order. With z (the residual's backward, m = gy): also gz = scale[0]
// m and the CTA's part of m . z (dot_parts (b h, tiles)).
// Two launches with sum_axis after, where sum_to over the non-adjacent (b, w) axes took three
// that could not fill the GPU.
constexpr int kColumnRows = 64;
__global__ void column_parts_kernel(const float* __restrict__ m, const float* __restrict__ z,
                                    const float* __restrict__ scale, float* __restrict__ gz,
                                    float* __restrict__ dot_parts, float* __restrict__ col_parts,
                                    int64_t heads, int64_t batches, int64_t w, int64_t cols) {
  __shared__ float partial[kThreads / 32][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = kThreads / 32;
  const int64_t tiles = gridDim.x, row0 = int64_t{blockIdx.x} * kColumnRows;
  const int64_t rows_here = w - row0 < kColumnRows ? w - row0 : kColumnRows;
  const float s = z ? *scale : 0.0f;
  for (int64_t zi = blockIdx.y; zi < batches * heads; zi += gridDim.y) {
    const int64_t head = zi % heads, bi = zi / heads;
    float dot = 0.0f;
    for (int64_t c0 = 0; c0 < cols; c0 += 32) {
      const int64_t c = c0 + lane;
      float col = 0.0f;
      if (c < cols) {
#pragma unroll 4
        for (int64_t r = warp; r < rows_here; r += warps) {
          const int64_t i = (zi * w + row0 + r) * cols + c;
          const float v = m[i];
          col += v;
          if (z) {
            gz[i] = s * v;
            dot += v * z[i];
          }
        }
      }
      partial[warp][lane] = col;
      __syncthreads();
      if (warp == 0 && c < cols) {
        float total = 0.0f;
        for (int k = 0; k < warps; ++k) total += partial[k][lane];
        col_parts[((head * batches + bi) * tiles + blockIdx.x) * cols + c] = total;
      }
      __syncthreads();  // partial is free again
    }
    if (!z) continue;
    // The CTA's share of m . z, in a fixed order: lanes, then warps.
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (lane == 0) partial[warp][0] = dot;
    __syncthreads();
    if (threadIdx.x == 0) {
      float total = 0.0f;
      for (int k = 0; k < warps; ++k) total += partial[k][0];
      dot_parts[zi * tiles + blockIdx.x] = total;
    }
    __syncthreads();  // partial is free again
  }
}

// column_parts_kernel's launch: `tiles` row tiles per (batch index, head).
int64_t column_tiles(const MlpArgs& g) { return (g.w + kColumnRows - 1) / kColumnRows; }
void launch_column_parts(const MlpArgs& g, const float* m, int64_t cols, float* col_parts,
                         const float* z = nullptr, const float* scale = nullptr,
                         float* gz = nullptr, float* dot_parts = nullptr) {
  const dim3 grid(static_cast<unsigned>(column_tiles(g)),
                  static_cast<unsigned>(std::min<int64_t>(g.b * g.h, 65535)));
  column_parts_kernel<<<grid, kThreads, 0, stream()>>>(m, z, scale, gz, dot_parts, col_parts, g.h,
                                                       g.b, g.w, cols);
  KVC_CUDA_CHECK(cudaGetLastError());
}

// A layer's bias gradient from its output's gradient m (b, h, w, cols) float32: the sum over the
// rows (each head's, or all of them).
void bias_grad(const MlpArgs& g, const float* m, int64_t cols, const BiasGrad& bias) {
  const int64_t heads = bias.per_head ? g.h : 1, tiles = column_tiles(g);
  Scratch parts(static_cast<size_t>(g.h * g.b * tiles * cols) * sizeof(float));
  launch_column_parts(g, m, cols, parts.as<float>());
  write_or_add(bias.dst, bias.acc, heads * cols, [&](float* out) {
    sum_axis<float>(parts.as<float>(), out, heads, g.h * g.b * tiles / heads, cols, 1.0f);
  });
}

// The most bytes each transposed operand of weight_grad_tf32 takes at once (a test can change it).
constexpr size_t kTf32ChunkBytes = size_t{64} << 20;
size_t g_tf32_chunk_bytes = kTf32ChunkBytes;

// A weight gradient in TF32: per head dst_h (k, n) = in_h^T grad_h over the head's w rows (summed
// over the batch), or shared dst (n, k) = grad^T in over all rows; `in` (b, h, w, k) and `grad`
// (b, h, w, n) as the operands' ops make them. TF32 warpgroup MMA reads both operands K-major (the
// reduction contiguous) and, unlike bf16's, cannot transpose them as it reads shared memory; here
// the reduction runs over the rows, contiguous in neither operand, and cuBLASLt would fall back to
// Ampere's mma.sync kernels (~140 TFLOP/s on the H200 against ~400). So both operands are
// transposed into scratch first, rows contiguous and rounded to TF32, a chunk of heads (or rows)
// at a time so that the scratch stays bounded, and multiplied with both K-major ("TN" in cuBLAS's
// words). With `bias` (per-head weights only) the transposition of `grad` also yields its sum over
// the rows: that layer's bias gradient. With `shift` (h, k) as well (the rows' shift, MlpArgs; the
// bias written per head), dst_h also gets shift_h^T bias_h, rank one: once the last batch indices'
// transpositions complete a chunk of heads' bias gradient, it becomes one more column of both
// transposed operands, beside the shift, and the product adds the share (no pass reading and
// writing dst after it).
void weight_grad_tf32(const MlpArgs& g, const Tf32Operand& in, const Tf32Operand& grad, float* dst,
                      bool acc, const BiasGrad& bias = {}, const float* shift = nullptr) {
  KVC_CHECK(!bias.dst || !g.shared_weights,
            "weight_grad_tf32: a bias gradient beside shared weights");
  KVC_CHECK(!shift || (bias.dst && bias.per_head && !bias.acc),
            "weight_grad_tf32: the shift's share needs the bias gradient written per head");
  const int64_t k = in.cols, n = grad.cols;
  Product p;
  p.trans_b = true;  // the second operand is held (n, rows), as the first is (m, rows)
  p.compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  const int64_t widest = std::max(k, n) * static_cast<int64_t>(sizeof(float));  // bytes a row
  const int64_t budget = static_cast<int64_t>(g_tf32_chunk_bytes);
  if (g.shared_weights) {  // (n, k) = grad^T in: chunks of rows
    const int64_t rows = g.b * g.h * g.w;
    const int64_t chunk = std::clamp<int64_t>(budget / widest, 1, rows);
    const int64_t ld = round_up4(chunk);  // 16-byte aligned rows for the tensor-core kernels
    Scratch gt(static_cast<size_t>(n * ld) * sizeof(float));
    Scratch it(static_cast<size_t>(k * ld) * sizeof(float));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t rc = std::min(chunk, rows - r0);
      transpose_tf32(grad, r0, gt.as<float>(), 1, rc, ld);
      transpose_tf32(in, r0, it.as<float>(), 1, rc, ld);
      p.m = n, p.n = k, p.k = rc, p.lda = ld, p.ldb = ld, p.ldc = k;
      p.beta = acc || r0 > 0 ? 1.0f : 0.0f;
      run(p, gt.as<void>(), it.as<void>(), dst);
    }
    return;
  }
  // Per head: the rows of several batch indices side by side along the reduction (one longer
  // product rather than one per batch index), for a chunk of heads.
  const int64_t head_rows = std::max<int64_t>(g.w * widest, 1);  // bytes of one (b, head)
  const int64_t batches = std::clamp<int64_t>(budget / head_rows, 1, g.b);
  const int64_t heads = std::clamp<int64_t>(budget / (batches * head_rows), 1, g.h);
  const int64_t ld = round_up4(batches * g.w + (shift ? 1 : 0));  // tf32_column's padding fits
  Scratch it(static_cast<size_t>(heads * k * ld) * sizeof(float));
  Scratch gt(static_cast<size_t>(heads * n * ld) * sizeof(float));
  // The bias's partial sums, (h, b, tiles, n): one per head, batch index and 32-row tile.
  const int64_t tiles = (g.w + 31) / 32;
  Scratch sums(bias.dst ? static_cast<size_t>(g.h * g.b * tiles * n) * sizeof(float) : 0);
  for (int64_t b0 = 0; b0 < g.b; b0 += batches) {
    const int64_t bc = std::min(batches, g.b - b0);
    for (int64_t h0 = 0; h0 < g.h; h0 += heads) {
      const int64_t hc = std::min(heads, g.h - h0);
      for (int64_t bi = b0; bi < b0 + bc; ++bi) {
        const int64_t row0 = (bi * g.h + h0) * g.w, col0 = (bi - b0) * g.w;
        transpose_tf32(in, row0, it.as<float>() + col0, hc, g.w, ld);
        float* part = bias.dst ? sums.as<float>() + (h0 * g.b + bi) * tiles * n : nullptr;
        transpose_tf32(grad, row0, gt.as<float>() + col0, hc, g.w, ld, part, g.b * tiles * n);
      }
      int64_t reduce = bc * g.w;
      if (shift && b0 + bc == g.b) {  // these heads' bias gradients are whole: the shift's column
        sum_axis<float>(sums.as<float>() + h0 * g.b * tiles * n, bias.dst + h0 * n, hc, g.b * tiles,
                        n, 1.0f);
        tf32_column(shift + h0 * k, it.as<float>(), hc, k, ld, reduce);
        reduce = tf32_column(bias.dst + h0 * n, gt.as<float>(), hc, n, ld, reduce);
      }
      p.m = k, p.n = n, p.k = reduce, p.lda = ld, p.ldb = ld, p.ldc = n;
      p.batch = hc, p.stride_a = k * ld, p.stride_b = n * ld, p.stride_c = k * n;
      p.beta = acc || b0 > 0 ? 1.0f : 0.0f;
      run(p, it.as<void>(), gt.as<void>(), dst + h0 * k * n);
    }
  }
  if (bias.dst && !shift) {  // the partial sums of each head (or all) over the batch and the tiles
    const int64_t heads = bias.per_head ? g.h : 1, parts = g.h * g.b * tiles / heads;
    write_or_add(bias.dst, bias.acc, heads * n, [&](float* out) {
      sum_axis<float>(sums.as<float>(), out, heads, parts, n, 1.0f);
    });
  }
}

}  // namespace

void set_tf32_weight_grad_chunk_bytes(size_t bytes) {
  g_tf32_chunk_bytes = bytes > 0 ? bytes : kTf32ChunkBytes;
}

struct MlpSaved {
  MathPrecision precision = MathPrecision::fp32;
  Operand x, w2;                    // as the products read them
  std::unique_ptr<Scratch> hidden;  // ReLU: act(x W1 + b1), (b, h, slots, hidden); GELU: its input
  // Rows a (batch index, head) holds in x's copy and in hidden: w, or w + 1 (shift_in_rows).
  int64_t slots = 0;
  // With a residual: the MLP's output before its scaling, (b, h, w, out) float32 (the scale's
  // gradient is its dot product with y's).
  std::unique_ptr<Scratch> mlp_out;
};

namespace {

// a = gelu(p) over n elements of the operand type (p == a: in place).
void apply_gelu(const Types& t, const void* p, void* a, int64_t n) {
  with_operand_type(t, [&](auto type) {
    using T = decltype(type);
    launch_16_bytes<T>(gelu_kernel<T>, n, static_cast<const T*>(p), static_cast<T*>(a), n);
  });
}

}  // namespace

namespace {

// Whether layers_forward writes the residual's means of x's rows as it rounds x.
bool row_mean_in_rounding(const MlpArgs& g) {
  return g.residual_block > 0 && shift_in_rows(g, Types(math_precision())) && row_mean_fits(g);
}

// The two layers: y = act(x W1 + b1) W2 + b2. With x_mean (row_mean_in_rounding(g)) the
// residual's means of x's rows too.
std::shared_ptr<MlpSaved> layers_forward(const MlpArgs& g, float* y, bool save, float* x_mean) {
  auto s = std::make_shared<MlpSaved>();
  s->precision = math_precision();
  const Types t(s->precision);
  const int64_t rows = g.b * g.h * g.w;
  const bool shift_row = shift_in_rows(g, t);
  s->slots = shift_row ? g.w + 1 : g.w;
  s->x = shift_row ? x_and_shift_rows(g, x_mean) : Operand(g.x, rows * g.in, t.bf16);
  // The first product's bias: b1, or b1 + shift W1 per head (on the way as W1 is rounded, where
  // round_w1_shifted serves).
  Scratch b1_shifted(g.shift ? static_cast<size_t>(g.h * g.hidden) * sizeof(float) : 0);
  const bool shift_in_rounding = rounds_w1_shifted(g, t);
  const Operand w1 = shift_in_rounding ? round_w1_shifted(g, b1_shifted.as<float>())
                                       : Operand(g.w1, g.weight_heads() * g.in * g.hidden, t.bf16);
  if (g.shift && !shift_in_rounding) shifted_bias(g, t, w1.p, b1_shifted.as<float>());
  const bool b1_per_head = g.b1_per_head || g.shift;
  const Operand b1(g.shift ? b1_shifted.as<float>() : g.b1, (b1_per_head ? g.h : 1) * g.hidden,
                   t.bf16);
  s->w2 = Operand(g.w2, g.weight_heads() * g.hidden * g.out, t.bf16);
  // The first product's output: ReLU's (its epilogue applies it), kept for the backward, which
  // needs nothing else of this layer; GELU's input, kept for the backward, which recomputes
  // GELU's output from it rather than keeping both (half the memory, one more pass), and GELU
  // applied into a second buffer for the next product (in place where nothing is kept), or under
  // bf16, where its kernel fits, as the second product reads its input (gelu_product_kernel: no
  // pass and no second buffer).
  const bool relu = g.act == MlpActivation::relu;
  const bool gelu_in_product = !relu && t.bf16 && gelu_product::fits(g);
  const int64_t n_hidden = g.b * g.h * s->slots * g.hidden;
  s->hidden = std::make_unique<Scratch>(static_cast<size_t>(n_hidden) * t.size);
  std::unique_ptr<Scratch> activated;
  if (!relu && save && !gelu_in_product) {
    activated = std::make_unique<Scratch>(static_cast<size_t>(n_hidden) * t.size);
  }
  void* act_out = activated ? activated->as<void>() : s->hidden->as<void>();

  // x @ W1 + b1, then ReLU in the epilogue or GELU after. ReLU's backward reads its output in
  // one pass: cuBLASLt's bit-mask epilogues (RELU_AUX_BIAS, DRELU) gave the same values but
  // steps 7-10% slower on the H200 (grouped_mlp and mlp, both shapes).
  Product first;
  first.ab = first.c = t.data;
  first.compute = t.compute;
  first.bias = b1.p;
  first.bias_stride = b1_per_head ? g.hidden : 0;
  first.epilogue = relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
  rows_times_weight(g, first, g.in, g.hidden, !g.shared_weights, s->x.p, t.size, w1.p,
                    s->hidden->as<void>(), t.size, s->slots, s->slots);
  if (gelu_in_product) {
    gelu_product_bf16(g, s->hidden->as<void>(), s->slots, s->w2.p, y);
    return save ? s : nullptr;
  }
  if (!relu) apply_gelu(t, s->hidden->as<void>(), act_out, n_hidden);
  // hidden @ W2 + b2, float32 out.
  Product second;
  second.ab = t.data;
  second.compute = t.compute;
  second.epilogue = CUBLASLT_EPILOGUE_BIAS;
  second.bias = g.b2;
  second.bias_stride = g.b2_per_head ? g.out : 0;
  rows_times_weight(g, second, g.hidden, g.out, !g.shared_weights, act_out, t.size, s->w2.p, y,
                    sizeof(float), s->slots);
  if (!save) return nullptr;
  return s;
}

void layers_backward(const MlpArgs& g, const MlpSaved& s, const float* gy, const MlpGrads& out) {
  const Types t(s.precision);
  const int64_t rows = g.b * g.h * g.w;
  const bool relu = g.act == MlpActivation::relu;
  const Operand gy_op(gy, rows * g.out, t.bf16);
  // b1's gradient from the bfloat16 gradient at the first product's output: the sum over the rows
  // (each head's, or all) as ones-vector products.
  const auto bf16_bias_grad = [&](const void* m, int64_t cols, const BiasGrad& bias) {
    Scratch ones32(static_cast<size_t>(rows) * sizeof(float));
    fill<float>(ones32.as<float>(), rows, 1.0f);
    const Operand ones(ones32.as<float>(), rows, true);
    Product p;
    p.ab = CUDA_R_16BF;
    p.m = 1, p.n = cols, p.ldb = cols, p.ldc = cols;
    if (!bias.per_head) {
      p.k = rows, p.lda = rows;
      p.beta = bias.acc ? 1.0f : 0.0f;
      run(p, ones.p, m, bias.dst);
      return;
    }
    p.k = g.w, p.lda = g.w;
    p.batch = g.h, p.stride_b = g.w * cols, p.stride_c = cols;
    for (int64_t bi = 0; bi < g.b; ++bi) {
      p.beta = bias.acc || bi > 0 ? 1.0f : 0.0f;
      run(p, ones.p, at(m, bi * g.h * g.w * cols, t.size), bias.dst);
    }
  };
  // A layer's weight gradient from its input `in` (cols k) and its output's gradient `grad`
  // (cols n), both in the operand type: per head (k, n) = in^T grad over the first `sum_rows` of
  // each (batch index, head)'s rows (w, or w + 1 with the shift's row), which holds in_slots rows
  // of `in` and grad_slots of `grad`; shared (n, k) = grad^T in over all rows.
  const auto weight_grad = [&](const void* in, int64_t k, const void* grad, int64_t n, float* dst,
                               bool acc, int64_t in_slots, int64_t grad_slots, int64_t sum_rows) {
    Product p;
    p.trans_a = true;
    p.ab = t.data, p.compute = t.compute;
    p.beta = acc ? 1.0f : 0.0f;
    if (g.shared_weights) {
      KVC_CHECK(in_slots == g.w && grad_slots == g.w && sum_rows == g.w,
                "two_layer_mlp: shared weights read every head's rows as one run");
      p.m = n, p.n = k, p.k = rows, p.lda = n, p.ldb = k, p.ldc = k;
      run(p, grad, in, dst);
      return;
    }
    p.m = k, p.n = n, p.k = sum_rows, p.lda = k, p.ldb = n, p.ldc = n;
    p.batch = g.h, p.stride_a = in_slots * k, p.stride_b = grad_slots * n, p.stride_c = k * n;
    const auto operands = [&](int64_t bi) {
      return std::pair{at(in, bi * g.h * in_slots * k, t.size),
                       at(grad, bi * g.h * grad_slots * n, t.size)};
    };
    // One product per batch index, each adding onto the last; or, where products side by side
    // pay and the gradient is small (the second layer's), one partial gradient per lane, added up
    // after.
    const int64_t elems = g.h * k * n;
    if (g.b == 1 || !side_by_side_pays(p) || elems * sizeof(float) > kPartialGradBytes) {
      for (int64_t bi = 0; bi < g.b; ++bi) {
        p.beta = acc || bi > 0 ? 1.0f : 0.0f;
        const auto [a, b] = operands(bi);
        run(p, a, b, dst);
      }
      return;
    }
    const int64_t lanes = std::min<int64_t>(g.b, kLanes);
    Scratch partial(static_cast<size_t>(lanes * elems) * sizeof(float));
    side_by_side(g.b, true, [&](int64_t bi, int lane) {
      p.lane = lane;
      p.beta = bi >= kLanes ? 1.0f : 0.0f;
      const auto [a, b] = operands(bi);
      run(p, a, b, partial.as<float>() + lane * elems);
    });
    write_or_add(dst, acc, elems, [&](float* total) {
      sum_axis<float>(partial.as<float>(), total, 1, lanes, elems, 1.0f);
    });
  };

  if (out.b2) bias_grad(g, gy, g.out, {out.b2, out.acc_b2, g.b2_per_head});
  // ReLU: its output as kept, for dW2; then the gradient at the first product's output is written
  // over it, its signs kept aside first (relu_mask: a 16th or 8th of its size), so the backward
  // holds no second (b, h, w, hidden) buffer (the saved state is spent: a tape runs each backward
  // once). GELU: the output recomputed from its kept input into a buffer that then takes that
  // gradient.
  const int64_t slots = s.slots, n_hidden = g.b * g.h * slots * g.hidden;
  const bool shift_row = slots != g.w;  // shift_in_rows: x's copy and hidden hold its row
  // Under bf16, where its kernel fits the sizes, the gradient at the first product's output is one
  // pass (hidden_grad_kernel), which with GELU also writes GELU's output over its kept input for
  // dW2, after it, instead of a pass of its own before. With per-head weights under GELU that pass
  // makes W2's gradient too (hidden_grad_w2_kernel): no GELU output is written, the gradient goes
  // over the kept values, and no GELU buffer is needed.
  const bool hidden_grad_wanted = out.x || out.w1 || out.b1 || out.shift;
  const bool one_pass = t.bf16 && hidden_grad::fits(g) && hidden_grad_wanted;
  const bool w2_in_pass = one_pass && hidden_grad_w2::fits(g);
  const bool gelu_in_pass = !relu && one_pass;
  Scratch gelu_out(relu || w2_in_pass ? 0 : static_cast<size_t>(n_hidden) * t.size);
  if (out.w2 && !gelu_in_pass && !w2_in_pass) {
    const void* activated = s.hidden->as<void>();
    if (!relu) {
      apply_gelu(t, s.hidden->as<void>(), gelu_out.as<void>(), n_hidden);
      activated = gelu_out.as<void>();
    }
    weight_grad(activated, g.hidden, gy_op.p, g.out, out.w2, out.acc_w2, slots, g.w, g.w);
  }
  if (!hidden_grad_wanted) return;

  // The gradient at the first product's output, gy W2^T times act'(.), in the operand type.
  // Under TF32 and GELU with per-head weights and no gradient for x, nothing reads that gradient
  // but dW1's transposition and b1's sum: that transposition applies GELU's derivative and sums
  // b1 on the way (three passes over the hidden values fewer).
  void* dpre = relu || w2_in_pass ? s.hidden->as<void>() : gelu_out.as<void>();
  const bool tf32 = s.precision == MathPrecision::tf32;
  const bool finish_in_transpose = tf32 && !relu && !g.shared_weights && !out.x && out.w1;
  with_operand_type(t, [&](auto type) {
    using T = decltype(type);
    if (one_pass) return;
    Scratch signs(relu ? static_cast<size_t>(relu_mask_bytes<T>(n_hidden)) : 0);
    if (relu) relu_mask<T>(s.hidden->as<void>(), signs.as<void>(), n_hidden);
    Product back;
    back.ab = back.c = t.data;
    back.compute = t.compute;
    rows_times_weight(g, back, g.out, g.hidden, g.shared_weights, gy_op.p, t.size, s.w2.p, dpre,
                      t.size);
    if (finish_in_transpose) return;
    if (relu) {
      relu_masked<T>(signs.as<void>(), dpre, n_hidden);
    } else {
      activation_backward<T>(s.hidden->as<void>(), dpre, n_hidden, GeluGrad<T>{});
    }
  });
  // The gradient at the first product's bias: b1's, or with a shift the shifted bias's, (h,
  // hidden), from which b1's, the shift's and W1's rank-one share follow (below).
  Scratch db1_shifted(g.shift ? static_cast<size_t>(g.h * g.hidden) * sizeof(float) : 0);
  BiasGrad b1{out.b1, out.acc_b1, g.b1_per_head};
  if (g.shift) {
    b1 =
        out.b1 || out.w1 || out.shift ? BiasGrad{db1_shifted.as<float>(), false, true} : BiasGrad{};
  }
  // Under TF32 with per-head weights dW1's transposition of that gradient sums b1's too: a pass
  // over (b, h, w, hidden) fewer (~58 us a compressor at `nsa`).
  const bool b1_in_transpose = tf32 && !g.shared_weights && out.w1;
  if (one_pass) {
    // The pass's partial column sums: a part per warp row of each row tile (hidden_grad_kernel)
    // or of each split of a head's rows (hidden_grad_w2_kernel).
    const HiddenGradW2Split split = w2_in_pass ? hidden_grad_w2_split(g) : HiddenGradW2Split{};
    const int64_t parts =
        w2_in_pass ? split.batch_parts * hidden_grad_w2::kWarpRows
                   : (g.w + hidden_grad::kRows - 1) / hidden_grad::kRows * hidden_grad::kWarpRows;
    const size_t sums_bytes =
        b1.dst ? static_cast<size_t>(g.h * g.b * parts * g.hidden) * sizeof(float) : 0;
    Scratch sums(sums_bytes);
    // Where some batch index has fewer splits than batch_parts, its spare parts stay zero.
    if (w2_in_pass && split.batch_parts > 1 && sums_bytes > 0) {
      KVC_CUDA_CHECK(cudaMemsetAsync(sums.as<void>(), 0, sums_bytes, stream()));
    }
    HiddenGradIo io;
    io.gy = gy_op.p, io.w2 = s.w2.p, io.saved = s.hidden->as<void>(), io.dst = dpre;
    io.col_sums = sums.as<float>();
    io.slots = slots;
    if (w2_in_pass) {  // W2's gradient a part per split, summed after
      Scratch w2_parts(
          out.w2 ? static_cast<size_t>(g.h * split.splits * g.hidden * g.out) * sizeof(float) : 0);
      hidden_grad_w2_bf16(g, io, split, w2_parts.as<float>());
      if (out.w2) {
        write_or_add(out.w2, out.acc_w2, g.h * g.hidden * g.out, [&](float* o) {
          sum_axis<float>(w2_parts.as<float>(), o, g.h, split.splits, g.hidden * g.out, 1.0f);
        });
      }
    } else {
      io.gelu_out = gelu_in_pass && out.w2 ? s.hidden->as<void>() : nullptr;
      hidden_grad_bf16(g, io);
    }
    if (shift_row && out.w1) {  // the row dW1's product takes the shift's share from
      const dim3 grid(static_cast<unsigned>((g.hidden + kThreads - 1) / kThreads),
                      static_cast<unsigned>(g.b * g.h));
      shift_row_sums_kernel<<<grid, kThreads, 0, stream()>>>(
          sums.as<float>(), static_cast<uint16_t*>(dpre), g.h, g.b, parts, g.hidden, slots);
      KVC_CUDA_CHECK(cudaGetLastError());
    }
    if (gelu_in_pass && out.w2 && !w2_in_pass) {
      weight_grad(s.hidden->as<void>(), g.hidden, gy_op.p, g.out, out.w2, out.acc_w2, slots, g.w,
                  g.w);
    }
    // b1's (or the shifted bias's) gradient from the pass's partial column sums.
    if (b1.dst) {
      const int64_t heads = b1.per_head ? g.h : 1, per_head = g.h * g.b * parts / heads;
      write_or_add(b1.dst, b1.acc, heads * g.hidden, [&](float* o) {
        sum_axis<float>(sums.as<float>(), o, heads, per_head, g.hidden, 1.0f);
      });
    }
  } else if (b1.dst && !b1_in_transpose) {
    if (t.bf16) {
      bf16_bias_grad(dpre, g.hidden, b1);
    } else {
      bias_grad(g, static_cast<const float*>(dpre), g.hidden, b1);
    }
  }
  // The shift's share of W1's gradient: per head shift^T db1_shifted, rank one (h with shared
  // weights), written (or added) at memory speed. Where db1_shifted is known before the
  // weight-gradient product, that product adds onto it; with the shift's row (shift_in_rows) the
  // product takes it as one more row of its operands instead.
  const auto w1_shift_share = [&](bool acc) {
    const float* db = db1_shifted.as<float>();
    if (g.shared_weights) {  // (hidden, in) = db^T (hidden, h) shift (h, in)
      Product p;
      p.trans_a = true;
      p.m = g.hidden, p.n = g.in, p.k = g.h, p.lda = g.hidden, p.ldb = g.in, p.ldc = g.in;
      p.beta = acc ? 1.0f : 0.0f;
      run(p, db, g.shift, out.w1);
    } else {
      outer<float>(g.shift, db, out.w1, g.h, g.in, g.hidden, acc ? 1.0f : 0.0f);
    }
  };
  bool acc_w1 = out.acc_w1;
  if (g.shift && out.w1 && !b1_in_transpose && !shift_row) {
    w1_shift_share(acc_w1);
    acc_w1 = true;
  }
  // Under TF32 with per-head weights the shift's share joins dW1's product as one more column of
  // its transposed operands (weight_grad_tf32).
  const float* tf32_shift = b1_in_transpose ? g.shift : nullptr;
  if (finish_in_transpose) {
    weight_grad_tf32(g, {static_cast<const float*>(s.x.p), g.in},
                     {static_cast<const float*>(dpre), g.hidden, Tf32Op::gelu_grad,
                      static_cast<const float*>(s.hidden->as<void>())},
                     out.w1, acc_w1, b1, tf32_shift);
  } else if (out.w1) {
    if (tf32) {
      weight_grad_tf32(g, {static_cast<const float*>(s.x.p), g.in},
                       {static_cast<const float*>(dpre), g.hidden}, out.w1, acc_w1,
                       b1_in_transpose ? b1 : BiasGrad{}, tf32_shift);
    } else {
      weight_grad(s.x.p, g.in, dpre, g.hidden, out.w1, acc_w1, slots, slots, slots);
    }
  }
  if (g.shift) {
    const float* db = db1_shifted.as<float>();
    if (out.b1) {  // db1_shifted itself, or its sum over the heads
      const int64_t heads = g.b1_per_head ? g.h : 1;
      write_or_add(out.b1, out.acc_b1, heads * g.hidden, [&](float* o) {
        sum_axis<float>(db, o, 1, g.h / heads, heads * g.hidden, 1.0f);
      });
    }
    if (out.shift) {  // (h, in) = db1_shifted W1^T per head, through the float32 weight
      Product p;
      p.compute = t.compute;
      p.beta = out.acc_shift ? 1.0f : 0.0f;
      rows_times_weight(shift_rows(g), p, g.hidden, g.in, g.shared_weights, db, sizeof(float), g.w1,
                        out.shift, sizeof(float));
    }
  }
  if (out.x) {  // dpre W1^T, float32 out
    const Operand w1(g.w1, g.weight_heads() * g.in * g.hidden, t.bf16);
    Product p;
    p.ab = t.data;
    p.compute = t.compute;
    p.beta = out.acc_x ? 1.0f : 0.0f;
    rows_times_weight(g, p, g.hidden, g.in, g.shared_weights, dpre, t.size, w1.p, out.x,
                      sizeof(float), slots);
  }
}

// ---------------------------------------------------------------------------------------------
// The residual (enhanced_mlp's skip): y = mean_j(x_j) + mean_j(shift_j) + scale z, with z the
// MLP's output and x_j the n = residual_block groups of out values of each row of x (in = n out).
// One pass forward; backward one pass over gy writes scale gy (the MLP's output gradient) and
// the partial sums of gy z (the scale's gradient) and of gy's columns per head (the shift's, each
// group's share 1 / n, and b2's, scale times them); small passes finish them. The composition this
// replaces launched eight kernels, several of them sums over few columns that could not fill the
// GPU.

// y[r, c] = (sum_j x[r, j out + c]) / n + (sum_j shift[head, j out + c]) / n + scale z[r, c], as
// the composition's two means and sums; x's mean from x_mean where the rounding of x wrote it.
// One thread an output value: the group reads are coalesced along c.
__global__ void residual_forward_kernel(
    const float* __restrict__ x, const float* __restrict__ x_mean, const float* __restrict__ shift,
    const float* __restrict__ z, const float* __restrict__ scale, float* __restrict__ y,
    int64_t total, int64_t heads, int64_t w, int64_t n, int64_t out) {
  const float s = *scale, inv_n = 1.0f / static_cast<float>(n);
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / out, c = i - r * out;
    float mean = 0.0f;
    if (x_mean) {
      mean = x_mean[i];
    } else {
      const float* xr = x + r * n * out + c;
      float sum = 0.0f;
#pragma unroll 8
      for (int64_t j = 0; j < n; ++j) sum += __ldcs(xr + j * out);
      mean = sum * inv_n;
    }
    if (shift) {
      const float* sr = shift + (r / w % heads) * n * out + c;
      float ssum = 0.0f;
      for (int64_t j = 0; j < n; ++j) ssum += sr[j * out];
      mean += ssum * inv_n;
    }
    y[i] = mean + s * z[i];
  }
}

// dst = scale[0] src, or (acc) dst += scale[0] src, over n values: b2's gradient from gy's
// column sums, the scale read on the device.
__global__ void scale_by_kernel(const float* __restrict__ src, const float* __restrict__ scale,
                                float* __restrict__ dst, int64_t n, bool acc) {
  const float s = *scale;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = acc ? dst[i] + s * src[i] : s * src[i];
  }
}

// dx[r, j out + c] += gy[r, c] / n: the mean's gradient, after the MLP's own.
__global__ void residual_x_grad_kernel(const float* __restrict__ gy, float* __restrict__ dx,
                                       int64_t total, int64_t in, int64_t out, float inv_n) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / in;
    dx[i] += gy[r * out + (i - r * in) % out] * inv_n;
  }
}

}  // namespace

std::shared_ptr<MlpSaved> mlp_forward(const MlpArgs& g, float* y, bool save) {
  if (g.residual_block == 0) return layers_forward(g, y, save, nullptr);
  // The MLP's output apart, kept for the scale's gradient; then y from it and the block means.
  // Under bf16 with the shift's row, x's means come with its rounding (one read of x, not two).
  const int64_t total = g.b * g.h * g.w * g.out;
  auto z = std::make_unique<Scratch>(static_cast<size_t>(total) * sizeof(float));
  Scratch x_mean(row_mean_in_rounding(g) ? static_cast<size_t>(total) * sizeof(float) : 0);
  std::shared_ptr<MlpSaved> s = layers_forward(g, z->as<float>(), save, x_mean.as<float>());
  residual_forward_kernel<<<grid_for(total), kThreads, 0, stream()>>>(
      g.x, x_mean.as<float>(), g.shift, z->as<float>(), g.residual_scale, y, total, g.h, g.w,
      g.residual_block, g.out);
  KVC_CUDA_CHECK(cudaGetLastError());
  if (s) s->mlp_out = std::move(z);
  return s;
}

void mlp_backward(const MlpArgs& g, const MlpSaved& s, const float* gy, const MlpGrads& out) {
  if (g.residual_block == 0) {
    layers_backward(g, s, gy, out);
    return;
  }
  KVC_CHECK(s.mlp_out, "mlp_backward: a residual's forward kept no output of the MLP");
  const int64_t n = g.residual_block, rows = g.b * g.h * g.w, total = rows * g.out;
  const int64_t tiles = column_tiles(g), heads_b = g.b * g.h;
  Scratch gz(static_cast<size_t>(total) * sizeof(float));
  Scratch scale_parts(static_cast<size_t>(heads_b * tiles) * sizeof(float));
  Scratch col_parts(static_cast<size_t>(heads_b * tiles * g.out) * sizeof(float));
  launch_column_parts(g, gy, g.out, col_parts.as<float>(), s.mlp_out->as<float>(), g.residual_scale,
                      gz.as<float>(), scale_parts.as<float>());
  // gy's column sums per head: the shift's share below, and b2's gradient (scale times them),
  // which the layers' backward then need not sum from gz.
  Scratch cols(out.shift || out.b2 ? static_cast<size_t>(g.h * g.out) * sizeof(float) : 0);
  if (out.shift || out.b2) {
    sum_axis<float>(col_parts.as<float>(), cols.as<float>(), g.h, g.b * tiles, g.out, 1.0f);
  }
  MlpGrads layers = out;
  layers.b2 = nullptr;
  layers_backward(g, s, gz.as<float>(), layers);
  if (out.b2) {
    const int64_t heads = g.b2_per_head ? g.h : 1;
    Scratch summed(heads == 1 ? static_cast<size_t>(g.out) * sizeof(float) : 0);
    const float* src = cols.as<float>();
    if (heads == 1) {  // one b2 for every head
      sum_axis<float>(cols.as<float>(), summed.as<float>(), 1, g.h, g.out, 1.0f);
      src = summed.as<float>();
    }
    scale_by_kernel<<<grid_for(heads * g.out), kThreads, 0, stream()>>>(
        src, g.residual_scale, out.b2, heads * g.out, out.acc_b2);
    KVC_CUDA_CHECK(cudaGetLastError());
  }
  if (out.residual_scale) {
    write_or_add(out.residual_scale, out.acc_residual_scale, 1, [&](float* o) {
      sum_axis<float>(scale_parts.as<float>(), o, 1, heads_b * tiles, 1, 1.0f);
    });
  }
  if (out.shift) {  // each group of the shift's row gets its head's column sums / n, added
    Scratch share(static_cast<size_t>(g.h * g.in) * sizeof(float));
    expand_axis<float>(cols.as<float>(), share.as<float>(), g.h, n, g.out,
                       1.0f / static_cast<float>(n));
    axpby<float>(out.shift, share.as<float>(), g.h * g.in, 1.0f, 1.0f);
  }
  if (out.x) {
    residual_x_grad_kernel<<<grid_for(rows * g.in), kThreads, 0, stream()>>>(
        gy, out.x, rows * g.in, g.in, g.out, 1.0f / static_cast<float>(n));
    KVC_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace kvc::kernels::cuda
