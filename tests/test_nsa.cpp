// NSA's settings: overlapping blocks (stride), GQA, causal distillation and the selection recall
// against PyTorch goldens (tests/golden/nsa_*.h5), the new ops' gradients, CUDA against the CPU,
// and the errors.
#include <cmath>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/gradcheck.h"
#include "core/ops.h"
#include "data/h5file.h"
#include "kernels/precision.h"
#include "nn/compressor_pair.h"
#include "test_nn_util.h"
#include "test_util.h"

#ifdef KVC_WITH_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/attention_tc.cuh"
#endif

namespace kvc {
namespace {

using test::rel_error;

std::vector<std::string> nsa_goldens() {
  std::vector<std::string> out;
  for (const char* kind : {"conv", "mlp", "attention_pool"}) {
    out.push_back(test::golden_dir() + "/nsa_" + kind + ".h5");
  }
  return out;
}

void check_nsa_golden(const std::string& path, DType dtype, Device device, double tol) {
  INFO("golden ", path, " as ", std::string(dtype_name(dtype)), " on ", device.name());
  const H5File f = H5File::open(path, H5Mode::read);
  CompressorOptions o = test::golden_options(f, dtype);
  o.stride = f.attr_int64("/", "stride");
  o.query_heads = f.attr_int64("/", "query_heads");
  o.causal = f.attr_int64("/", "causal") != 0;
  CompressorPair pair(o);
  pair.to(device);
  pair.load_state(test::read_group(f, "/params", DType::f64));
  Tensor k = f.read("/k", dtype, device), v = f.read("/v", dtype, device);
  const Tensor q = f.read("/q", dtype, device), q_pos = f.read("/q_pos", dtype, device);
  auto close = [&](const char* what, const Tensor& got, const char* name) {
    INFO(what);
    const Tensor want = f.read(name, DType::f64);
    REQUIRE(got.shape() == want.shape());
    CHECK(rel_error(got.to(DType::f64), want) < tol);
  };
  {
    NoGradGuard ng;
    const auto kv = pair.compress(k, v);
    close("k_compressed", kv.first, "/k_compressed");
    close("v_compressed", kv.second, "/v_compressed");
    const int64_t topk = f.attr_int64("/", "topk");
    const double golden_recall = f.read("/recall", DType::f64).item();
    const SelectionRecall r = pair.selection_recall(q, k, q_pos, topk);
    CHECK(std::fabs(r.mean() - golden_recall) < 1e-12);
    CHECK(r.count == 2 * static_cast<int64_t>(f.read("/recall_queries", DType::f64).item()));
    CHECK(r.queries_without_block == 3);
    // One query per chunk (the memory bound at its smallest): the same recall.
    const SelectionRecall chunked = pair.selection_recall(q, k, q_pos, topk, 1);
    CHECK(std::fabs(chunked.mean() - golden_recall) < 1e-12);
    CHECK(chunked.count == r.count);
    CHECK(chunked.queries_without_block == 3);
  }
  k.set_requires_grad(true);
  v.set_requires_grad(true);
  const Tensor loss = pair.distill_loss(q, k, v, q_pos);
  CHECK(loss.shape().empty());
  close("loss", loss, "/loss");
  backward(loss);
  close("grad k", k.grad(), "/grads/k");
  close("grad v", v.grad(), "/grads/v");
  test::check_param_grads(f, pair, tol);
}

TEST_CASE("nsa golden: stride 8, block 16, causal, 2 query heads match PyTorch, float64 and 32") {
  for (const auto& path : nsa_goldens()) {
    check_nsa_golden(path, DType::f64, Device::cpu(), 1e-10);
    check_nsa_golden(path, DType::f32, Device::cpu(), 1e-5);
  }
}

TEST_CASE("nsa golden cuda: the same on the GPU") {
  KVC_REQUIRE_CUDA();
  for (const auto& path : nsa_goldens()) {
    check_nsa_golden(path, DType::f64, Device::cuda(), 1e-10);
    check_nsa_golden(path, DType::f32, Device::cuda(), 1e-5);
  }
}

// The windows written out: block i is seq[i*stride .. i*stride + n) + positions.
Tensor windows_by_hand(const Tensor& seq, const Tensor& pos, int64_t n, int64_t stride) {
  const int64_t w = (seq.size(2) - n) / stride + 1;
  std::vector<Tensor> parts;
  Tensor out = Tensor::empty({seq.size(0), seq.size(1), w, n, seq.size(3)}, seq.options());
  const std::vector<double> s = seq.to_vector(), p = pos.to_vector();
  std::vector<double> o(static_cast<size_t>(out.numel()));
  const int64_t bh = seq.size(0) * seq.size(1), h = seq.size(1), d = seq.size(3);
  for (int64_t r = 0; r < bh; ++r) {
    for (int64_t i = 0; i < w; ++i) {
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t c = 0; c < d; ++c) {
          o[static_cast<size_t>(((r * w + i) * n + t) * d + c)] =
              s[static_cast<size_t>((r * seq.size(2) + i * stride + t) * d + c)] +
              p[static_cast<size_t>(((r % h) * n + t) * d + c)];
        }
      }
    }
  }
  return Tensor::from_vector(o, out.shape(), seq.options());
}

TEST_CASE("nsa windows: overlapping blocks equal the index formula and pass gradcheck") {
  const Tensor seq = test::param({2, 3, 21, 4}, 1), pos = test::param({3, 6, 4}, 2);
  for (int64_t stride : {1, 2, 4, 5, 6}) {
    INFO("stride ", stride);
    NoGradGuard ng;
    const Tensor got = add_block_positions(seq, pos, 6, stride);
    CHECK(got.shape() == Shape({2, 3, (21 - 6) / stride + 1, 6, 4}));
    CHECK(test::max_abs_diff(got.to_vector(), windows_by_hand(seq, pos, 6, stride).to_vector()) ==
          0.0);
  }
  for (int64_t stride : {2, 3, 6}) {
    test::check_gradients(
        [&](const std::vector<Tensor>& x) { return add_block_positions(x[0], x[1], 6, stride); },
        {seq, pos});
  }
  // stride == block is today's split, bit for bit (the default 0 too).
  NoGradGuard ng;
  CHECK(test::max_abs_diff(add_block_positions(seq, pos, 6, 6).to_vector(),
                           add_block_positions(seq, pos, 6).to_vector()) == 0.0);
}

TEST_CASE("nsa masked attention: equals the unmasked one on each row's prefix, gradcheck") {
  const Tensor q = test::param({2, 5, 3}, 3), k = test::param({2, 7, 3}, 4),
               v = test::param({2, 7, 2}, 5);
  const Tensor pos = Tensor::from_vector({0, 3, 6, 9, 2}, {1, 5}, f64());
  const VisibleCounts vis = visible_counts(pos, 2, 2, 2, 7);  // 0, 1, 3, 4, 1 keys, twice
  CHECK(vis.to_vector() == std::vector<int32_t>({0, 1, 3, 4, 1, 0, 1, 3, 4, 1}));
  {
    NoGradGuard ng;
    const Tensor got = scaled_dot_attention(q, k, v, 0.7, vis);
    const std::vector<double> g = got.to_vector();
    const std::vector<int32_t> c = vis.to_vector();
    for (int64_t r = 0; r < 10; ++r) {
      INFO("row ", r);
      const int64_t b = r / 5, m = r % 5, n = c[static_cast<size_t>(r)];
      if (n == 0) {  // sees nothing: 0
        CHECK(g[static_cast<size_t>(r * 2)] == 0.0);
        continue;
      }
      const Tensor want = scaled_dot_attention(narrow(narrow(q, 0, b, 1), 1, m, 1),
                                               narrow(narrow(k, 0, b, 1), 1, 0, n),
                                               narrow(narrow(v, 0, b, 1), 1, 0, n), 0.7);
      CHECK(test::max_abs_diff({g[static_cast<size_t>(r * 2)], g[static_cast<size_t>(r * 2 + 1)]},
                               want.to_vector()) < 1e-14);
    }
    const Tensor v3 = narrow(k, 2, 0, 3);  // the fused target needs v shaped as k
    const VisibleCounts causal = visible_counts(pos, 2, 0, 1, 7);
    CHECK(rel_error(attention_target(q, k, v3, 0.7, causal),
                    scaled_dot_attention(q, k, v3, 0.7, causal)) < 1e-14);
  }
  test::check_gradients(
      [&](const std::vector<Tensor>& x) {
        return scaled_dot_attention(x[0], x[1], x[2], 0.7, vis);
      },
      {q, k, v});
}

TEST_CASE("nsa fused target: the causal mask over many key tiles matches the recorded op") {
  // 300 keys: two CPU key tiles, so whole tiles are skipped and rows end inside the first.
  const Tensor q = Tensor::randn({2, 70, 8}, 6, 0, 0.0, 1.0, f64());
  const Tensor k = Tensor::randn({2, 300, 8}, 7, 0, 0.0, 1.0, f64());
  const Tensor v = Tensor::randn({2, 300, 8}, 8, 0, 0.0, 1.0, f64());
  std::vector<double> p(70);
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<double>((i * 37) % 300);
  const VisibleCounts vis = visible_counts(Tensor::from_vector(p, {1, 70}, f64()), 2, 0, 1, 300);
  NoGradGuard ng;
  CHECK(rel_error(attention_target(q, k, v, 0.3, vis), scaled_dot_attention(q, k, v, 0.3, vis)) <
        1e-13);
}

TEST_CASE("nsa cuda: windows, masks and the fused causal target match the CPU") {
  KVC_REQUIRE_CUDA();
  const Tensor seq = test::param({2, 3, 37, 8}, 11), pos = test::param({3, 8, 8}, 12);
  for (int64_t stride : {3, 8}) {
    std::vector<std::pair<std::string, Tensor>> in{{"seq", seq.to(Device::cuda())},
                                                   {"positions", pos.to(Device::cuda())}};
    test::require_gradcheck(
        gradcheck([&] { return add_block_positions(in[0].second, in[1].second, 8, stride); }, in));
    NoGradGuard ng;
    CHECK(rel_error(add_block_positions(in[0].second, in[1].second, 8, stride).to(Device::cpu()),
                    add_block_positions(seq, pos, 8, stride)) < 1e-15);
  }
  std::vector<double> p(300);
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<double>((i * 131) % 5000);
  const Tensor positions = Tensor::from_vector(p, {2, 150}, f32());
  for (int64_t d : {64, 6}) {  // the tiled FP32 kernel and the row kernel
    INFO("d ", d);
    const Tensor q = Tensor::randn({2, 3, 150, d}, 13, 0, 0.0, 1.0, f32());
    const Tensor k = Tensor::randn({2, 3, 5000, d}, 14, 0, 0.0, 1.0, f32());
    const Tensor v = Tensor::randn({2, 3, 5000, d}, 15, 0, 0.0, 1.0, f32());
    const Tensor qc = q.to(Device::cuda()), kc = k.to(Device::cuda()), vc = v.to(Device::cuda());
    NoGradGuard ng;
    const VisibleCounts cpu = visible_counts(positions, 3, 0, 1, 5000);
    const VisibleCounts gpu = visible_counts(positions.to(Device::cuda()), 3, 0, 1, 5000);
    CHECK(cpu.to_vector() == gpu.to_vector());
    const double alpha = 1.0 / std::sqrt(static_cast<double>(d));
    CHECK(rel_error(attention_target(qc, kc, vc, alpha, gpu).to(Device::cpu()),
                    attention_target(q, k, v, alpha, cpu)) < 1e-5);
    const VisibleCounts blocks = visible_counts(positions.to(Device::cuda()), 3, 15, 8, 40);
    CHECK(rel_error(
              scaled_dot_attention(qc, narrow(kc, 2, 0, 40), narrow(vc, 2, 0, 40), alpha, blocks)
                  .to(Device::cpu()),
              scaled_dot_attention(q, narrow(k, 2, 0, 40), narrow(v, 2, 0, 40), alpha,
                                   visible_counts(positions, 3, 15, 8, 40))) < 1e-5);
  }
  const Tensor q = test::param({2, 5, 3}, 3), k = test::param({2, 7, 3}, 4),
               v = test::param({2, 7, 2}, 5);
  const Tensor qpos = Tensor::from_vector({0, 3, 6, 9, 2}, {1, 5}, f64()).to(Device::cuda());
  const VisibleCounts vis = visible_counts(qpos, 2, 2, 2, 7);
  std::vector<std::pair<std::string, Tensor>> in{
      {"q", q.to(Device::cuda())}, {"k", k.to(Device::cuda())}, {"v", v.to(Device::cuda())}};
  test::require_gradcheck(gradcheck(
      [&] { return scaled_dot_attention(in[0].second, in[1].second, in[2].second, 0.7, vis); },
      in));
}

TEST_CASE("nsa cuda: the tensor-core causal target (tf32, bf16) matches the CPU, split keys too") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  // Within the operands' rounding (tf32 2^-11, bf16 2^-8: bounds as for the unmasked kernel),
  // and above the FP32 kernel's error, which shows the rounded path ran. Positions include 0
  // (one key), seq - 1 (all keys) and rows ending inside and across the key tiles and splits.
  struct Shape4 {
    int64_t seq, d;
  };
  uint64_t seed = 40;
  for (const Shape4 c : {Shape4{131, 64}, Shape4{300, 128}, Shape4{9000, 32}, Shape4{30011, 64},
                         Shape4{50001, 128}}) {
    for (const auto& [precision, tol] : {std::pair{kernels::MathPrecision::tf32, 2e-3},
                                         std::pair{kernels::MathPrecision::bf16, 1.5e-2}}) {
      INFO("seq ", c.seq, ", d ", c.d, ", ", kernels::precision_name(precision));
      const int64_t nq = 70;
      std::vector<double> p(static_cast<size_t>(nq));
      for (int64_t i = 0; i < nq; ++i)
        p[static_cast<size_t>(i)] = static_cast<double>((i * 7919) % c.seq);
      p[0] = 0, p[1] = static_cast<double>(c.seq - 1);
      const Tensor positions = Tensor::from_vector(p, {1, nq}, f32());
      const Tensor q = Tensor::randn({1, 2, nq, c.d}, seed++, 0, 0.0, 1.0, f32());
      const Tensor k = Tensor::randn({1, 2, c.seq, c.d}, seed++, 0, 0.0, 1.0, f32());
      const Tensor v = Tensor::randn({1, 2, c.seq, c.d}, seed++, 0, 0.0, 1.0, f32());
      const double alpha = 1.0 / std::sqrt(static_cast<double>(c.d));
      NoGradGuard ng;
      const Tensor want =
          attention_target(q, k, v, alpha, visible_counts(positions, 2, 0, 1, c.seq));
      const Tensor qc = q.to(Device::cuda()), kc = k.to(Device::cuda()), vc = v.to(Device::cuda());
      const VisibleCounts vis = visible_counts(positions.to(Device::cuda()), 2, 0, 1, c.seq);
      const kernels::MathPrecision saved = kernels::cuda::math_precision();
      kernels::cuda::set_math_precision(precision);
      const Tensor got = attention_target(qc, kc, vc, alpha, vis).to(Device::cpu());
      kernels::cuda::set_math_precision(saved);
      const double err = rel_error(got, want);
      MESSAGE(std::string(kernels::precision_name(precision)), " causal rel error ", err, " (seq ",
              c.seq, ", d ", c.d, ")");
      CHECK(err < tol);
      CHECK(err > 1e-6);
      if (precision == kernels::MathPrecision::tf32 && c.d != 32 &&
          kernels::cuda::attention_wgmma_available()) {
        // V^T a batch-head at a time (two chunks, 1 byte of scratch asked for): the outputs and
        // the rows' log-sum-exps of one chunk of both.
        Tensor out = Tensor::zeros(qc.shape(), qc.options());
        Tensor lse_one = Tensor::zeros({2 * nq}, qc.options()), lse_two = lse_one.clone();
        kernels::cuda::attention_forward_wgmma_tf32(
            qc.data<float>(), kc.data<float>(), vc.data<float>(), out.data<float>(), 2, nq, c.seq,
            c.d, alpha, vis.data(), lse_one.data<float>());
        kernels::cuda::attention_forward_wgmma_tf32(
            qc.data<float>(), kc.data<float>(), vc.data<float>(), out.data<float>(), 2, nq, c.seq,
            c.d, alpha, vis.data(), lse_two.data<float>(), 1);
        const double chunked_err = rel_error(out.to(Device::cpu()), want);
        MESSAGE("tf32 causal rel error, a batch-head a chunk ", chunked_err);
        CHECK(chunked_err < tol);
        CHECK(rel_error(lse_two, lse_one) < 1e-5);
      }
      if (precision == kernels::MathPrecision::bf16) {
        // The mma.sync kernel too (on Hopper the op above runs the warpgroup-MMA one).
        Tensor out = Tensor::zeros(qc.shape(), qc.options());
        kernels::cuda::attention_forward_tc(qc.data<float>(), kc.data<float>(), vc.data<float>(),
                                            out.data<float>(), 2, nq, c.seq, c.d, alpha, precision,
                                            vis.data(), kernels::cuda::TcKernel::mma_sync);
        const double sync_err = rel_error(out.to(Device::cpu()), want);
        MESSAGE("bf16 mma.sync causal rel error ", sync_err);
        CHECK(sync_err < tol);
        CHECK(sync_err > 1e-6);
      }
    }
  }
#endif
}

TEST_CASE("nsa errors: stride, query heads, positions and causal without them name the values") {
  CompressorOptions o;
  o.stride = 9;
  test::check_error([&] { CompressorPair p(o); }, {"stride 9", "block 8"});
  o.stride = -1;
  test::check_error([&] { CompressorPair p(o); }, {"stride -1"});
  o.stride = 4;
  o.query_heads = 0;
  test::check_error([&] { CompressorPair p(o); }, {"query heads 0"});
  o.query_heads = 2;
  o.causal = true;
  CompressorPair pair(o);
  const Tensor k = Tensor::randn({1, 2, 32, 32}, 1), q = Tensor::randn({1, 4, 3, 32}, 2);
  test::check_error([&] { pair.distill_loss(q, k, k); }, {"causal", "positions"});
  test::check_error(
      [&] {
        pair.distill_loss(q, k, k, Tensor::zeros({1, 4}));
      },
      {"positions (1, 4)", "(1, 3)"});
  test::check_error(
      [&] {
        pair.distill_loss(Tensor::randn({1, 2, 3, 32}, 2), k, k);
      },
      {"q (1, 2, 3, 32)", "2 query heads"});
  test::check_error([&] { pair.selection_recall(q, k, Tensor::zeros({1, 3}), 0); }, {"top-k 0"});
  test::check_error(
      [&] {
        add_block_positions(k, Tensor::zeros({2, 8, 32}), 8, 9);
      },
      {"stride 9", "block 8"});
}

TEST_CASE("nsa pair: stride == block and G = 1 without causal keep today's loss bit for bit") {
  CompressorOptions o;
  CompressorPair a(o);
  o.stride = 8;
  CompressorPair b(o);
  const Tensor k = Tensor::randn({2, 2, 35, 32}, 1), v = Tensor::randn({2, 2, 35, 32}, 2);
  const Tensor q = Tensor::randn({2, 2, 5, 32}, 3);
  NoGradGuard ng;
  CHECK(a.distill_loss(q, k, v).item() == b.distill_loss(q, k, v, Tensor::zeros({2, 5})).item());
}

}  // namespace
}  // namespace kvc
