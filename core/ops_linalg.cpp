// Linear-algebra ops: matmul and mix (grouped linear), forward and backward via GEMM.
//
// Gradients are written straight into grad_buffer() with GEMM beta 0 (fresh buffer) or 1 (a
// gradient is already there), so no temporary and no extra add is launched; sums over a shared
// operand's batch (a weight used by every batch entry) run as successive GEMMs with beta 1,
// except mix's weight gradient when its contraction is long next to its output (split-K into a
// temporary and a sum_to: see plan_weight_grad).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/autograd.h"
#include "core/op_util.h"
#include "core/ops.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/reduce.h"

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
  int64_t stride;      // elements between batch entries (0: shared)
  int64_t offset = 0;  // elements from t's start to the first entry
};

// The second level of a two-level batched GEMM (mix's heads): entries and per-operand strides.
struct InnerBatch {
  int64_t count = 1, stride_a = 0, stride_b = 0, stride_c = 0;
};

// C (batch, [inner,] m, n) = op(A) @ op(B) (+ C when beta is 1), outer batch entries summed into
// one C when sum_batch. Every size must be positive; `op` names the caller in dtype errors.
void gemm_tensors(int64_t batch, int64_t m, int64_t n, int64_t k, const Operand& a,
                  const Operand& b, const Tensor& c, int64_t c_stride, double beta, bool sum_batch,
                  const InnerBatch& inner = {}, const char* op = "gemm", int64_t c_offset = 0) {
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
  g.batch_inner = inner.count;
  g.outer_stride_a = a.stride;
  g.outer_stride_b = b.stride;
  g.outer_stride_c = sum_batch ? 0 : c_stride;
  g.inner_stride_a = inner.stride_a;
  g.inner_stride_b = inner.stride_b;
  g.inner_stride_c = inner.stride_c;
  g.beta = beta;
  KVC_DISPATCH_FLOAT(c.dtype(), op, [&] {
    run_gemm<scalar_t>(c.device(), g, a.t->data<scalar_t>() + a.offset,
                       b.t->data<scalar_t>() + b.offset, c.data<scalar_t>() + c_offset, sum_batch);
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
  gemm_tensors(d.p, m, n, k, a, b, c, c_outer, beta, sum_outer, {d.h, a_inner, b_inner, c_inner},
               "mix");
}

// The weight gradient gW[h] = sum_p x[p, h]^T @ gy[p, h] contracts over w, which is often long
// (8192) next to a small (in, out) output (64 x 32). Run directly, it is p launches of h GEMMs of
// a few output tiles each (beta 1 chains them), leaving most of a GPU idle. Split-K instead cuts
// w into chunks and makes every (p, h, chunk) its own entry of one batched GEMM into a temporary
// (p, h, chunks, in, out), which one sum_to then reduces over p and the chunks.
constexpr int64_t kTileEdge = 64;           // a rough cuBLAS output tile, for counting CTAs
constexpr int64_t kSplitTargetTiles = 512;  // about four 64x64 tiles per SM of an H100
constexpr int64_t kSplitMinChunk = 128;     // shorter contractions waste the GEMM's pipeline
constexpr int64_t kSplitMaxTemp = 1 << 23;  // elements in the temporary (32 MiB of float)

// How to cut the contraction: `full` chunks of `chunk` rows, then one `tail` chunk when
// tail > 0. direct: no temporary, the p launches of h GEMMs chained by beta 1.
struct KSplit {
  bool direct = true;
  int64_t full = 1, chunk = 0, tail = 0;
};

// The same plan on every backend, so CPU tests cover the GPU's path; on the CPU the temporary
// and its sum cost about S * out / w of reading x, small wherever the plan splits.
KSplit plan_weight_grad(const MixDims& d) {
  KSplit s;
  s.chunk = d.w;
  const int64_t tiles =
      ((d.in + kTileEdge - 1) / kTileEdge) * ((d.out + kTileEdge - 1) / kTileEdge);
  if (d.h * tiles >= kSplitTargetTiles) return s;  // each launch fills the GPU already
  const int64_t per_split = d.p * d.h * d.in * d.out;
  if (per_split > kSplitMaxTemp) return s;
  int64_t want = (kSplitTargetTiles + d.p * d.h * tiles - 1) / (d.p * d.h * tiles);
  want = std::min({want, d.w / kSplitMinChunk, kSplitMaxTemp / per_split});
  want = std::max<int64_t>(want, 1);
  if (want == 1 && d.p == 1) return s;  // one entry per head either way
  s.direct = false;
  // A count that divides w keeps every entry's stride uniform: one GEMM launch.
  for (int64_t c = want; c >= std::max<int64_t>(1, want / 2); --c) {
    if (d.w % c == 0) {
      s.full = c;
      s.chunk = d.w / c;
      return s;
    }
  }
  s.chunk = (d.w + want - 1) / want;
  s.full = d.w / s.chunk;
  s.tail = d.w - s.full * s.chunk;
  return s;
}

// gW (h, in, out) = sum_p x[p, h]^T @ gy[p, h] (+ gW when it holds a gradient already).
void mix_weight_grad(const MixDims& d, const Tensor& x, const Tensor& gy, const Tensor& weight) {
  const int64_t x_inner = d.w * d.in, y_inner = d.w * d.out, w_inner = d.in * d.out;
  if (d.p == 1 && d.w == 1) {  // one row a head (a shifted bias): gW[h] = x[h]^T gy[h], rank 1
    bool acc = false;
    Tensor gw = grad_buffer(weight, &acc);
    KVC_DISPATCH_FLOAT(x.dtype(), "mix", [&] {
      KVC_LAUNCH(x.device(),
                 K::outer<scalar_t>(x.data<scalar_t>(), gy.data<scalar_t>(), gw.data<scalar_t>(),
                                    d.h, d.in, d.out, acc ? scalar_t(1) : scalar_t(0)));
    });
    return;
  }
  const KSplit s = plan_weight_grad(d);
  if (s.direct) {
    bool acc = false;
    Tensor gw = grad_buffer(weight, &acc);
    mix_gemm(d, d.in, d.out, d.w, {&x, true, d.in, d.h * x_inner}, x_inner,
             {&gy, false, d.out, d.h * y_inner}, y_inner, gw, 0, w_inner, acc, true);
    return;
  }
  const int64_t slots = s.full + (s.tail > 0);
  Tensor part = Tensor::empty({d.p, d.h, slots, d.in, d.out}, x.options());
  // x[p, h] follows x[p, h - 1] (and x[p - 1, h - 1] precedes x[p, 0]): (p, h) is one axis.
  const int64_t ph = d.p * d.h;
  const Operand xa{&x, true, d.in, s.chunk * d.in}, ya{&gy, false, d.out, s.chunk * d.out};
  if (s.tail == 0) {  // chunks of all (p, h) in a row: one uniform batch of ph * full entries
    gemm_tensors(ph * s.full, d.in, d.out, s.chunk, xa, ya, part, w_inner, 0.0, false, {}, "mix");
  } else {  // outer: the chunk; inner: (p, h). Then the tail chunk of every (p, h).
    if (s.full > 0) {
      gemm_tensors(s.full, d.in, d.out, s.chunk, xa, ya, part, w_inner, 0.0, false,
                   {ph, x_inner, y_inner, slots * w_inner}, "mix");
    }
    const int64_t rows = s.full * s.chunk;
    gemm_tensors(ph, d.in, d.out, s.tail, {&x, true, d.in, x_inner, rows * d.in},
                 {&gy, false, d.out, y_inner, rows * d.out}, part, slots * w_inner, 0.0, false, {},
                 "mix", s.full * w_inner);
  }
  // Sum over p and the chunks: straight into a fresh gradient, else into a temporary to add.
  const bool fresh = !weight.grad().defined();
  bool unused = false;
  Tensor gw = fresh ? grad_buffer(weight, &unused) : detail::empty_like(weight);
  const int64_t in_shape[4] = {d.p, d.h, slots, w_inner}, out_shape[4] = {1, d.h, 1, w_inner};
  KVC_DISPATCH_FLOAT(x.dtype(), "mix", [&] {
    KVC_LAUNCH(x.device(), K::sum_to<scalar_t>(part.data<scalar_t>(), in_shape, out_shape, 4,
                                               gw.data<scalar_t>()));
  });
  if (!fresh) accumulate_grad(weight, gw);
}

// gB[h] (out) = sum over p and w of gy[p, h] (w, out): one reduction (it was a GEMM with a ones
// vector, m == 1 and the same long contraction as the weight gradient).
void mix_bias_grad(const MixDims& d, const Tensor& gy, const Tensor& bias) {
  const bool fresh = !bias.grad().defined();
  bool unused = false;
  Tensor gb = fresh ? grad_buffer(bias, &unused) : detail::empty_like(bias);
  const int64_t in_shape[4] = {d.p, d.h, d.w, d.out}, out_shape[4] = {1, d.h, 1, d.out};
  KVC_DISPATCH_FLOAT(gy.dtype(), "mix", [&] {
    KVC_LAUNCH(gy.device(), K::sum_to<scalar_t>(gy.data<scalar_t>(), in_shape, out_shape, 4,
                                                gb.data<scalar_t>()));
  });
  if (!fresh) accumulate_grad(bias, gb);
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
  // A column of ones turns the bias broadcast into a GEMM with k == 1: one code path on every
  // backend. (Its backward, a sum over p and w, is a reduction: see mix_bias_grad.)
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
      } else {
        mix_weight_grad(d, x, gy, weight);
      }
    }
    if (bias.defined() && bias.requires_grad()) {
      mix_bias_grad(d, gy, bias);
    }
  });
  return y;
}

}  // namespace kvc
