// Linear-algebra ops: matmul, mix (grouped linear) and conv1d, forward and backward via GEMM.
//
// Gradients are written straight into grad_buffer() with GEMM beta 0 (fresh buffer) or 1 (a
// gradient is already there), so no temporary and no extra add is launched; sums over a shared
// operand's batch (a weight used by every batch entry) run as successive GEMMs with beta 1.
#include <cstdint>
#include <vector>

#include "core/autograd.h"
#include "core/op_util.h"
#include "core/ops.h"
#include "kernels/conv1d.h"
#include "kernels/gemm.h"

namespace kvc {

namespace {

using kernels::GemmArgs;

// Runs g on `device`. With sum_outer, every outer batch entry writes the same C (stride 0):
// they run one after another, each adding onto the last (a strided-batched GEMM would race).
template <typename T>
void run_gemm(Device device, GemmArgs g, const T* a, const T* b, T* c, bool sum_outer = false) {
  if (!sum_outer || g.batch_outer <= 1) {
    KVC_LAUNCH(device, K::gemm<T>(g, a, b, c));
    return;
  }
  const int64_t outer = g.batch_outer;
  const double beta0 = g.beta;
  g.batch_outer = 1;
  for (int64_t p = 0; p < outer; ++p) {
    g.beta = p == 0 ? beta0 : 1.0;
    const T* ap = a + p * g.outer_stride_a;
    const T* bp = b + p * g.outer_stride_b;
    KVC_LAUNCH(device, K::gemm<T>(g, ap, bp, c));
  }
}

// The gradient buffer of t, zeroed when fresh: for ops whose gradient is an empty sum.
void zero_grad_contribution(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return;
  bool acc = false;
  Tensor g = grad_buffer(t, &acc);
  if (!acc) g.fill_(0.0);
}

Shape leading(const Shape& s, size_t drop) { return Shape(s.begin(), s.end() - drop); }

// One GEMM's operand: where it is, whether to transpose it, its row length.
struct Operand {
  const Tensor* t;
  bool trans;
  int64_t ld;
  int64_t stride;  // elements between batch entries (0: shared)
};

// C (batch, m, n) = op(A) @ op(B) (+ C when beta is 1), batch entries summed into one C when
// sum_batch. Every size must be positive.
void gemm_tensors(int64_t batch, int64_t m, int64_t n, int64_t k, const Operand& a,
                  const Operand& b, const Tensor& c, int64_t c_stride, double beta,
                  bool sum_batch) {
  GemmArgs g;
  g.trans_a = a.trans;
  g.trans_b = b.trans;
  g.m = m;
  g.n = n;
  g.k = k;
  g.lda = a.ld;
  g.ldb = b.ld;
  g.ldc = n;
  g.batch_outer = batch;
  g.outer_stride_a = a.stride;
  g.outer_stride_b = b.stride;
  g.outer_stride_c = sum_batch ? 0 : c_stride;
  g.beta = beta;
  KVC_DISPATCH_FLOAT(c.dtype(), "gemm", [&] {
    run_gemm<scalar_t>(c.device(), g, a.t->data<scalar_t>(), b.t->data<scalar_t>(),
                       c.data<scalar_t>(), sum_batch);
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// matmul

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const char* op = "matmul";
  detail::check_same_kind(op, a, b);
  KVC_CHECK(a.dim() >= 2 && b.dim() >= 2, op, ": inputs need at least 2 axes, got ", a.shape(),
            " and ", b.shape());
  const bool shared_b = b.dim() == 2;
  KVC_CHECK(shared_b || leading(a.shape(), 2) == leading(b.shape(), 2), op,
            ": leading (batch) axes differ between ", a.shape(), " and ", b.shape(),
            " (b must have the same leading axes or be 2-D)");
  const int64_t a_rows = a.size(-2), a_cols = a.size(-1);
  const int64_t b_rows = b.size(-2), b_cols = b.size(-1);
  const int64_t m = trans_a ? a_cols : a_rows, k = trans_a ? a_rows : a_cols;
  const int64_t kb = trans_b ? b_cols : b_rows, n = trans_b ? b_rows : b_cols;
  KVC_CHECK(k == kb, op, ": inner sizes differ: a ", a.shape(), trans_a ? " (transposed)" : "",
            " gives ", k, ", b ", b.shape(), trans_b ? " (transposed)" : "", " gives ", kb);

  Shape out_shape = leading(a.shape(), 2);
  out_shape.push_back(m);
  out_shape.push_back(n);
  const int64_t batch = numel_of(leading(a.shape(), 2));
  Tensor y = Tensor::empty(out_shape, a.options());
  const bool empty = batch == 0 || m == 0 || n == 0 || k == 0;

  // With one weight and untransposed a, the batch folds into the rows: a is (batch*m, k).
  const bool fold = shared_b && !trans_a;
  const int64_t nb = fold ? 1 : batch, gm = fold ? batch * m : m;
  const int64_t a_stride = a_rows * a_cols, b_stride = shared_b ? 0 : b_rows * b_cols;
  if (empty) {
    y.fill_(0.0);
  } else {
    gemm_tensors(nb, gm, n, k, {&a, trans_a, a_cols, a_stride}, {&b, trans_b, b_cols, b_stride}, y,
                 gm * n, 0.0, false);
  }

  Tape::current().record(op, {a, b}, y, [=](const Tensor& gy) {
    if (empty) {
      zero_grad_contribution(a);
      zero_grad_contribution(b);
      return;
    }
    const int64_t gy_stride = gm * n;
    if (a.requires_grad()) {
      bool acc = false;
      Tensor ga = grad_buffer(a, &acc);
      if (!trans_a) {  // ga (m, k) = gy (m, n) @ op(b)^T
        gemm_tensors(nb, gm, k, n, {&gy, false, n, gy_stride}, {&b, !trans_b, b_cols, b_stride}, ga,
                     gm * k, acc, false);
      } else {  // ga stored (k, m) = op(b) (k, n) @ gy^T (n, m)
        gemm_tensors(nb, k, gm, n, {&b, trans_b, b_cols, b_stride}, {&gy, true, n, gy_stride}, ga,
                     k * gm, acc, false);
      }
    }
    if (b.requires_grad()) {
      bool acc = false;
      Tensor gbuf = grad_buffer(b, &acc);
      // A shared b sums its gradient over the batch (folded into the contraction when fold).
      if (!trans_b) {  // gb (k, n) = op(a)^T (k, m) @ gy (m, n)
        gemm_tensors(nb, k, n, gm, {&a, !trans_a, a_cols, a_stride}, {&gy, false, n, gy_stride},
                     gbuf, k * n, acc, shared_b);
      } else {  // gb stored (n, k) = gy^T (n, m) @ op(a) (m, k)
        gemm_tensors(nb, n, k, gm, {&gy, true, n, gy_stride}, {&a, trans_a, a_cols, a_stride}, gbuf,
                     n * k, acc, shared_b);
      }
    }
  });
  return y;
}

// ---------------------------------------------------------------------------------------------
// mix: y[p, h, w, o] = sum_i x[p, h, w, i] W[h, i, o] + B[h, o], batched over p and heads.

namespace {

// The GEMM geometry of mix: outer batch p (leading axes), inner batch h (heads).
struct MixDims {
  int64_t p, h, w, in, out;
};

// Two-level batched GEMM over (p, h) for mix.
void mix_gemm(const MixDims& d, int64_t m, int64_t n, int64_t k, const Operand& a, int64_t a_inner,
              const Operand& b, int64_t b_inner, const Tensor& c, int64_t c_outer, int64_t c_inner,
              double beta, bool sum_outer) {
  GemmArgs g;
  g.trans_a = a.trans;
  g.trans_b = b.trans;
  g.m = m;
  g.n = n;
  g.k = k;
  g.lda = a.ld;
  g.ldb = b.ld;
  g.ldc = n;
  g.batch_outer = d.p;
  g.batch_inner = d.h;
  g.outer_stride_a = a.stride;
  g.outer_stride_b = b.stride;
  g.outer_stride_c = sum_outer ? 0 : c_outer;
  g.inner_stride_a = a_inner;
  g.inner_stride_b = b_inner;
  g.inner_stride_c = c_inner;
  g.beta = beta;
  KVC_DISPATCH_FLOAT(c.dtype(), "mix", [&] {
    run_gemm<scalar_t>(c.device(), g, a.t->data<scalar_t>(), b.t->data<scalar_t>(),
                       c.data<scalar_t>(), sum_outer);
  });
}

}  // namespace

Tensor mix(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const char* op = "mix";
  detail::check_defined(op, x, "input");
  detail::check_defined(op, weight, "weight");
  detail::check_same_kind(op, x, weight);
  KVC_CHECK(x.dim() >= 3 && weight.dim() == 3, op, ": input ", x.shape(),
            " must be (..., h, w, in) and weight ", weight.shape(), " (h, in, out)");
  const MixDims d{numel_of(leading(x.shape(), 3)), x.size(-3), x.size(-2), x.size(-1),
                  weight.size(2)};
  KVC_CHECK(weight.size(0) == d.h && weight.size(1) == d.in, op, ": input ", x.shape(),
            " (..., h, w, in) does not match weight ", weight.shape(), " (h, in, out)");
  if (bias.defined()) {
    detail::check_same_kind(op, x, bias);
    KVC_CHECK(bias.shape() == Shape({d.h, d.out}), op, ": bias ", bias.shape(),
              " does not match weight ", weight.shape(), " (expected (h, out))");
  }
  Shape out_shape = x.shape();
  out_shape.back() = d.out;
  Tensor y = Tensor::empty(out_shape, x.options());
  const bool empty = y.numel() == 0 || d.in == 0;
  // Strides in elements: x[p, h] is (w, in), y[p, h] is (w, out), W[h] is (in, out).
  const int64_t x_outer = d.h * d.w * d.in, x_inner = d.w * d.in;
  const int64_t y_outer = d.h * d.w * d.out, y_inner = d.w * d.out;
  const int64_t w_inner = d.in * d.out;
  // A column of ones turns the bias broadcast (forward) and its sum over w (backward) into
  // GEMMs with k == 1 and m == 1: one code path on every backend.
  Tensor ones = bias.defined() ? Tensor::ones({d.w}, x.options()) : Tensor();

  if (y.numel() > 0) {
    if (bias.defined()) {  // y[p, h] (w, out) = ones (w, 1) @ B[h] (1, out)
      mix_gemm(d, d.w, d.out, 1, {&ones, false, 1, 0}, 0, {&bias, false, d.out, 0}, d.out, y,
               y_outer, y_inner, 0.0, false);
    }
    if (d.in > 0) {  // y[p, h] (w, out) (+)= x[p, h] (w, in) @ W[h] (in, out)
      mix_gemm(d, d.w, d.out, d.in, {&x, false, d.in, x_outer}, x_inner, {&weight, false, d.out, 0},
               w_inner, y, y_outer, y_inner, bias.defined() ? 1.0 : 0.0, false);
    } else if (!bias.defined()) {
      y.fill_(0.0);
    }
  }

  std::vector<Tensor> inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  Tape::current().record(op, std::move(inputs), y, [=](const Tensor& gy) {
    if (y_outer == 0 || d.p == 0) {
      zero_grad_contribution(x);
      zero_grad_contribution(weight);
      zero_grad_contribution(bias);
      return;
    }
    if (x.requires_grad()) {
      if (empty) {
        zero_grad_contribution(x);
      } else {  // gx[p, h] (w, in) = gy[p, h] (w, out) @ W[h]^T (out, in)
        bool acc = false;
        Tensor gx = grad_buffer(x, &acc);
        mix_gemm(d, d.w, d.in, d.out, {&gy, false, d.out, y_outer}, y_inner,
                 {&weight, true, d.out, 0}, w_inner, gx, x_outer, x_inner, acc, false);
      }
    }
    if (weight.requires_grad()) {
      if (empty) {
        zero_grad_contribution(weight);
      } else {  // gW[h] (in, out) = sum_p x[p, h]^T (in, w) @ gy[p, h] (w, out)
        bool acc = false;
        Tensor gw = grad_buffer(weight, &acc);
        mix_gemm(d, d.in, d.out, d.w, {&x, true, d.in, x_outer}, x_inner,
                 {&gy, false, d.out, y_outer}, y_inner, gw, 0, w_inner, acc, true);
      }
    }
    if (bias.defined() && bias.requires_grad()) {
      // gB[h] (1, out) = sum_p ones (1, w) @ gy[p, h] (w, out)
      bool acc = false;
      Tensor gbias = grad_buffer(bias, &acc);
      mix_gemm(d, 1, d.out, d.w, {&ones, false, d.w, 0}, 0, {&gy, false, d.out, y_outer}, y_inner,
               gbias, 0, d.out, acc, true);
    }
  });
  return y;
}

// ---------------------------------------------------------------------------------------------
// conv1d

Tensor conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride,
              int64_t groups) {
  const char* op = "conv1d";
  detail::check_defined(op, x, "input");
  detail::check_defined(op, weight, "weight");
  detail::check_same_kind(op, x, weight);
  KVC_CHECK(x.dim() == 3 && weight.dim() == 3, op, ": input ", x.shape(),
            " must be (batch, c_in, length) and weight ", weight.shape(),
            " (c_out, c_in/groups, kernel)");
  KVC_CHECK(stride >= 1 && groups >= 1, op, ": stride ", stride, " and groups ", groups,
            " must be positive (input ", x.shape(), ", weight ", weight.shape(), ")");
  kernels::Conv1dShape s;
  s.batch = x.size(0);
  s.c_in = x.size(1);
  s.length = x.size(2);
  s.c_out = weight.size(0);
  s.kernel = weight.size(2);
  s.stride = stride;
  s.groups = groups;
  KVC_CHECK(s.c_in % groups == 0 && s.c_out % groups == 0 && weight.size(1) * groups == s.c_in, op,
            ": input ", x.shape(), " and weight ", weight.shape(), " do not fit groups ", groups,
            " (need c_in = weight.size(1) * groups and c_out divisible by groups)");
  KVC_CHECK(s.kernel >= 1 && s.length >= s.kernel, op, ": input ", x.shape(),
            " is shorter than the kernel of weight ", weight.shape());
  if (bias.defined()) {
    detail::check_same_kind(op, x, bias);
    KVC_CHECK(bias.shape() == Shape({s.c_out}), op, ": bias ", bias.shape(),
              " does not match weight ", weight.shape(), " (expected (c_out,))");
  }
  Tensor y = Tensor::empty({s.batch, s.c_out, s.l_out()}, x.options());
  KVC_DISPATCH_FLOAT(x.dtype(), op, [&] {
    const scalar_t* bp = bias.defined() ? bias.data<scalar_t>() : nullptr;
    KVC_LAUNCH(x.device(),
               K::conv1d_forward<scalar_t>(s, x.data<scalar_t>(), weight.data<scalar_t>(), bp,
                                           y.data<scalar_t>()));
  });

  std::vector<Tensor> inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  Tape::current().record(op, std::move(inputs), y, [=](const Tensor& gy) {
    // The kernel overwrites gx: write into x's gradient directly only when there is none yet.
    Tensor gx;
    bool gx_direct = false;
    if (x.requires_grad()) {
      if (!x.grad().defined()) {
        bool unused = false;
        gx = grad_buffer(x, &unused);
        gx_direct = true;
      } else {
        gx = Tensor::empty(x.shape(), x.options());
      }
    }
    // gw and gb share one accumulate flag: a fresh buffer next to an accumulating one starts
    // at zero so both can accumulate.
    Tensor gw, gbias;
    bool acc_w = false, acc_b = false;
    if (weight.requires_grad()) gw = grad_buffer(weight, &acc_w);
    if (bias.defined() && bias.requires_grad()) gbias = grad_buffer(bias, &acc_b);
    const bool accumulate = acc_w || acc_b;
    if (accumulate && gw.defined() && !acc_w) gw.fill_(0.0);
    if (accumulate && gbias.defined() && !acc_b) gbias.fill_(0.0);
    KVC_DISPATCH_FLOAT(gy.dtype(), op, [&] {
      auto ptr = [](const Tensor& t) { return t.defined() ? t.data<scalar_t>() : nullptr; };
      KVC_LAUNCH(gy.device(), K::conv1d_backward<scalar_t>(
                                  s, x.data<scalar_t>(), weight.data<scalar_t>(),
                                  gy.data<scalar_t>(), ptr(gx), ptr(gw), ptr(gbias), accumulate));
    });
    if (gx.defined() && !gx_direct) accumulate_grad(x, gx);
  });
  return y;
}

}  // namespace kvc
