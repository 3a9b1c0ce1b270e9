// CUDA elementwise kernels: broadcast binary ops, axpby, outer products, ReLU, GELU and dropout,
// each forward next to its backward.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "base/philox.h"
#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"
#include "kernels/math/elementwise.h"

namespace kvc::kernels::cuda {

namespace {

template <BinaryOp Op, typename T>
__device__ __forceinline__ T apply(T a, T b) {
  if constexpr (Op == BinaryOp::add) return a + b;
  if constexpr (Op == BinaryOp::sub) return a - b;
  if constexpr (Op == BinaryOp::mul) return a * b;
  if constexpr (Op == BinaryOp::div) return a / b;
}

template <BinaryOp Op, typename T>
__global__ void binary_flat_kernel(const T* a, const T* b, T* out, int64_t n) {
  KVC_GRID_LOOP(i, n) out[i] = apply<Op>(a[i], b[i]);
}

// ndim here is after merging axes on the host, usually 1 to 4. I is the index type: uint32_t
// where every index and offset fits (nearly always), since a 64-bit division per axis and
// element is what bounds this kernel (12 us for the MLP kinds' (b, h, w, d) + (1, h, 1, d) add
// at `nsa` with int64_t, 4 MiB).
template <BinaryOp Op, typename T, typename I>
__global__ void binary_broadcast_kernel(const T* a, const T* b, T* out, I n, BroadcastIndex index) {
  const I step = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    I rest = i, ia = 0, ib = 0;
    for (int d = index.ndim - 1; d >= 0; --d) {
      const I shape = static_cast<I>(index.shape[d]);
      const I c = rest % shape;
      rest /= shape;
      ia += c * static_cast<I>(index.a_stride[d]);
      ib += c * static_cast<I>(index.b_stride[d]);
    }
    out[i] = apply<Op>(a[ia], b[ib]);
  }
}

// Whether n elements and every offset into a and b fit binary_broadcast_kernel's 32-bit indices
// (with room for the grid-stride loop's last step past n).
bool fits_32_bits(int64_t n, const BroadcastIndex& index) {
  constexpr int64_t kLimit = int64_t{1} << 31;
  int64_t last_a = 0, last_b = 0;
  for (int d = 0; d < index.ndim; ++d) {
    if (index.a_stride[d] < 0 || index.b_stride[d] < 0) return false;
    last_a += (index.shape[d] - 1) * index.a_stride[d];
    last_b += (index.shape[d] - 1) * index.b_stride[d];
  }
  return n < kLimit && last_a < kLimit && last_b < kLimit;
}

// The same with a long last axis: CTAs walk (row, chunk of the row) pairs, so a row's offsets
// cost ndim - 1 divisions once per chunk instead of ndim per element, consecutive threads touch
// consecutive elements, and a few very long rows still spread over the whole GPU. Block positions
// added to every block and per-head scales take this path.
constexpr int64_t kRowChunk = 8 * kThreads;

template <BinaryOp Op, typename T>
__global__ void binary_rows_kernel(const T* a, const T* b, T* out, int64_t rows,
                                   BroadcastIndex index) {
  const int last = index.ndim - 1;
  const int64_t inner = index.shape[last];
  const int64_t chunks = (inner + kRowChunk - 1) / kRowChunk;
  const int64_t sa = index.a_stride[last], sb = index.b_stride[last];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t rest = r, ia = 0, ib = 0;
    for (int d = last - 1; d >= 0; --d) {
      const int64_t c = rest % index.shape[d];
      rest /= index.shape[d];
      ia += c * index.a_stride[d];
      ib += c * index.b_stride[d];
    }
    T* o = out + r * inner;
    for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
      const int64_t end = min(inner, (chunk + 1) * kRowChunk);
      for (int64_t c = chunk * kRowChunk + threadIdx.x; c < end; c += blockDim.x) {
        o[c] = apply<Op>(a[ia + c * sa], b[ib + c * sb]);
      }
    }
  }
}

// Rows at least this long go to binary_rows_kernel (a shorter one would idle most of the CTA).
constexpr int64_t kMinRowLength = 256;

template <BinaryOp Op, typename T>
void launch_binary(const T* a, const T* b, T* out, int64_t n, const BroadcastIndex& raw) {
  const BroadcastIndex index = math::collapse(raw);
  if (index.ndim == 0 || (index.ndim == 1 && index.a_stride[0] == 1 && index.b_stride[0] == 1)) {
    binary_flat_kernel<Op, T><<<grid_for(n), kThreads, 0, stream()>>>(a, b, out, n);
  } else if (index.ndim >= 2 && index.shape[index.ndim - 1] >= kMinRowLength) {
    const int64_t inner = index.shape[index.ndim - 1], rows = n / inner;
    const dim3 grid(
        static_cast<unsigned>(std::min<int64_t>(rows, 65535)),
        static_cast<unsigned>(std::min<int64_t>((inner + kRowChunk - 1) / kRowChunk, 65535)));
    binary_rows_kernel<Op, T><<<grid, kThreads, 0, stream()>>>(a, b, out, rows, index);
  } else {
    if (fits_32_bits(n, index)) {
      binary_broadcast_kernel<Op, T, uint32_t>
          <<<grid_for(n), kThreads, 0, stream()>>>(a, b, out, static_cast<uint32_t>(n), index);
    } else {
      binary_broadcast_kernel<Op, T, int64_t>
          <<<grid_for(n), kThreads, 0, stream()>>>(a, b, out, n, index);
    }
  }
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
__global__ void axpby_kernel(T* y, const T* x, int64_t n, T alpha, T beta) {
  if (beta == T(0)) {
    KVC_GRID_LOOP(i, n) y[i] = alpha * x[i];
  } else {
    KVC_GRID_LOOP(i, n) y[i] = alpha * x[i] + beta * y[i];
  }
}

// out (groups * rows, cols) = x (groups * rows) outer y (groups, cols) [+ beta out]. A CTA owns
// kOuterRows consecutive rows of out and a span of columns, kVec consecutive ones a thread (four,
// 16 bytes, where every row starts 16-byte aligned: float, cols % 4 == 0): each thread loads its
// y values once and has kOuterRows stores in flight. (One row a CTA, one 16-byte store a thread,
// wrote W1's rank-one gradient share at `long`, 512 MiB, at 2.8 TB/s.)
constexpr int kOuterRows = 8;
template <typename T, int kVec>
__global__ void outer_kernel(const T* x, const T* y, T* out, int64_t rows, int64_t all_rows,
                             int64_t cols, T beta) {
  static_assert(kVec == 1 || std::is_same_v<T, float>, "four columns a thread: float only");
  using Vec = std::conditional_t<kVec == 4, float4, T>;
  const auto times = [](T a, const Vec& v) {
    if constexpr (kVec == 4) {
      return make_float4(a * v.x, a * v.y, a * v.z, a * v.w);
    } else {
      return a * v;
    }
  };
  const auto plus = [](const Vec& a, T b, const Vec& v) {  // a + b v
    if constexpr (kVec == 4) {
      return make_float4(a.x + b * v.x, a.y + b * v.y, a.z + b * v.z, a.w + b * v.w);
    } else {
      return a + b * v;
    }
  };
  const int64_t col_step = int64_t{gridDim.x} * blockDim.x * kVec;
  for (int64_t c = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) * kVec; c < cols;
       c += col_step) {
    for (int64_t r0 = int64_t{blockIdx.y} * kOuterRows; r0 < all_rows;
         r0 += int64_t{gridDim.y} * kOuterRows) {
      // A row block may straddle two groups (rows % kOuterRows != 0): y is read per row then.
      const int64_t g0 = r0 / rows, r_end = min(r0 + kOuterRows, all_rows);
      const bool one_group = (r_end - 1) / rows == g0;
      const Vec y0 = *reinterpret_cast<const Vec*>(y + g0 * cols + c);
#pragma unroll
      for (int i = 0; i < kOuterRows; ++i) {
        const int64_t r = r0 + i;
        if (r >= r_end) break;
        const Vec yv = one_group ? y0 : *reinterpret_cast<const Vec*>(y + (r / rows) * cols + c);
        Vec* o = reinterpret_cast<Vec*>(out + r * cols + c);
        const Vec v = times(x[r], yv);
        *o = beta == T(0) ? v : plus(v, beta, *o);
      }
    }
  }
}

template <typename T>
__global__ void relu_forward_kernel(const T* x, T* y, int64_t n) {
  KVC_GRID_LOOP(i, n) y[i] = x[i] > T(0) ? x[i] : T(0);
}

template <typename T>
__global__ void relu_backward_kernel(const T* y, const T* gy, T* gx, int64_t n) {
  KVC_GRID_LOOP(i, n) gx[i] = y[i] > T(0) ? gy[i] : T(0);
}

template <typename T>
__global__ void gelu_forward_kernel(const T* x, T* y, int64_t n) {
  KVC_GRID_LOOP(i, n) y[i] = math::gelu(x[i]);
}

template <typename T>
__global__ void gelu_backward_kernel(const T* x, const T* gy, T* gx, int64_t n) {
  KVC_GRID_LOOP(i, n) gx[i] = math::gelu_backward(x[i], gy[i]);
}

// The mask is recomputed from (seed, offset, i) in both directions: nothing is stored.
template <typename T>
__global__ void dropout_kernel(const T* in, T* out, int64_t n, float p, T scale, uint64_t seed,
                               uint64_t offset) {
  KVC_GRID_LOOP(i, n) {
    out[i] = philox::keep(seed, offset, static_cast<uint64_t>(i), p) ? in[i] * scale : T(0);
  }
}

}  // namespace

template <typename T>
void binary(BinaryOp op, const T* a, const T* b, T* out, int64_t n, const BroadcastIndex& index) {
  if (n <= 0) return;
  switch (op) {
    case BinaryOp::add:
      return launch_binary<BinaryOp::add>(a, b, out, n, index);
    case BinaryOp::sub:
      return launch_binary<BinaryOp::sub>(a, b, out, n, index);
    case BinaryOp::mul:
      return launch_binary<BinaryOp::mul>(a, b, out, n, index);
    case BinaryOp::div:
      return launch_binary<BinaryOp::div>(a, b, out, n, index);
  }
  KVC_FAIL("binary: unknown op ", static_cast<int>(op));
}

template <typename T>
void axpby(T* y, const T* x, int64_t n, T alpha, T beta) {
  if (n <= 0) return;
  axpby_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(y, x, n, alpha, beta);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void outer(const T* x, const T* y, T* out, int64_t groups, int64_t rows, int64_t cols, T beta) {
  const int64_t all_rows = groups * rows;
  if (all_rows <= 0 || cols <= 0) return;
  const bool vec = std::is_same_v<T, float> && cols % 4 == 0 &&
                   reinterpret_cast<uintptr_t>(out) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(y) % 16 == 0;
  const int vec_width = vec ? 4 : 1;
  const int64_t col_blocks = (cols + int64_t{kThreads} * vec_width - 1) / (kThreads * vec_width);
  const int64_t row_blocks = (all_rows + kOuterRows - 1) / kOuterRows;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(col_blocks, 65535)),
                  static_cast<unsigned>(std::min<int64_t>(row_blocks, 65535)));
  if constexpr (std::is_same_v<T, float>) {
    if (vec) {
      outer_kernel<T, 4><<<grid, kThreads, 0, stream()>>>(x, y, out, rows, all_rows, cols, beta);
      KVC_CUDA_CHECK(cudaGetLastError());
      return;
    }
  }
  outer_kernel<T, 1><<<grid, kThreads, 0, stream()>>>(x, y, out, rows, all_rows, cols, beta);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void relu_forward(const T* x, T* y, int64_t n) {
  if (n <= 0) return;
  relu_forward_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(x, y, n);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void relu_backward(const T* y, const T* gy, T* gx, int64_t n) {
  if (n <= 0) return;
  relu_backward_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(y, gy, gx, n);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void gelu_forward(const T* x, T* y, int64_t n) {
  if (n <= 0) return;
  gelu_forward_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(x, y, n);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void gelu_backward(const T* x, const T* gy, T* gx, int64_t n) {
  if (n <= 0) return;
  gelu_backward_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(x, gy, gx, n);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void dropout_forward(const T* x, T* y, int64_t n, float p, uint64_t seed, uint64_t offset) {
  const T scale = math::dropout_scale<T>(p);  // checks p; the CPU's bits
  if (n <= 0) return;
  dropout_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(x, y, n, p, scale, seed, offset);
  KVC_CUDA_CHECK(cudaGetLastError());
}

// The same kernel: the adjoint of "keep and scale" is "keep and scale".
template <typename T>
void dropout_backward(const T* gy, T* gx, int64_t n, float p, uint64_t seed, uint64_t offset) {
  dropout_forward<T>(gy, gx, n, p, seed, offset);
}

KVC_ELEMENTWISE_INSTANTIATE(float)
KVC_ELEMENTWISE_INSTANTIATE(double)

}  // namespace kvc::kernels::cuda
