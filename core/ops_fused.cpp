// Fused ops: linear with its bias in the GEMM, scaled-dot attention, softmax-pool, the block
// split with positions, the attention pools' whole layer and the MLP kinds' two layers, each
// one pass where the composition of core ops takes several.
//
// Every op keeps its reference composition and runs it when a size is zero: nothing is gained
// there, and the composition already defines the empty sums, so the two cannot disagree.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/autograd.h"
#include "core/op_util.h"
#include "core/ops.h"
#include "kernels/attention_backward.h"
#include "kernels/attention_pool.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/mlp.h"
#include "kernels/permute.h"
#include "kernels/precision.h"
#include "kernels/reduce.h"
#include "kernels/softmax.h"
#include "kernels/softmax_pool.h"
#include "kernels/window.h"

namespace kvc {

namespace {

// One GEMM operand: the tensor, whether it is transposed, elements between batch entries.
struct Operand {
  const Tensor* t;
  bool trans;
  int64_t stride;
};

// C[p] (m, n) = alpha op(A[p]) op(B[p]) + beta C[p] for p < batch, every matrix dense and
// row-major (leading dimensions follow from the shapes). No batch entries share a C here, so
// one strided-batched call is race-free.
void gemm(int64_t batch, int64_t m, int64_t n, int64_t k, const Operand& a, const Operand& b,
          const Tensor& c, int64_t c_stride, double alpha, double beta) {
  kernels::GemmArgs g;
  g.trans_a = a.trans;
  g.trans_b = b.trans;
  g.m = m;
  g.n = n;
  g.k = k;
  g.lda = a.trans ? m : k;
  g.ldb = b.trans ? k : n;
  g.ldc = n;
  g.batch_outer = batch;
  g.outer_stride_a = a.stride;
  g.outer_stride_b = b.stride;
  g.outer_stride_c = c_stride;
  g.alpha = alpha;
  g.beta = beta;
  KVC_DISPATCH_FLOAT(c.dtype(), "gemm", [&] {
    KVC_LAUNCH(c.device(), K::gemm<scalar_t>(g, a.t->data<scalar_t>(), b.t->data<scalar_t>(),
                                             c.data<scalar_t>()));
  });
}

Shape with_last_two(const Shape& s, int64_t rows, int64_t cols) {
  Shape out(s.begin(), s.end() - 2);
  out.push_back(rows);
  out.push_back(cols);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// linear: y = x W^T + b. Reference: add(matmul(x, W, false, true), b), whose broadcast add is a
// second pass over y forward and a generic sum_to backward; here the bias is a k == 1 GEMM
// (ones (rows, 1) @ b (1, out)) that the main GEMM adds onto, and its gradient a m == 1 GEMM.

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const char* op = "linear";
  detail::check_defined(op, x, "input");
  detail::check_defined(op, weight, "weight");
  detail::check_same_kind(op, x, weight);
  KVC_CHECK(x.dim() >= 1 && weight.dim() == 2 && x.size(-1) == weight.size(1), op, ": input ",
            x.shape(), " (..., in) does not match weight ", weight.shape(), " (out, in)");
  const int64_t out = weight.size(0), in = weight.size(1);
  if (bias.defined()) {
    detail::check_same_kind(op, x, bias);
    KVC_CHECK(bias.shape() == Shape({out}), op, ": bias ", bias.shape(), " does not match weight ",
              weight.shape(), " (expected (out,))");
  }
  const int64_t rows = numel_of(Shape(x.shape().begin(), x.shape().end() - 1));
  Shape out_shape = x.shape();
  out_shape.back() = out;
  if (rows == 0 || in == 0 || out == 0) {
    Tensor y = matmul(reshape(x, {rows, in}), weight, false, /*trans_b=*/true);
    return reshape(bias.defined() ? add(y, bias) : y, out_shape);
  }
  Tensor y = Tensor::empty(out_shape, x.options());
  const Tensor ones = bias.defined() ? Tensor::ones({rows}, x.options()) : Tensor();
  if (bias.defined()) gemm(1, rows, out, 1, {&ones, false, 0}, {&bias, false, 0}, y, 0, 1.0, 0.0);
  gemm(1, rows, out, in, {&x, false, 0}, {&weight, true, 0}, y, 0, 1.0, bias.defined() ? 1.0 : 0.0);

  std::vector<Tensor> inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  Tape::current().record(op, std::move(inputs), y, [=](const Tensor& gy) {
    bool acc = false;
    if (x.requires_grad()) {  // gx (rows, in) = gy (rows, out) @ W (out, in)
      Tensor gx = grad_buffer(x, &acc);
      gemm(1, rows, in, out, {&gy, false, 0}, {&weight, false, 0}, gx, 0, 1.0, acc);
    }
    if (weight.requires_grad()) {  // gW (out, in) = gy^T (out, rows) @ x (rows, in)
      Tensor gw = grad_buffer(weight, &acc);
      gemm(1, out, in, rows, {&gy, true, 0}, {&x, false, 0}, gw, 0, 1.0, acc);
    }
    if (bias.defined() && bias.requires_grad()) {  // gb (1, out) = ones (1, rows) @ gy
      Tensor gb = grad_buffer(bias, &acc);
      gemm(1, 1, out, rows, {&ones, false, 0}, {&gy, false, 0}, gb, 0, 1.0, acc);
    }
  });
  return y;
}

// ---------------------------------------------------------------------------------------------
// scaled_dot_attention: softmax(alpha q k^T) v. Reference (SPEC section 4):
// matmul(softmax(scale(matmul(q, k, false, true), alpha), -1), v), which writes the (m, s)
// scores three times (GEMM, scale, softmax) and keeps two of them for backward. Here alpha is
// the GEMM's, the softmax runs in place, and backward reuses one (m, s) buffer for dP and dS. On
// CUDA in bf16, queries without grad (the attention over compressed blocks) take the flash pair
// instead (flash_attention_kv): no (m, s) buffer at all. Elsewhere in bf16, P V reads the
// softmax's bf16 copy of P.

namespace {

// softmax(alpha q k^T) v on CUDA bf16 tensor cores where the queries need no gradient and the
// sizes fit (kernels/attention_backward.h): a flash forward that keeps each row's log-sum-exp,
// and one pass for the K and V gradients that recomputes the probabilities from it. Undefined
// where it does not apply.
Tensor flash_attention_kv(const Tensor& q, const Tensor& k, const Tensor& v, double alpha,
                          const VisibleCounts& visible) {
#ifdef KVC_WITH_CUDA
  if (!q.device().is_cuda() || q.dtype() != DType::f32) return {};
  if (kernels::cuda::math_precision() != kernels::MathPrecision::bf16) return {};
  if (grad_enabled() && q.requires_grad()) return {};
  const int64_t m = q.size(-2), s = k.size(-2), d = q.size(-1);
  if (!kernels::cuda::attention_kv_fused_fits(d, v.size(-1))) return {};
  for (const Tensor* t : {&q, &k, &v}) {  // the kernels read 16-byte pieces
    if (reinterpret_cast<uintptr_t>(t->data<float>()) % 16 != 0) return {};
  }
  const int64_t batch = q.numel() / (m * d);
  Tensor y = Tensor::empty(q.shape(), q.options());
  const Tensor lse = Tensor::empty({batch, m}, q.options());
  kernels::cuda::attention_forward_lse(q.data<float>(), k.data<float>(), v.data<float>(),
                                       y.data<float>(), lse.data<float>(), batch, m, s, d, alpha,
                                       visible.data());
  const Tensor out = y.detach();  // for rowsum(gy y)
  Tape::current().record("attention", {q, k, v}, y, [=](const Tensor& gy) {
    kernels::cuda::AttentionBackwardArgs args;
    args.q = q.data<float>();
    args.k = k.data<float>();
    args.v = v.data<float>();
    args.lse = lse.data<float>();
    args.y = out.data<float>();
    args.gy = gy.data<float>();
    args.visible = visible.data();
    args.batch = batch;
    args.m = m;
    args.s = s;
    args.d = d;
    args.alpha = alpha;
    bool acc_k = false, acc_v = false;
    const Tensor gk = k.requires_grad() ? grad_buffer(k, &acc_k) : Tensor();
    const Tensor gv = v.requires_grad() ? grad_buffer(v, &acc_v) : Tensor();
    kernels::cuda::attention_backward_kv(args, gk.defined() ? gk.data<float>() : nullptr,
                                         gv.defined() ? gv.data<float>() : nullptr, acc_k, acc_v);
  });
  return y;
#else
  (void)q, (void)k, (void)v, (void)alpha, (void)visible;
  return {};
#endif
}

}  // namespace

Tensor scaled_dot_attention(const Tensor& q, const Tensor& k, const Tensor& v, double alpha,
                            const VisibleCounts& visible) {
  const char* op = "attention";
  detail::check_same_kind(op, q, k);
  detail::check_same_kind(op, q, v);
  const Shape lead(q.shape().begin(), q.shape().end() - std::min<int64_t>(q.dim(), 2));
  KVC_CHECK(q.dim() >= 2 && k.dim() == q.dim() && v.dim() == q.dim() &&
                Shape(k.shape().begin(), k.shape().end() - 2) == lead &&
                Shape(v.shape().begin(), v.shape().end() - 2) == lead && k.size(-1) == q.size(-1) &&
                v.size(-2) == k.size(-2),
            op, ": q ", q.shape(), " (..., m, d), k ", k.shape(), " (..., s, d) and v ", v.shape(),
            " (..., s, e) do not fit");
  const int64_t batch = numel_of(lead), m = q.size(-2), d = q.size(-1);
  const int64_t s = k.size(-2), e = v.size(-1);
  if (visible.defined()) {
    KVC_CHECK(visible.rows() == batch * m && visible.device() == q.device(), op, ": ",
              visible.rows(), " visible counts on ", visible.device().name(), " for q ", q.shape(),
              " on ", q.device().name());
  }
  if (batch == 0 || m == 0 || d == 0 || s == 0 || e == 0) {  // nothing to mask
    return matmul(softmax(scale(matmul(q, k, false, /*trans_b=*/true), alpha), -1), v);
  }
  if (Tensor y = flash_attention_kv(q, k, v, alpha, visible); y.defined()) return y;
  const Shape p_shape = with_last_two(q.shape(), m, s);
  Tensor p = Tensor::empty(p_shape, q.options());  // scores, then probabilities in place
  gemm(batch, m, s, d, {&q, false, m * d}, {&k, true, s * d}, p, m * s, alpha, 0.0);
  // bf16 on CUDA: the softmax writes P's bf16 copy on the way and the P V product takes it (bf16
  // tensor cores without a rounding pass; float32 P stays for the backward).
  std::vector<Tensor> share;
#ifdef KVC_WITH_CUDA
  if (p.device().is_cuda() && kernels::cuda::math_precision() == kernels::MathPrecision::bf16) {
    share.push_back(p);
  }
#endif
  const ShareBf16Copies share_p(share);
  KVC_DISPATCH_FLOAT(p.dtype(), op, [&] {
    if (visible.defined()) {  // masked keys get probability 0: backward needs no mask
      KVC_LAUNCH(p.device(),
                 K::masked_softmax_forward<scalar_t>(p.data<scalar_t>(), p.data<scalar_t>(),
                                                     batch * m, s, visible.data()));
    } else {
      KVC_LAUNCH(p.device(), K::softmax_forward<scalar_t>(p.data<scalar_t>(), p.data<scalar_t>(),
                                                          batch * m, s, 1));
    }
  });
  Tensor y = Tensor::empty(with_last_two(q.shape(), m, e), q.options());
  gemm(batch, m, e, s, {&p, false, m * s}, {&v, false, s * e}, y, m * e, 1.0, 0.0);

  // Without grad the closure, and with it the probabilities, are dropped here.
  Tape::current().record(op, {q, k, v}, y, [=](const Tensor& gy) {
    bool acc = false;
    // dP = gy v^T, then dS in place. Taken before v's gradient, the larger buffer first: a
    // caching allocator then finds it room in what the forward freed (P's size), where a
    // smaller buffer taken first may split the only free block it would have fit.
    const bool scores_grad = q.requires_grad() || k.requires_grad();
    Tensor ds;
    if (scores_grad) {
      ds = Tensor::empty(p_shape, p.options());
      gemm(batch, m, s, e, {&gy, false, m * e}, {&v, true, s * e}, ds, m * s, 1.0, 0.0);
    }
    if (v.requires_grad()) {  // gv (s, e) = P^T (s, m) @ gy (m, e)
      Tensor gv = grad_buffer(v, &acc);
      gemm(batch, s, e, m, {&p, true, m * s}, {&gy, false, m * e}, gv, s * e, 1.0, acc);
    }
    if (!scores_grad) return;
    KVC_DISPATCH_FLOAT(p.dtype(), op, [&] {
      KVC_LAUNCH(p.device(), K::softmax_backward<scalar_t>(p.data<scalar_t>(), ds.data<scalar_t>(),
                                                           ds.data<scalar_t>(), batch * m, s, 1));
    });
    if (q.requires_grad()) {  // gq (m, d) = alpha dS (m, s) @ k (s, d)
      Tensor gq = grad_buffer(q, &acc);
      gemm(batch, m, d, s, {&ds, false, m * s}, {&k, false, s * d}, gq, m * d, alpha, acc);
    }
    if (k.requires_grad()) {  // gk (s, d) = alpha dS^T (s, m) @ q (m, d)
      Tensor gk = grad_buffer(k, &acc);
      gemm(batch, s, d, m, {&ds, true, m * s}, {&q, false, m * d}, gk, s * d, alpha, acc);
    }
  });
  return y;
}

// ---------------------------------------------------------------------------------------------
// softmax_pool: sum over axis -2 of x * softmax over axis -2 of (alpha * logits). Reference
// (SPEC section 3's attention pools): sum(mul(x, softmax(scale(logits, alpha), -2)), -2), four
// full-size tensors forward and about six backward; here one read of x and logits forward and
// one read plus the two gradients backward. On CUDA the weights are recomputed in backward (the
// pass is bound by memory); on the CPU exp is the cost, so the forward keeps them.

Tensor softmax_pool(const Tensor& x, const Tensor& logits, double alpha) {
  const char* op = "softmax_pool";
  detail::check_same_kind(op, x, logits);
  KVC_CHECK(x.dim() >= 2 && logits.shape() == x.shape(), op, ": input ", x.shape(),
            " (..., n, d) and logits ", logits.shape(), " must have one shape of 2 or more axes");
  const int64_t axis = x.dim() - 2;
  const detail::AxisSplit sp = detail::split_at_axis(x.shape(), axis);
  if (x.numel() == 0) return sum(mul(x, softmax(scale(logits, alpha), axis)), axis);
  Shape out_shape = x.shape();
  out_shape.erase(out_shape.begin() + axis);
  Tensor y = Tensor::empty(out_shape, x.options());
  const bool keep =
      x.device().is_cpu() && grad_enabled() && (x.requires_grad() || logits.requires_grad());
  const Tensor weights = keep ? detail::empty_like(x) : Tensor();
  KVC_DISPATCH_FLOAT(x.dtype(), op, [&] {
    scalar_t* wp = keep ? weights.data<scalar_t>() : nullptr;
    KVC_LAUNCH(x.device(), K::softmax_pool_forward<scalar_t>(
                               x.data<scalar_t>(), logits.data<scalar_t>(), y.data<scalar_t>(), wp,
                               sp.outer, sp.n, sp.inner, static_cast<scalar_t>(alpha)));
  });
  Tape::current().record(op, {x, logits}, y, [=](const Tensor& gy) {
    bool acc_x = false, acc_l = false;
    const Tensor gx = x.requires_grad() ? grad_buffer(x, &acc_x) : Tensor();
    const Tensor gl = logits.requires_grad() ? grad_buffer(logits, &acc_l) : Tensor();
    KVC_DISPATCH_FLOAT(gy.dtype(), op, [&] {
      auto ptr = [](const Tensor& t) { return t.defined() ? t.data<scalar_t>() : nullptr; };
      KVC_LAUNCH(gy.device(), K::softmax_pool_backward<scalar_t>(
                                  x.data<scalar_t>(), logits.data<scalar_t>(), ptr(weights),
                                  gy.data<scalar_t>(), ptr(gx), ptr(gl), sp.outer, sp.n, sp.inner,
                                  static_cast<scalar_t>(alpha), acc_x, acc_l));
    });
  });
  return y;
}

// ---------------------------------------------------------------------------------------------
// add_block_positions: split_blocks(seq, n) + positions (SPEC sections 2 and 4). Reference:
// add(reshape(narrow(seq, 2, 0, w*n), (b, h, w, n, d)), reshape(positions, (1, h, 1, n, d))):
// the narrow is a copy whenever the tail is dropped, and backward copies the sequence gradient
// once in add and once more in reshape. Here the add reads the kept prefix in place (strided
// broadcast indexing) and backward writes the sequence gradient once.

Tensor add_block_positions(const Tensor& seq, const Tensor& positions, int64_t block,
                           int64_t stride) {
  const char* op = "split_blocks";
  detail::check_same_kind(op, seq, positions);
  KVC_CHECK(seq.dim() == 4, op, ": input ", seq.shape(), " must be (b, h, seq, d)");
  KVC_CHECK(block > 0, op, ": block ", block, " must be positive");
  if (stride == 0) stride = block;
  KVC_CHECK(stride >= 1 && stride <= block, op, ": stride ", stride, " must be in [1, block ",
            block, "]");
  const int64_t b = seq.size(0), h = seq.size(1), s = seq.size(2), d = seq.size(3);
  KVC_CHECK(s >= block, op, ": seq ", s, " of input ", seq.shape(),
            " is shorter than one block of ", block);
  KVC_CHECK(positions.shape() == Shape({h, block, d}), op, ": positions ", positions.shape(),
            " do not match input ", seq.shape(), " split into blocks of ", block, " (expected (", h,
            ", ", block, ", ", d, "))");
  const int64_t w = (s - block) / stride + 1, nd = block * d;
  Tensor out = Tensor::empty({b, h, w, block, d}, seq.options());
  if (out.numel() > 0) {
    // Axes (b, h, w, n*d): the sequence steps over its whole length per head, so the dropped
    // tail is skipped, and by stride tokens per window; the positions repeat over b and w.
    kernels::BroadcastIndex idx;
    idx.ndim = 4;
    const int64_t shape[4] = {b, h, w, nd}, seq_stride[4] = {h * s * d, s * d, stride * d, 1},
                  pos_stride[4] = {0, nd, 0, 1};
    for (int i = 0; i < 4; ++i) {
      idx.shape[i] = shape[i];
      idx.a_stride[i] = seq_stride[i];
      idx.b_stride[i] = pos_stride[i];
    }
    const int64_t n = out.numel();
    KVC_DISPATCH_FLOAT(seq.dtype(), op, [&] {
      KVC_LAUNCH(seq.device(),
                 K::binary<scalar_t>(kernels::BinaryOp::add, seq.data<scalar_t>(),
                                     positions.data<scalar_t>(), out.data<scalar_t>(), n, idx));
    });
  }
  Tape::current().record(op, {seq, positions}, out, [=](const Tensor& g) {
    if (seq.requires_grad()) {  // g, with zeros for the dropped tail, written once
      const bool fresh = !seq.grad().defined();
      bool unused = false;
      const Tensor gs = fresh ? grad_buffer(seq, &unused) : detail::empty_like(seq);
      KVC_DISPATCH_FLOAT(g.dtype(), op, [&] {
        if (stride == block) {  // disjoint blocks: a copy
          KVC_LAUNCH(g.device(),
                     K::narrow_backward<scalar_t>(g.data<scalar_t>(), gs.data<scalar_t>(), b * h, s,
                                                  d, 0, w * block));
        } else {
          KVC_LAUNCH(g.device(),
                     K::window_backward<scalar_t>(g.data<scalar_t>(), gs.data<scalar_t>(), b * h, s,
                                                  d, w, block, stride));
        }
      });
      if (!fresh) accumulate_grad(seq, gs);
    }
    if (positions.requires_grad()) {  // the sum over b and w
      Tensor gp = detail::empty_like(positions);
      const int64_t in_shape[5] = {b, h, w, block, d}, out_shape[5] = {1, h, 1, block, d};
      KVC_DISPATCH_FLOAT(g.dtype(), op, [&] {
        KVC_LAUNCH(g.device(), K::sum_to<scalar_t>(g.data<scalar_t>(), in_shape, out_shape, 5,
                                                   gp.data<scalar_t>()));
      });
      accumulate_grad(positions, gp);
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// attention_pool: softmax_pool(x, linear(x, W), alpha) over x = add_block_positions(seq, ...).
// The composition writes the blocks and the logits (each the size of the sequence) forward and
// twice that backward; the fused CUDA pass reads the sequence once each way and recomputes the
// logits in backward. Only positions and W get gradients there: a sequence that needs one (or
// float64, the CPU, sizes without a kernel) takes the composition.

#ifdef KVC_WITH_CUDA
namespace {

// Whether the fused CUDA pass takes these inputs.
bool fused_attention_pool_fits(const Tensor& seq, const Tensor& positions, const Tensor& weight,
                               int64_t block) {
  if (!seq.device().is_cuda() || seq.dtype() != DType::f32 || seq.numel() == 0) return false;
  if (grad_enabled() && seq.requires_grad()) return false;
  const auto aligned = [](const Tensor& t) {
    return reinterpret_cast<uintptr_t>(t.data<float>()) % 16 == 0;
  };
  return kernels::cuda::attention_pool_fits(block, seq.size(3)) && aligned(seq) &&
         aligned(positions) && aligned(weight);
}

Tensor fused_attention_pool(const Tensor& seq, const Tensor& positions, const Tensor& weight,
                            int64_t block, int64_t stride, double alpha) {
  if (stride == 0) stride = block;
  KVC_CHECK(stride >= 1 && stride <= block && seq.size(2) >= block &&
                positions.shape() == Shape({seq.size(1), block, seq.size(3)}),
            "attention_pool: input ", seq.shape(), ", positions ", positions.shape(), ", block ",
            block, " and stride ", stride,
            " do not fit (positions (h, block, d), stride in [1, block], seq >= block)");
  kernels::cuda::AttentionPoolArgs args;
  args.seq = seq.data<float>();
  args.positions = positions.data<float>();
  args.weight = weight.data<float>();
  args.b = seq.size(0);
  args.h = seq.size(1);
  args.s = seq.size(2);
  args.n = block;
  args.d = seq.size(3);
  args.stride = stride;
  args.alpha = static_cast<float>(alpha);
  const int64_t w = (args.s - block) / stride + 1;
  Tensor y = Tensor::empty({args.b, args.h, w, args.d}, seq.options());
  kernels::cuda::attention_pool_forward(args, y.data<float>());
  Tape::current().record("attention_pool", {seq, positions, weight}, y, [=](const Tensor& gy) {
    bool acc_p = false, acc_w = false;
    const Tensor gp = positions.requires_grad() ? grad_buffer(positions, &acc_p) : Tensor();
    const Tensor gw = weight.requires_grad() ? grad_buffer(weight, &acc_w) : Tensor();
    kernels::cuda::attention_pool_backward(args, gy.data<float>(),
                                           gp.defined() ? gp.data<float>() : nullptr,
                                           gw.defined() ? gw.data<float>() : nullptr, acc_p, acc_w);
  });
  return y;
}

}  // namespace
#endif

Tensor attention_pool(const Tensor& seq, const Tensor& positions, const Tensor& weight,
                      int64_t block, int64_t stride, double alpha) {
  const char* op = "attention_pool";
  detail::check_same_kind(op, seq, positions);
  detail::check_same_kind(op, seq, weight);
  KVC_CHECK(seq.dim() == 4 && weight.dim() == 2 && weight.size(0) == seq.size(3) &&
                weight.size(1) == seq.size(3),
            op, ": input ", seq.shape(), " (b, h, s, d) and weight ", weight.shape(),
            " (d, d) do not fit");
#ifdef KVC_WITH_CUDA
  if (fused_attention_pool_fits(seq, positions, weight, block)) {
    return fused_attention_pool(seq, positions, weight, block, stride, alpha);
  }
#endif
  const Tensor x = add_block_positions(seq, positions, block, stride);
  return softmax_pool(x, linear(x, weight, Tensor()), alpha);
}

// ---------------------------------------------------------------------------------------------
// two_layer_mlp: act(x W1 + b1) W2 + b2 per head. The composition writes x W1 + b1 and its
// activation (each (b, h, w, hidden), float32) forward and their gradients backward, each pass
// its own kernel; on CUDA cuBLASLt adds the bias and applies ReLU inside the product and the
// hidden activations stay in the products' operand type (bfloat16 under bf16: no conversion
// pass before the products that read them, half the memory) (kernels/mlp.h).

namespace {

struct MlpSizes {
  int64_t b = 0, h = 0, w = 0, in = 0, hidden = 0, out = 0;
  bool shared = false;  // F.linear's weights, one pair for every head
};

MlpSizes check_two_layer_mlp(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                             const Tensor& b2, const Tensor& shift, const MlpResidual& residual) {
  const char* op = "two_layer_mlp";
  for (const Tensor* t : {&w1, &b1, &w2, &b2}) detail::check_same_kind(op, x, *t);
  if (shift.defined()) detail::check_same_kind(op, x, shift);
  if (residual.block != 0) {
    KVC_CHECK(residual.scale.defined(), op, ": a residual of block ", residual.block,
              " without its scale");
    detail::check_same_kind(op, x, residual.scale);
  }
  MlpSizes s;
  s.shared = w1.dim() == 2;
  KVC_CHECK(x.dim() == 4, op, ": input ", x.shape(), " is not (b, h, w, in)");
  s.b = x.size(0), s.h = x.size(1), s.w = x.size(2), s.in = x.size(3);
  if (s.shared) {
    s.hidden = w1.size(0);
    s.out = w2.dim() == 2 ? w2.size(0) : -1;
    KVC_CHECK(w1.size(1) == s.in && w2.dim() == 2 && w2.size(1) == s.hidden, op, ": input ",
              x.shape(), ", weights ", w1.shape(), " and ", w2.shape(),
              " are not (b, h, w, in), (hidden, in) and (out, hidden)");
  } else {
    KVC_CHECK(w1.dim() == 3 && w1.size(0) == s.h && w1.size(1) == s.in && w2.dim() == 3 &&
                  w2.size(0) == s.h && w2.size(1) == w1.size(2),
              op, ": input ", x.shape(), ", weights ", w1.shape(), " and ", w2.shape(),
              " are not (b, h, w, in), (h, in, hidden) and (h, hidden, out)");
    s.hidden = w1.size(2);
    s.out = w2.size(2);
  }
  const auto bias_fits = [&](const Tensor& bias, int64_t n) {
    return bias.shape() == Shape({s.h, n}) || bias.shape() == Shape({n});
  };
  KVC_CHECK(bias_fits(b1, s.hidden) && bias_fits(b2, s.out), op, ": biases ", b1.shape(), " and ",
            b2.shape(), " are not (h, ", s.hidden, ") or (", s.hidden, ",), and (h, ", s.out,
            ") or (", s.out, ",) for ", s.h, " heads");
  KVC_CHECK(!shift.defined() || shift.shape() == Shape({1, s.h, 1, s.in}), op, ": shift ",
            shift.shape(), " is not (1, ", s.h, ", 1, ", s.in, ") for input ", x.shape());
  if (residual.block != 0) {
    KVC_CHECK(residual.block > 0 && s.in % residual.block == 0 && s.in / residual.block == s.out,
              op, ": a residual of block ", residual.block, " needs in = block x out; input ",
              x.shape(), " has in ", s.in, " and the output out ", s.out);
    KVC_CHECK(residual.scale.numel() == 1, op, ": residual scale ", residual.scale.shape(),
              " is not one value");
  }
  return s;
}

// One layer of the composition: x W + bias, the bias per head or shared.
Tensor mlp_layer(const Tensor& x, const Tensor& weight, const Tensor& bias, bool shared) {
  if (shared) {
    if (bias.dim() == 1) return linear(x, weight, bias);
    return add(linear(x, weight, Tensor()), reshape(bias, {bias.size(0), 1, bias.size(1)}));
  }
  if (bias.dim() == 2) return mix(x, weight, bias);
  return add(mix(x, weight, Tensor()), bias);
}

#ifdef KVC_WITH_CUDA
Tensor fused_two_layer_mlp(const Tensor& x, const Tensor& w1, const Tensor& b1, Activation act,
                           const Tensor& w2, const Tensor& b2, const Tensor& shift,
                           const MlpResidual& residual, const MlpSizes& s) {
  kernels::cuda::MlpArgs args;
  args.b = s.b, args.h = s.h, args.w = s.w;
  args.in = s.in, args.hidden = s.hidden, args.out = s.out;
  args.shared_weights = s.shared;
  args.b1_per_head = b1.dim() == 2;
  args.b2_per_head = b2.dim() == 2;
  args.act = act == Activation::relu ? kernels::cuda::MlpActivation::relu
                                     : kernels::cuda::MlpActivation::gelu;
  args.x = x.data<float>();
  args.w1 = w1.data<float>();
  args.b1 = b1.data<float>();
  args.w2 = w2.data<float>();
  args.b2 = b2.data<float>();
  args.shift = shift.defined() ? shift.data<float>() : nullptr;
  args.residual_block = residual.block;
  args.residual_scale = residual.block != 0 ? residual.scale.data<float>() : nullptr;
  Tensor y = Tensor::empty({s.b, s.h, s.w, s.out}, x.options());
  std::vector<Tensor> inputs{x, w1, b1, w2, b2};
  if (shift.defined()) inputs.push_back(shift);
  if (residual.block != 0) inputs.push_back(residual.scale);
  bool any_grad = false;
  for (const Tensor& t : inputs) any_grad = any_grad || t.requires_grad();
  const bool save = grad_enabled() && any_grad;
  const std::shared_ptr<kernels::cuda::MlpSaved> saved =
      kernels::cuda::mlp_forward(args, y.data<float>(), save);
  if (!save) return y;
  Tape::current().record("two_layer_mlp", std::move(inputs), y, [=](const Tensor& gy) {
    kernels::cuda::MlpGrads grads;
    const auto want = [](const Tensor& t, float** dst, bool* acc) {
      if (t.requires_grad()) *dst = grad_buffer(t, acc).data<float>();
    };
    want(x, &grads.x, &grads.acc_x);
    want(w1, &grads.w1, &grads.acc_w1);
    want(b1, &grads.b1, &grads.acc_b1);
    want(w2, &grads.w2, &grads.acc_w2);
    want(b2, &grads.b2, &grads.acc_b2);
    if (shift.defined()) want(shift, &grads.shift, &grads.acc_shift);
    if (residual.block != 0) {
      want(residual.scale, &grads.residual_scale, &grads.acc_residual_scale);
    }
    kernels::cuda::mlp_backward(args, *saved, gy.data<float>(), grads);
  });
  return y;
}
#endif

}  // namespace

Tensor two_layer_mlp(const Tensor& x, const Tensor& w1, const Tensor& b1, Activation act,
                     const Tensor& w2, const Tensor& b2, const Tensor& shift,
                     const MlpResidual& residual) {
  const MlpSizes s = check_two_layer_mlp(x, w1, b1, w2, b2, shift, residual);
#ifdef KVC_WITH_CUDA
  if (x.device().is_cuda() && x.dtype() == DType::f32 && x.numel() > 0 && s.hidden > 0 &&
      s.out > 0) {
    return fused_two_layer_mlp(x, w1, b1, act, w2, b2, shift, residual, s);
  }
#endif
  // The shift through the first layer, one row per head, is that layer's bias (h, hidden).
  const Tensor bias1 =
      shift.defined() ? reshape(mlp_layer(shift, w1, b1, s.shared), {s.h, s.hidden}) : b1;
  const Tensor pre = mlp_layer(x, w1, bias1, s.shared);
  const Tensor mlp = mlp_layer(act == Activation::relu ? relu(pre) : gelu(pre), w2, b2, s.shared);
  if (residual.block == 0) return mlp;
  // The mean of each row's groups, the shift's apart (x is never shifted).
  const int64_t n = residual.block;
  Tensor block_mean = mean(reshape(x, {s.b, s.h, s.w, n, s.out}), 3);
  if (shift.defined()) block_mean = add(block_mean, mean(reshape(shift, {1, s.h, 1, n, s.out}), 3));
  return add(block_mean, mul(residual.scale, mlp));
}

// ---------------------------------------------------------------------------------------------
// ShareBf16Copies: the CUDA scope over the float32 CUDA tensors among those given.

#ifdef KVC_WITH_CUDA
struct ShareBf16Copies::Scope {
  explicit Scope(const std::vector<std::pair<const float*, int64_t>>& buffers) : copies(buffers) {}
  kernels::cuda::SharedBf16Copies copies;
};
#else
struct ShareBf16Copies::Scope {};
#endif

ShareBf16Copies::ShareBf16Copies(const std::vector<Tensor>& tensors) : tensors_(tensors) {
#ifdef KVC_WITH_CUDA
  std::vector<std::pair<const float*, int64_t>> buffers;
  for (const Tensor& t : tensors_) {
    if (t.defined() && t.device().is_cuda() && t.dtype() == DType::f32 && t.numel() > 0) {
      buffers.emplace_back(t.data<float>(), t.numel());
    }
  }
  if (!buffers.empty()) scope_ = std::make_unique<Scope>(buffers);
#endif
}

ShareBf16Copies::~ShareBf16Copies() = default;

}  // namespace kvc
