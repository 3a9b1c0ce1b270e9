// CPU grouped Conv1d (padding 0) forward and backward as batched GEMMs over an im2col buffer.
//
// The column buffer is laid out (batch, groups, l_out, c_in/groups * kernel): for output
// position t and input channel c it holds the window x[c, t*stride .. t*stride + kernel), which
// is contiguous in x, so the gather copies whole kernel-long runs. With kernel == stride (the
// compressor's case) the windows do not overlap: the buffer is a pure rearrangement of x and
// col2im in backward is a scatter without collisions. A pointwise conv (kernel 1, stride 1)
// needs no buffer at all: x[b, group] already is the (c_in/groups, length) GEMM operand.
#include <algorithm>
#include <cstring>
#include <memory>

#include "base/error.h"
#include "kernels/gemm.h"
#include "tests/reference/conv1d_kernels.h"

namespace kvc::kernels::cpu {

namespace {

struct Dims {
  int64_t lo, cig, cog, ck;  // output length, in/out channels per group, GEMM inner size
  bool pointwise;
};

Dims check_dims(const Conv1dShape& s) {
  KVC_CHECK(s.batch >= 0 && s.groups >= 1 && s.c_in >= 0 && s.c_out >= 0 && s.kernel >= 1 &&
                s.stride >= 1 && s.c_in % s.groups == 0 && s.c_out % s.groups == 0 &&
                s.length >= s.kernel,
            "conv1d: invalid shape batch ", s.batch, " c_in ", s.c_in, " c_out ", s.c_out,
            " length ", s.length, " kernel ", s.kernel, " stride ", s.stride, " groups ", s.groups);
  Dims d;
  d.lo = s.l_out();
  d.cig = s.c_in / s.groups;
  d.cog = s.c_out / s.groups;
  d.ck = d.cig * s.kernel;
  d.pointwise = s.kernel == 1 && s.stride == 1;
  return d;
}

// Calls f(x_offset, col_offset) for every window, batch by batch and channel by channel in
// order of output position: x[x_offset, x_offset + kernel) is col[col_offset, col_offset + kernel).
template <typename F>
void for_each_window(const Conv1dShape& s, const Dims& d, F f) {
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t ci = 0; ci < s.c_in; ++ci) {
      const int64_t g = ci / d.cig, c = ci % d.cig;
      const int64_t x_base = (b * s.c_in + ci) * s.length;
      const int64_t col_base = ((b * s.groups + g) * d.lo) * d.ck + c * s.kernel;
      for (int64_t t = 0; t < d.lo; ++t) f(x_base + t * s.stride, col_base + t * d.ck);
    }
  }
}

template <typename T>
std::unique_ptr<T[]> im2col(const Conv1dShape& s, const Dims& d, const T* x) {
  std::unique_ptr<T[]> col(new T[static_cast<size_t>(s.batch * s.groups * d.lo * d.ck)]);
  for_each_window(s, d, [&](int64_t xo, int64_t co) {
    std::memcpy(col.get() + co, x + xo, sizeof(T) * s.kernel);
  });
  return col;
}

// gx = the adjoint of im2col applied to gcol: overlapping windows (stride < kernel) add up,
// positions no window reads (gaps, the dropped tail) get zero.
template <typename T>
void col2im(const Conv1dShape& s, const Dims& d, const T* gcol, T* gx) {
  std::fill(gx, gx + s.batch * s.c_in * s.length, T(0));
  for_each_window(s, d, [&](int64_t xo, int64_t co) {
    for (int64_t k = 0; k < s.kernel; ++k) gx[xo + k] += gcol[co + k];
  });
}

}  // namespace

template <typename T>
void conv1d_forward(const Conv1dShape& s, const T* x, const T* w, const T* bias, T* y) {
  const Dims d = check_dims(s);
  // Start y at the bias (or zero) and let the GEMM add onto it: no second pass over y.
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t o = 0; o < s.c_out; ++o) {
      T* row = y + (b * s.c_out + o) * d.lo;
      std::fill(row, row + d.lo, bias ? bias[o] : T(0));
    }
  }
  std::unique_ptr<T[]> col;
  GemmArgs g;  // y[b, group] (cog, lo) += w[group] (cog, ck) @ col[b, group]^T
  g.m = d.cog;
  g.n = d.lo;
  g.k = d.ck;
  g.lda = d.ck;
  g.ldc = d.lo;
  g.batch_outer = s.batch;
  g.batch_inner = s.groups;
  g.inner_stride_a = d.cog * d.ck;
  g.outer_stride_c = s.c_out * d.lo;
  g.inner_stride_c = d.cog * d.lo;
  g.beta = 1.0;
  const T* bop = x;
  if (d.pointwise) {
    g.ldb = s.length;
    g.outer_stride_b = s.c_in * s.length;
    g.inner_stride_b = d.cig * s.length;
  } else {
    col = im2col(s, d, x);
    bop = col.get();
    g.trans_b = true;
    g.ldb = d.ck;
    g.outer_stride_b = s.groups * d.lo * d.ck;
    g.inner_stride_b = d.lo * d.ck;
  }
  gemm<T>(g, w, bop, y);
}

template <typename T>
void conv1d_backward(const Conv1dShape& s, const T* x, const T* w, const T* gy, T* gx, T* gw, T* gb,
                     bool accumulate_params) {
  const Dims d = check_dims(s);
  if (gb) {
    for (int64_t o = 0; o < s.c_out; ++o) {
      T acc = 0;
      for (int64_t b = 0; b < s.batch; ++b) {
        const T* row = gy + (b * s.c_out + o) * d.lo;
        for (int64_t t = 0; t < d.lo; ++t) acc += row[t];
      }
      gb[o] = accumulate_params ? gb[o] + acc : acc;
    }
  }
  if (!gw && !gx) return;
  std::unique_ptr<T[]> col;
  if (!d.pointwise) {
    // gw reads the windows; gx alone only needs the buffer as scratch for gcol.
    col = gw ? im2col(s, d, x)
             : std::unique_ptr<T[]>(new T[static_cast<size_t>(s.batch * s.groups * d.lo * d.ck)]);
  }

  if (gw) {
    if (s.batch == 0 && !accumulate_params) std::fill(gw, gw + s.c_out * d.ck, T(0));
    // gw[group] (cog, ck) += gy[b, group] (cog, lo) @ col[b, group] (lo, ck), summed over b
    // one batch entry at a time: entries that share C must not run concurrently.
    GemmArgs g;
    g.m = d.cog;
    g.n = d.ck;
    g.k = d.lo;
    g.lda = d.lo;
    g.ldc = d.ck;
    g.batch_inner = s.groups;
    g.inner_stride_a = d.cog * d.lo;
    g.inner_stride_c = d.cog * d.ck;
    for (int64_t b = 0; b < s.batch; ++b) {
      g.beta = (b == 0 && !accumulate_params) ? 0.0 : 1.0;
      const T* a = gy + b * s.c_out * d.lo;
      if (d.pointwise) {  // col[b, group] is x[b, group]^T
        g.trans_b = true;
        g.ldb = s.length;
        g.inner_stride_b = d.cig * s.length;
        gemm<T>(g, a, x + b * s.c_in * s.length, gw);
      } else {
        g.ldb = d.ck;
        g.inner_stride_b = d.lo * d.ck;
        gemm<T>(g, a, col.get() + b * s.groups * d.lo * d.ck, gw);
      }
    }
  }

  if (gx) {
    GemmArgs g;
    g.batch_outer = s.batch;
    g.batch_inner = s.groups;
    g.trans_a = true;
    if (d.pointwise) {
      // gx[b, group] (cig, length) = w[group]^T (cig, cog) @ gy[b, group] (cog, length)
      g.m = d.cig;
      g.n = d.lo;
      g.k = d.cog;
      g.lda = d.ck;
      g.ldb = d.lo;
      g.ldc = s.length;
      g.inner_stride_a = d.cog * d.ck;
      g.outer_stride_b = s.c_out * d.lo;
      g.inner_stride_b = d.cog * d.lo;
      g.outer_stride_c = s.c_in * s.length;
      g.inner_stride_c = d.cig * s.length;
      gemm<T>(g, w, gy, gx);
    } else {
      // gcol[b, group] (lo, ck) = gy[b, group]^T (lo, cog) @ w[group] (cog, ck), into col's
      // buffer (gw is done with it), then scattered back onto x's positions.
      g.m = d.lo;
      g.n = d.ck;
      g.k = d.cog;
      g.lda = d.lo;
      g.ldb = d.ck;
      g.ldc = d.ck;
      g.outer_stride_a = s.c_out * d.lo;
      g.inner_stride_a = d.cog * d.lo;
      g.inner_stride_b = d.cog * d.ck;
      g.outer_stride_c = s.groups * d.lo * d.ck;
      g.inner_stride_c = d.lo * d.ck;
      gemm<T>(g, gy, w, col.get());
      col2im(s, d, col.get(), gx);
    }
  }
}

KVC_CONV1D_INSTANTIATE(float)
KVC_CONV1D_INSTANTIATE(double)

}  // namespace kvc::kernels::cpu
