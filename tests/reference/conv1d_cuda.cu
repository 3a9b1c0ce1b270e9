// CUDA grouped Conv1d (padding 0): im2col into a GEMM-friendly layout, then strided-batched
// cuBLAS GEMMs with one batch entry per group; the backward reuses the layout for both grads.
#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/permute.h"
#include "kernels/reduce.h"
#include "tests/reference/conv1d_kernels.h"

namespace kvc::kernels::cuda {

namespace {

// Sizes shared by forward and backward. J = rows of one group's im2col matrix.
struct Dims {
  int64_t B, ci, co, L, K, S, G, cig, cog, Lo, J, cols;  // cols = B * Lo
  explicit Dims(const Conv1dShape& s)
      : B(s.batch),
        ci(s.c_in),
        co(s.c_out),
        L(s.length),
        K(s.kernel),
        S(s.stride),
        G(s.groups),
        cig(s.c_in / s.groups),
        cog(s.c_out / s.groups),
        Lo(s.l_out()),
        J(cig * s.kernel),
        cols(s.batch * s.l_out()) {}
  // A 1x1 convolution with stride 1 needs no im2col: x itself is the matrix, batch by batch.
  bool pointwise() const { return K == 1 && S == 1; }
};

// col (G, J, B * Lo): col[g, c * K + kk, b * Lo + l] = x[b, g * cig + c, l * S + kk]. Putting
// batch next to position makes (b, l) one GEMM dimension for the weight and input gradients.
template <typename T>
__global__ void im2col_kernel(const T* x, T* col, Dims d) {
  const int64_t n = d.G * d.J * d.cols;
  KVC_GRID_LOOP(idx, n) {
    const int64_t l = idx % d.Lo, b = (idx / d.Lo) % d.B;
    const int64_t j = (idx / d.cols) % d.J, g = idx / (d.cols * d.J);
    const int64_t c = j / d.K, kk = j % d.K;
    col[idx] = x[(b * d.ci + g * d.cig + c) * d.L + l * d.S + kk];
  }
}

// The adjoint of im2col as a gather: each input position sums the (l, kk) windows covering it,
// so overlapping windows need no atomics; positions no window covers get 0.
template <typename T>
__global__ void col2im_kernel(const T* gcol, T* gx, Dims d) {
  const int64_t n = d.B * d.ci * d.L;
  KVC_GRID_LOOP(idx, n) {
    const int64_t p = idx % d.L, ch = (idx / d.L) % d.ci, b = idx / (d.L * d.ci);
    const int64_t g = ch / d.cig, c = ch % d.cig;
    T acc = 0;
    for (int64_t kk = p % d.S; kk < d.K && kk <= p; kk += d.S) {
      const int64_t l = (p - kk) / d.S;
      if (l < d.Lo) acc += gcol[((g * d.J) + c * d.K + kk) * d.cols + b * d.Lo + l];
    }
    gx[idx] = acc;
  }
}

template <typename T>
__global__ void bias_fill_kernel(const T* bias, T* y, int64_t n, int64_t co, int64_t Lo) {
  KVC_GRID_LOOP(idx, n) y[idx] = bias[(idx / Lo) % co];
}

void check_shape(const Conv1dShape& s) {
  KVC_CHECK(s.groups > 0 && s.c_in % s.groups == 0 && s.c_out % s.groups == 0 && s.kernel > 0 &&
                s.stride > 0 && s.length >= s.kernel,
            "conv1d: bad shape: batch ", s.batch, ", c_in ", s.c_in, ", c_out ", s.c_out,
            ", length ", s.length, ", kernel ", s.kernel, ", stride ", s.stride, ", groups ",
            s.groups);
}

}  // namespace

template <typename T>
void conv1d_forward(const Conv1dShape& s, const T* x, const T* w, const T* bias, T* y) {
  check_shape(s);
  const Dims d(s);
  if (d.B == 0 || d.co == 0) return;
  const int64_t ny = d.B * d.co * d.Lo;
  if (bias) {  // the GEMM then adds onto the bias (beta = 1): no separate bias pass over y
    bias_fill_kernel<T><<<grid_for(ny), kThreads, 0, stream()>>>(bias, y, ny, d.co, d.Lo);
    KVC_CUDA_CHECK(cudaGetLastError());
  }
  Scratch col_buf(d.pointwise() ? 0 : static_cast<size_t>(d.G * d.J * d.cols) * sizeof(T));
  GemmArgs g;
  g.m = d.cog;
  g.n = d.Lo;
  g.k = d.J;
  g.lda = d.J;
  g.ldc = d.Lo;
  g.beta = bias ? 1.0 : 0.0;
  // Outer batch over b, inner over groups: y[b, g] = w[g] @ col[g][:, b, :].
  g.batch_outer = d.B;
  g.batch_inner = d.G;
  g.outer_stride_a = 0;
  g.inner_stride_a = d.cog * d.J;
  g.outer_stride_c = d.co * d.Lo;
  g.inner_stride_c = d.cog * d.Lo;
  const T* bmat = x;
  if (d.pointwise()) {
    g.ldb = d.L;
    g.outer_stride_b = d.ci * d.L;
    g.inner_stride_b = d.cig * d.L;
  } else {
    T* col = col_buf.as<T>();
    im2col_kernel<T><<<grid_for(d.G * d.J * d.cols), kThreads, 0, stream()>>>(x, col, d);
    KVC_CUDA_CHECK(cudaGetLastError());
    bmat = col;
    g.ldb = d.cols;
    g.outer_stride_b = d.Lo;
    g.inner_stride_b = d.J * d.cols;
  }
  gemm<T>(g, w, bmat, y);
}

template <typename T>
void conv1d_backward(const Conv1dShape& s, const T* x, const T* w, const T* gy, T* gx, T* gw, T* gb,
                     bool accumulate_params) {
  check_shape(s);
  const Dims d(s);
  if (!gx && !gw && !gb) return;
  const int64_t ny = d.B * d.co * d.Lo;
  if (ny == 0) return;

  // gyp (co, B, Lo): gy with batch moved next to position; gy itself when B == 1.
  Scratch gyp_buf(d.B == 1 ? 0 : static_cast<size_t>(ny) * sizeof(T));
  const T* gyp = gy;
  if (d.B > 1) {
    const int64_t shape[3] = {d.B, d.co, d.Lo};
    const int perm[3] = {1, 0, 2};
    permute<T>(gy, gyp_buf.as<T>(), shape, perm, 3);
    gyp = gyp_buf.as<T>();
  }

  if (gb) {
    if (accumulate_params) {
      Scratch tmp(static_cast<size_t>(d.co) * sizeof(T));
      sum_axis<T>(gyp, tmp.as<T>(), d.co, d.cols, 1, T(1));
      axpby<T>(gb, tmp.as<T>(), d.co, T(1), T(1));
    } else {
      sum_axis<T>(gyp, gb, d.co, d.cols, 1, T(1));
    }
  }

  if (gw) {
    const bool x_is_col = d.pointwise() && d.B == 1;
    Scratch col_buf(x_is_col ? 0 : static_cast<size_t>(d.G * d.J * d.cols) * sizeof(T));
    const T* col = x;
    if (!x_is_col) {
      im2col_kernel<T>
          <<<grid_for(d.G * d.J * d.cols), kThreads, 0, stream()>>>(x, col_buf.as<T>(), d);
      KVC_CUDA_CHECK(cudaGetLastError());
      col = col_buf.as<T>();
    }
    // gw[g] (cog, J) = gyp[g] (cog, B Lo) @ col[g]^T (B Lo, J).
    GemmArgs g;
    g.trans_b = true;
    g.m = d.cog;
    g.n = d.J;
    g.k = d.cols;
    g.lda = d.cols;
    g.ldb = d.cols;
    g.ldc = d.J;
    g.batch_inner = d.G;
    g.inner_stride_a = d.cog * d.cols;
    g.inner_stride_b = d.J * d.cols;
    g.inner_stride_c = d.cog * d.J;
    g.beta = accumulate_params ? 1.0 : 0.0;
    gemm<T>(g, gyp, col, gw);
  }

  if (gx) {
    // gcol[g] (J, B Lo) = w[g]^T (J, cog) @ gyp[g] (cog, B Lo); for a 1x1 stride-1 conv with
    // B == 1 that is gx itself.
    const bool direct = d.pointwise() && d.B == 1;
    Scratch gcol_buf(direct ? 0 : static_cast<size_t>(d.G * d.J * d.cols) * sizeof(T));
    T* gcol = direct ? gx : gcol_buf.as<T>();
    GemmArgs g;
    g.trans_a = true;
    g.m = d.J;
    g.n = d.cols;
    g.k = d.cog;
    g.lda = d.J;
    g.ldb = d.cols;
    g.ldc = d.cols;
    g.batch_inner = d.G;
    g.inner_stride_a = d.cog * d.J;
    g.inner_stride_b = d.cog * d.cols;
    g.inner_stride_c = d.J * d.cols;
    gemm<T>(g, w, gyp, gcol);
    if (!direct) {
      const int64_t nx = d.B * d.ci * d.L;
      col2im_kernel<T><<<grid_for(nx), kThreads, 0, stream()>>>(gcol, gx, d);
      KVC_CUDA_CHECK(cudaGetLastError());
    }
  }
}

KVC_CONV1D_INSTANTIATE(float)
KVC_CONV1D_INSTANTIATE(double)

}  // namespace kvc::kernels::cuda
