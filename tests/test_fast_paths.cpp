// Tests of the copy-free compressor paths and the fused ops against the literal SPEC
// formulations (permute + conv1d, matmul + scale + softmax, narrow + add), float64, forward and
// every gradient; the CUDA cases compare each fused op and compressor with the CPU.
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/gradcheck.h"
#include "core/ops.h"
#include "kernels/softmax_pool.h"
#include "nn/compressor.h"
#include "nn/compressor_pair.h"
#include "test_nn_util.h"
#include "test_util.h"
#include "tests/reference/conv1d.h"

namespace kvc {
namespace {

using test::rel_error;

// The output of f and the gradient of sum(output * seed) for every leaf, seed ~ N(0, 1) fixed.
struct Result {
  Tensor y;
  std::vector<Tensor> grads;
};

Result run(const std::function<Tensor()>& f, std::vector<Tensor> leaves, uint64_t seed = 99) {
  for (Tensor& t : leaves) t.zero_grad();
  Result r;
  r.y = f();
  const Tensor g = Tensor::randn(r.y.shape(), seed, 0, 0.0, 1.0, r.y.options());
  backward(r.y, g);
  for (Tensor& t : leaves) {
    r.grads.push_back(t.grad().defined() ? t.grad().to(Device::cpu()).to(DType::f64) : Tensor());
    t.zero_grad();
  }
  r.y = r.y.detach().to(Device::cpu()).to(DType::f64);
  return r;
}

double norm(const Tensor& t) {
  double s = 0;
  for (double e : t.to_vector()) s += e * e;
  return std::sqrt(s);
}

// Relative errors of the output and of every gradient. With against_total, a gradient's error
// is measured against the norm of all of them when that is larger: the pair's k-side biases
// and positions of the linear kinds have gradient zero in exact arithmetic (they shift every
// compressed key alike, which softmax ignores), so both sides hold rounding noise there.
void check_close(const Result& got, const Result& want, const std::vector<std::string>& names,
                 double tol, bool against_total = false) {
  REQUIRE(got.y.shape() == want.y.shape());
  CHECK(rel_error(got.y, want.y) < tol);
  REQUIRE(got.grads.size() == want.grads.size());
  double total = 0;
  for (const Tensor& g : want.grads) total += g.defined() ? norm(g) * norm(g) : 0.0;
  total = against_total ? std::sqrt(total) : 0.0;
  for (size_t i = 0; i < got.grads.size(); ++i) {
    INFO("gradient of ", names.at(i));
    REQUIRE(want.grads[i].defined());
    REQUIRE(got.grads[i].defined());
    REQUIRE(got.grads[i].shape() == want.grads[i].shape());
    const double err = norm(sub(got.grads[i], want.grads[i]));
    CHECK(err <= tol * std::fmax(norm(want.grads[i]), total));
  }
}

Tensor leaf(const Shape& shape, uint64_t seed, double std = 1.0, TensorOptions opt = f64()) {
  Tensor t = Tensor::randn(shape, seed, 0, 0.0, std, opt);
  t.set_requires_grad(true);
  return t;
}

// ---- the literal SPEC formulations -----------------------------------------------------------

// einops 'b h w n d -> b (h d) (w n)'.
Tensor blocks_to_channels(const Tensor& x) {
  const int64_t b = x.size(0), h = x.size(1), w = x.size(2), n = x.size(3), d = x.size(4);
  return reshape(permute(x, {0, 1, 4, 2, 3}), {b, h * d, w * n});
}

// einops 'b (h d) w -> b h w d'.
Tensor channels_to_heads(const Tensor& y, int64_t h) {
  return permute(reshape(y, {y.size(0), h, y.size(1) / h, y.size(2)}), {0, 1, 3, 2});
}

Tensor param(const Module& m, const std::string& key) {
  for (const auto& kv : m.named_parameters()) {
    if (kv.first == key) return kv.second;
  }
  FAIL("no parameter ", key);
  return Tensor();
}

// SPEC section 3, written with permute and the grouped conv1d op.
Tensor reference_compressor(const Compressor& m, const Tensor& x) {
  const CompressorOptions& o = m.options();
  const int64_t h = o.heads, n = o.block;
  const std::string& kind = o.kind;
  if (kind == "conv") {
    return channels_to_heads(
        conv1d(blocks_to_channels(x), param(m, "conv.weight"), param(m, "conv.bias"), n, h), h);
  }
  if (kind == "efficient_conv") {
    Tensor y = conv1d(blocks_to_channels(x), param(m, "channel_reduction.weight"),
                      param(m, "channel_reduction.bias"), 1, h);
    y = conv1d(y, param(m, "grouped_conv.weight"), param(m, "grouped_conv.bias"), n, h);
    y = conv1d(y, param(m, "channel_expansion.weight"), param(m, "channel_expansion.bias"), 1, h);
    return channels_to_heads(y, h);
  }
  if (kind == "attention_pool" || kind == "scaled_attention_pool") {
    Tensor logits = matmul(x, param(m, "to_attn_logits.weight"), false, true);
    if (kind == "scaled_attention_pool")
      logits = scale(logits, 1.0 / std::sqrt(double(o.dim_head)));
    return sum(mul(x, softmax(logits, 3)), 3);
  }
  REQUIRE(kind == "mlp");
  const Tensor flat = reshape(x, {x.size(0), x.size(1), x.size(2), x.size(3) * x.size(4)});
  const Tensor hid =
      relu(add(matmul(flat, param(m, "net.0.weight"), false, true), param(m, "net.0.bias")));
  return add(matmul(hid, param(m, "net.2.weight"), false, true), param(m, "net.2.bias"));
}

Tensor reference_attention(const Tensor& q, const Tensor& k, const Tensor& v, double alpha) {
  return matmul(softmax(scale(matmul(q, k, false, true), alpha), -1), v);
}

Tensor reference_block_positions(const Tensor& seq, const Tensor& pos, int64_t n) {
  const int64_t w = seq.size(2) / n;
  const Tensor kept = narrow(seq, 2, 0, w * n);
  return add(reshape(kept, {seq.size(0), seq.size(1), w, n, seq.size(3)}),
             reshape(pos, {1, pos.size(0), 1, n, pos.size(2)}));
}

// ---- compressors ----------------------------------------------------------------------------

struct LayerCase {
  std::string kind;
  int64_t b, h, w, n, d, r;
};

void check_compressor(const LayerCase& c, double tol = 1e-12) {
  INFO("kind ", c.kind, " b ", c.b, " h ", c.h, " w ", c.w, " n ", c.n, " d ", c.d, " r ", c.r);
  CompressorOptions o;
  o.kind = c.kind;
  o.heads = c.h;
  o.block = c.n;
  o.dim_head = c.d;
  o.reduction = c.r;
  o.seed = 5;
  o.dtype = DType::f64;
  auto m = make_compressor(o);
  test::perturb(*m, 17, 0.3);
  const Tensor x = leaf({c.b, c.h, c.w, c.n, c.d}, 21);
  std::vector<Tensor> leaves{x};
  std::vector<std::string> names{"input"};
  for (const auto& kv : m->named_parameters()) {
    leaves.push_back(kv.second);
    names.push_back(kv.first);
  }
  const Result fast = run([&] { return (*m)(x); }, leaves);
  const Result ref = run([&] { return reference_compressor(*m, x); }, leaves);
  check_close(fast, ref, names, tol);
}

TEST_CASE("fast conv: the mix formulation equals SPEC's permute + grouped conv1d") {
  for (const LayerCase& c :
       {LayerCase{"conv", 2, 3, 4, 5, 6, 2}, LayerCase{"conv", 1, 1, 1, 2, 3, 2},
        LayerCase{"conv", 2, 2, 3, 4, 8, 2}, LayerCase{"conv", 3, 2, 2, 7, 2, 2}}) {
    check_compressor(c);
  }
}

TEST_CASE("fast efficient_conv: three mixes equal SPEC's three grouped conv1d, r = 2 and 4") {
  for (const LayerCase& c : {LayerCase{"efficient_conv", 2, 3, 4, 5, 8, 2},
                             LayerCase{"efficient_conv", 2, 3, 4, 5, 8, 4},
                             LayerCase{"efficient_conv", 1, 2, 3, 2, 4, 4},
                             LayerCase{"efficient_conv", 2, 1, 1, 6, 4, 2},
                             LayerCase{"efficient_conv", 1, 2, 2, 3, 12, 4}}) {
    check_compressor(c);
  }
}

TEST_CASE("fast attention pools and mlp: fused ops equal the composed ones") {
  for (const std::string kind : {"attention_pool", "scaled_attention_pool", "mlp"}) {
    check_compressor({kind, 2, 3, 4, 5, 6, 2});
    check_compressor({kind, 1, 2, 2, 3, 4, 2});
  }
}

// ---- the fused ops one by one -----------------------------------------------------------------

TEST_CASE("fast linear: bias in the GEMM equals matmul + add, with accumulation") {
  for (const Shape& xs : {Shape{5}, Shape{4, 5}, Shape{2, 3, 5}}) {
    INFO("input ", xs);
    const Tensor x = leaf(xs, 1), w = leaf({3, 5}, 2), b = leaf({3}, 3);
    auto ref_linear = [&](const Tensor& bias) {  // matmul needs 2-D: rows of x, then back
      Tensor y = matmul(reshape(x, {-1, 5}), w, false, true);
      if (bias.defined()) y = add(y, bias);
      Shape s = xs;
      s.back() = 3;
      return reshape(y, s);
    };
    // Each input used more than once: later backwards add onto the first's gradient.
    const Result fast =
        run([&] { return add(linear(x, w, b), mul(linear(x, w, b), linear(x, w, Tensor()))); },
            {x, w, b});
    const Result ref = run(
        [&] { return add(ref_linear(b), mul(ref_linear(b), ref_linear(Tensor()))); }, {x, w, b});
    check_close(fast, ref, {"x", "weight", "bias"}, 1e-12);
  }
}

TEST_CASE("fast attention: scaled_dot_attention equals matmul + scale + softmax + matmul") {
  struct Case {
    Shape q, k, v;
    double alpha;
  };
  for (const Case& c :
       {Case{{2, 3, 5, 4}, {2, 3, 7, 4}, {2, 3, 7, 6}, 0.5}, Case{{6, 4}, {9, 4}, {9, 3}, 1.0},
        Case{{2, 1, 1, 8}, {2, 1, 3, 8}, {2, 1, 3, 8}, 0.125}}) {
    INFO("q ", c.q, " k ", c.k, " v ", c.v);
    const Tensor q = leaf(c.q, 4), k = leaf(c.k, 5, 2.0), v = leaf(c.v, 6);
    // q, k and v each used twice: the gradients accumulate (GEMM beta 1).
    const Result fast = run(
        [&] {
          return add(scaled_dot_attention(q, k, v, c.alpha),
                     scaled_dot_attention(q, k, v, -c.alpha));
        },
        {q, k, v});
    const Result ref = run(
        [&] {
          return add(reference_attention(q, k, v, c.alpha), reference_attention(q, k, v, -c.alpha));
        },
        {q, k, v});
    check_close(fast, ref, {"q", "k", "v"}, 1e-12);
  }
}

TEST_CASE("fast softmax_pool: equals sum(x * softmax(alpha * logits)), large logits too") {
  for (const double spread : {1.0, 300.0}) {
    for (const Shape& s : {Shape{2, 3, 4, 5}, Shape{1, 6}, Shape{3, 1, 2}}) {
      INFO("shape ", s, " logit std ", spread);
      const Tensor x = leaf(s, 7), l = leaf(s, 8, spread);
      // x also feeds a plain sum, so softmax_pool's x gradient is added onto another.
      const Result fast = run([&] { return add(softmax_pool(x, l, 0.7), sum(x, -2)); }, {x, l});
      const Result ref =
          run([&] { return add(sum(mul(x, softmax(scale(l, 0.7), -2)), -2), sum(x, -2)); }, {x, l});
      check_close(fast, ref, {"x", "logits"}, 1e-12);
    }
  }
}

TEST_CASE("fast softmax_pool kernels: kept and recomputed weights give the same gradients") {
  // The op keeps the weights on the CPU and recomputes them on CUDA: both CPU variants here.
  const int64_t outer = 3, n = 5, inner = 7;
  const std::vector<double> x = Tensor::randn({outer, n, inner}, 1, 0, 0.0, 1.0, f64()).to_vector();
  const std::vector<double> l = Tensor::randn({outer, n, inner}, 2, 0, 0.0, 4.0, f64()).to_vector();
  const std::vector<double> g = Tensor::randn({outer, inner}, 3, 0, 0.0, 1.0, f64()).to_vector();
  std::vector<double> y0(outer * inner), y1(outer * inner), a(x.size());
  kernels::cpu::softmax_pool_forward<double>(x.data(), l.data(), y0.data(), nullptr, outer, n,
                                             inner, 0.6);
  kernels::cpu::softmax_pool_forward<double>(x.data(), l.data(), y1.data(), a.data(), outer, n,
                                             inner, 0.6);
  CHECK(y0 == y1);
  std::vector<double> gx0(x.size(), 1.0), gl0(x.size()), gx1(x.size(), 1.0), gl1(x.size());
  kernels::cpu::softmax_pool_backward<double>(x.data(), l.data(), nullptr, g.data(), gx0.data(),
                                              gl0.data(), outer, n, inner, 0.6, true, false);
  kernels::cpu::softmax_pool_backward<double>(x.data(), l.data(), a.data(), g.data(), gx1.data(),
                                              gl1.data(), outer, n, inner, 0.6, true, false);
  CHECK(test::max_abs_diff(gx0, gx1) < 1e-14);
  CHECK(test::max_abs_diff(gl0, gl1) < 1e-14);
  // And without grad the op's forward (no weights kept) still matches the composition.
  NoGradGuard ng;
  const Tensor xt = Tensor::from_vector(x, {outer, n, inner}, f64());
  const Tensor lt = Tensor::from_vector(l, {outer, n, inner}, f64());
  CHECK(rel_error(softmax_pool(xt, lt, 0.6), sum(mul(xt, softmax(scale(lt, 0.6), 1)), 1)) < 1e-14);
}

TEST_CASE("fast split_blocks: add_block_positions equals narrow + reshape + add") {
  struct Case {
    Shape seq;
    int64_t n;
  };
  for (const Case& c : {Case{{2, 3, 11, 4}, 3}, Case{{1, 2, 6, 5}, 2}, Case{{2, 1, 4, 3}, 4}}) {
    INFO("seq ", c.seq, " block ", c.n);
    const Tensor s = leaf(c.seq, 9), p = leaf({c.seq[1], c.n, c.seq[3]}, 10);
    const Result fast =
        run([&] { return mul(add_block_positions(s, p, c.n), add_block_positions(s, p, c.n)); },
            {s, p});
    const Result ref = run(
        [&] {
          return mul(reference_block_positions(s, p, c.n), reference_block_positions(s, p, c.n));
        },
        {s, p});
    check_close(fast, ref, {"seq", "positions"}, 1e-12);
  }
}

TEST_CASE("fast pair: distill_loss equals the composed SPEC section 4 loss, tail dropped") {
  for (const std::string kind : {"conv", "efficient_conv", "scaled_attention_pool", "mlp"}) {
    INFO("kind ", kind);
    CompressorOptions o;
    o.kind = kind;
    o.heads = 2;
    o.block = 3;
    o.dim_head = 4;
    o.seed = 3;
    o.dtype = DType::f64;
    CompressorPair pair(o);
    test::perturb(pair, 12, 0.3);
    const Tensor q = Tensor::randn({2, 2, 5, 4}, 13, 0, 0.0, 1.0, f64());
    const Tensor k = leaf({2, 2, 10, 4}, 14), v = leaf({2, 2, 10, 4}, 15);  // 10 = 3 blocks + 1
    std::vector<Tensor> leaves{k, v};
    std::vector<std::string> names{"k", "v"};
    for (const auto& kv : pair.named_parameters()) {
      leaves.push_back(kv.second);
      names.push_back(kv.first);
    }
    const double alpha = 0.5;  // 1 / sqrt(d)
    const Result fast = run([&] { return pair.distill_loss(q, k, v); }, leaves);
    const Result ref = run(
        [&] {
          Tensor target;
          {
            NoGradGuard ng;
            target = reference_attention(q, k, v, alpha);
          }
          const Tensor kc = reference_compressor(
              pair.k_compress(),
              reference_block_positions(k, param(pair, "k_intrablock_positions"), 3));
          const Tensor vc = reference_compressor(
              pair.v_compress(),
              reference_block_positions(v, param(pair, "v_intrablock_positions"), 3));
          return mse_loss(reference_attention(q, kc, vc, alpha), target);
        },
        leaves);
    check_close(fast, ref, names, 1e-11, /*against_total=*/true);
  }
}

TEST_CASE("fast gradcheck: every fused op against finite differences, float64") {
  const Tensor x = leaf({2, 3, 5}, 1), w = leaf({4, 5}, 2), b = leaf({4}, 3);
  test::require_gradcheck(
      gradcheck([&] { return linear(x, w, b); }, {{"x", x}, {"weight", w}, {"bias", b}}));
  const Tensor q = leaf({2, 3, 4}, 4), k = leaf({2, 5, 4}, 5), v = leaf({2, 5, 3}, 6);
  test::require_gradcheck(gradcheck([&] { return scaled_dot_attention(q, k, v, 0.7); },
                                    {{"q", q}, {"k", k}, {"v", v}}));
  const Tensor xp = leaf({2, 4, 3}, 7), lp = leaf({2, 4, 3}, 8, 2.0);
  test::require_gradcheck(
      gradcheck([&] { return softmax_pool(xp, lp, 0.5); }, {{"x", xp}, {"logits", lp}}));
  const Tensor s = leaf({2, 2, 7, 3}, 9), p = leaf({2, 3, 3}, 10);
  test::require_gradcheck(
      gradcheck([&] { return add_block_positions(s, p, 3); }, {{"seq", s}, {"positions", p}}));
}

// ---- sizes of zero: the fused ops fall back to their compositions -----------------------------

TEST_CASE("fast empty: zero rows, queries or batch give empty outputs and zero gradients") {
  const Tensor x = leaf({0, 5}, 1), w = leaf({3, 5}, 2), b = leaf({3}, 3);
  const Result lin = run([&] { return linear(x, w, b); }, {x, w, b});
  CHECK(lin.y.shape() == Shape{0, 3});
  CHECK(lin.grads[1].to_vector() == std::vector<double>(15, 0.0));
  CHECK(lin.grads[2].to_vector() == std::vector<double>(3, 0.0));

  const Tensor q = leaf({2, 0, 4}, 4), k = leaf({2, 3, 4}, 5), v = leaf({2, 3, 6}, 6);
  const Result att = run([&] { return scaled_dot_attention(q, k, v, 0.5); }, {q, k, v});
  CHECK(att.y.shape() == Shape{2, 0, 6});
  CHECK(att.grads[1].to_vector() == std::vector<double>(24, 0.0));
  CHECK(att.grads[2].to_vector() == std::vector<double>(36, 0.0));

  const Tensor xp = leaf({0, 3, 4}, 7), lp = leaf({0, 3, 4}, 8);
  CHECK(run([&] { return softmax_pool(xp, lp, 1.0); }, {xp, lp}).y.shape() == Shape{0, 4});

  const Tensor s = leaf({0, 2, 6, 3}, 9), p = leaf({2, 3, 3}, 10);
  const Result blocks = run([&] { return add_block_positions(s, p, 3); }, {s, p});
  CHECK(blocks.y.shape() == Shape{0, 2, 2, 3, 3});
  CHECK(blocks.grads[1].to_vector() == std::vector<double>(18, 0.0));
}

// ---- errors name the op and the shapes ----------------------------------------------------------

TEST_CASE("fast errors: the fused ops reject shapes that do not fit") {
  const Tensor x = Tensor::zeros({4, 5}, f64());
  CHECK_THROWS_WITH_AS(linear(x, Tensor::zeros({3, 6}, f64()), Tensor()),
                       "linear: input (4, 5) (..., in) does not match weight (3, 6) (out, in)",
                       Error);
  CHECK_THROWS_WITH_AS(linear(x, Tensor::zeros({3, 5}, f64()), Tensor::zeros({4}, f64())),
                       "linear: bias (4,) does not match weight (3, 5) (expected (out,))", Error);
  CHECK_THROWS_WITH_AS(linear(x, Tensor::zeros({3, 5}), Tensor()),
                       doctest::Contains("linear: dtype mismatch"), Error);
  CHECK_THROWS_WITH_AS(
      scaled_dot_attention(Tensor::zeros({2, 3, 4}, f64()), Tensor::zeros({2, 5, 3}, f64()),
                           Tensor::zeros({2, 5, 3}, f64()), 1.0),
      "attention: q (2, 3, 4) (..., m, d), k (2, 5, 3) (..., s, d) and v (2, 5, 3) (..., s, e) "
      "do not fit",
      Error);
  CHECK_THROWS_WITH_AS(softmax_pool(Tensor::zeros({2, 3}, f64()), Tensor::zeros({3, 2}, f64()), 1),
                       "softmax_pool: input (2, 3) (..., n, d) and logits (3, 2) must have one "
                       "shape of 2 or more axes",
                       Error);
  CHECK_THROWS_WITH_AS(
      add_block_positions(Tensor::zeros({1, 2, 7, 4}, f64()), Tensor::zeros({2, 3, 5}, f64()), 3),
      "split_blocks: positions (2, 3, 5) do not match input (1, 2, 7, 4) split into blocks of 3 "
      "(expected (2, 3, 4))",
      Error);
  CHECK_THROWS_WITH_AS(
      add_block_positions(Tensor::zeros({1, 2, 2, 4}, f64()), Tensor::zeros({2, 3, 4}, f64()), 3),
      "split_blocks: seq 2 of input (1, 2, 2, 4) is shorter than one block of 3", Error);
}

// ---- CUDA against the CPU ---------------------------------------------------------------------

// f on CPU and on CUDA from the same leaves (copied), float64 within 1e-12, float32 within 1e-5.
void check_cuda_matches_cpu(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                            const std::vector<Tensor>& cpu_leaves,
                            const std::vector<std::string>& names) {
  for (const DType dtype : {DType::f64, DType::f32}) {
    INFO("dtype ", std::string(dtype_name(dtype)));
    std::vector<Tensor> a, c;
    for (const Tensor& t : cpu_leaves) {
      a.push_back(t.detach().to(dtype).set_requires_grad(true));
      c.push_back(t.detach().to(dtype).to(Device::cuda()).set_requires_grad(true));
    }
    const Result want = run([&] { return f(a); }, a);
    const Result got = run([&] { return f(c); }, c);
    check_close(got, want, names, dtype == DType::f64 ? 1e-12 : 1e-5);
  }
}

TEST_CASE("fast cuda: the fused ops match the CPU") {
  KVC_REQUIRE_CUDA();
  check_cuda_matches_cpu(
      [](const std::vector<Tensor>& t) {
        return add(linear(t[0], t[1], t[2]), linear(t[0], t[1], Tensor()));
      },
      {leaf({7, 3, 33}, 1), leaf({20, 33}, 2), leaf({20}, 3)}, {"x", "weight", "bias"});
  check_cuda_matches_cpu(
      [](const std::vector<Tensor>& t) { return scaled_dot_attention(t[0], t[1], t[2], 0.3); },
      {leaf({2, 3, 17, 8}, 4), leaf({2, 3, 1100, 8}, 5), leaf({2, 3, 1100, 5}, 6)},
      {"q", "k", "v"});
  check_cuda_matches_cpu(
      [](const std::vector<Tensor>& t) {
        return add(softmax_pool(t[0], t[1], 0.7), sum(t[0], -2));
      },
      {leaf({3, 5, 16, 40}, 7), leaf({3, 5, 16, 40}, 8, 3.0)}, {"x", "logits"});
  check_cuda_matches_cpu(
      [](const std::vector<Tensor>& t) { return add_block_positions(t[0], t[1], 4); },
      {leaf({2, 3, 27, 8}, 9), leaf({3, 4, 8}, 10)}, {"seq", "positions"});
}

TEST_CASE("fast cuda: every compressor's fast path matches the CPU") {
  KVC_REQUIRE_CUDA();
  for (const std::string& kind : compressor_kinds()) {
    INFO("kind ", kind);
    CompressorOptions o;
    o.kind = kind;
    o.heads = 3;
    o.block = 5;
    o.dim_head = 8;
    o.reduction = 4;
    o.expand = 0.5;
    o.dtype = DType::f64;
    auto m_cpu = make_compressor(o), m_cuda = make_compressor(o);
    test::perturb(*m_cpu, 17, 0.3);
    test::perturb(*m_cuda, 17, 0.3);
    m_cuda->to(Device::cuda());
    for (const DType dtype : {DType::f64, DType::f32}) {
      INFO("dtype ", std::string(dtype_name(dtype)));
      m_cpu->to(dtype);
      m_cuda->to(dtype);
      const Tensor x0 = Tensor::randn({2, 3, 6, 5, 8}, 21, 0, 0.0, 1.0, f64()).to(dtype);
      const Tensor xa = x0.clone().set_requires_grad(true);
      const Tensor xc = x0.to(Device::cuda()).set_requires_grad(true);
      std::vector<Tensor> la{xa}, lc{xc};
      std::vector<std::string> names{"input"};
      for (const auto& kv : m_cpu->named_parameters()) {
        la.push_back(kv.second);
        names.push_back(kv.first);
      }
      for (const auto& kv : m_cuda->named_parameters()) lc.push_back(kv.second);
      const Result want = run([&] { return (*m_cpu)(xa); }, la);
      const Result got = run([&] { return (*m_cuda)(xc); }, lc);
      check_close(got, want, names, dtype == DType::f64 ? 1e-12 : 1e-5);
    }
  }
}

}  // namespace
}  // namespace kvc
