// Tests of CompressorPair and split_blocks: PyTorch goldens of the distill task, gradchecks,
// the teacher and the errors.
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/gradcheck.h"
#include "core/ops.h"
#include "data/h5file.h"
#include "nn/compressor_pair.h"
#include "test_nn_util.h"
#include "test_util.h"

namespace kvc {
namespace {

using test::rel_error;

void check_pair_golden(const std::string& path, DType dtype, Device device, double tol) {
  INFO("golden ", path, " as ", std::string(dtype_name(dtype)), " on ", device.name());
  const H5File f = H5File::open(path, H5Mode::read);
  CompressorPair pair(test::golden_options(f, dtype));
  pair.to(device);
  pair.load_state(test::read_group(f, "/params", DType::f64));  // converted by load_state
  Tensor k = f.read("/k", dtype, device), v = f.read("/v", dtype, device);
  const Tensor q = f.read("/q", dtype, device);
  k.set_requires_grad(true);
  v.set_requires_grad(true);
  auto ref = [&](const char* name) { return f.read(name, DType::f64); };
  auto close = [&](const char* what, const Tensor& got, const Tensor& want) {
    INFO(what);
    REQUIRE(got.shape() == want.shape());
    CHECK(rel_error(got.to(DType::f64), want) < tol);
  };

  {
    NoGradGuard ng;
    const auto kv = pair.compress(k, v);
    close("k_compressed", kv.first, ref("/k_compressed"));
    close("v_compressed", kv.second, ref("/v_compressed"));
    close("target", CompressorPair::attention(q, k, v), ref("/target"));
    close("prediction", CompressorPair::attention(q, kv.first, kv.second), ref("/prediction"));
  }
  const Tensor loss = pair.distill_loss(q, k, v);
  CHECK(loss.shape().empty());
  close("loss", loss, ref("/loss"));
  backward(loss);
  close("grad k", k.grad(), ref("/grads/k"));
  close("grad v", v.grad(), ref("/grads/v"));
  test::check_param_grads(f, pair, tol);
}

TEST_CASE("nn pair golden: the distill task of every kind matches PyTorch, float64") {
  const auto files = test::golden_files(true);
  REQUIRE(files.size() == compressor_kinds().size());
  for (const auto& path : files) check_pair_golden(path, DType::f64, Device::cpu(), 1e-10);
}

TEST_CASE("nn pair golden: float32") {
  const auto files = test::golden_files(true);
  REQUIRE(!files.empty());
  for (const auto& path : files) check_pair_golden(path, DType::f32, Device::cpu(), 1e-5);
}

TEST_CASE("nn pair golden cuda: the distill task on the GPU") {
  KVC_REQUIRE_CUDA();
  for (const auto& path : test::golden_files(true)) {
    check_pair_golden(path, DType::f64, Device::cuda(), 1e-10);
    check_pair_golden(path, DType::f32, Device::cuda(), 1e-5);
  }
}

TEST_CASE("nn pair: parameter keys in SPEC section 4's order") {
  CompressorOptions o;
  o.kind = "conv";
  o.heads = 2;
  o.block = 4;
  o.dim_head = 6;
  CompressorPair pair(o);
  std::vector<std::pair<std::string, Shape>> got;
  for (auto& kv : pair.named_parameters()) got.emplace_back(kv.first, kv.second.shape());
  const std::vector<std::pair<std::string, Shape>> want = {
      {"k_compress.conv.weight", {12, 6, 4}}, {"k_compress.conv.bias", {12}},
      {"v_compress.conv.weight", {12, 6, 4}}, {"v_compress.conv.bias", {12}},
      {"k_intrablock_positions", {2, 4, 6}},  {"v_intrablock_positions", {2, 4, 6}}};
  CHECK(got == want);
  const auto state = pair.state();
  CHECK(state.at("k_intrablock_positions").to_vector() == std::vector<double>(48, 0.0));
  // Separate weights: k and v compressors do not share an init.
  CHECK(state.at("k_compress.conv.weight").to_vector() !=
        state.at("v_compress.conv.weight").to_vector());
  CHECK(pair.name() == "pair(conv)");
}

TEST_CASE("nn pair: split_blocks drops the trailing tokens and keeps the order") {
  // (1, 2, 7, 2) with value = flat index; blocks of 3 -> (1, 2, 2, 3, 2), token 6 dropped.
  std::vector<double> values(28);
  for (size_t i = 0; i < values.size(); ++i) values[i] = double(i);
  const Tensor seq = Tensor::from_vector(values, {1, 2, 7, 2}, f64());
  const Tensor blocks = split_blocks(seq, 3);
  REQUIRE(blocks.shape() == Shape{1, 2, 2, 3, 2});
  const std::vector<double> got = blocks.to_vector();
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t w = 0; w < 2; ++w) {
      for (int64_t t = 0; t < 3; ++t) {
        for (int64_t c = 0; c < 2; ++c) {
          const size_t at = size_t(((h * 2 + w) * 3 + t) * 2 + c);
          CHECK(got[at] == double((h * 7 + w * 3 + t) * 2 + c));
        }
      }
    }
  }
  CHECK(split_blocks(seq, 7).shape() == Shape{1, 2, 1, 7, 2});
  CHECK_THROWS_WITH_AS(split_blocks(seq, 8),
                       "split_blocks: seq 7 of input (1, 2, 7, 2) is shorter than one block of 8",
                       Error);
  CHECK_THROWS_WITH_AS(split_blocks(Tensor::zeros({2, 7, 2}), 2),
                       "split_blocks: input (2, 7, 2) must be (b, h, seq, d)", Error);
}

TEST_CASE("nn pair: attention is softmax(q k^T / sqrt d) v, written out") {
  const Tensor q = Tensor::randn({1, 2, 3, 4}, 1, 0, 0.0, 1.0, f64());
  const Tensor k = Tensor::randn({1, 2, 5, 4}, 1, 1, 0.0, 1.0, f64());
  const Tensor v = Tensor::randn({1, 2, 5, 4}, 1, 2, 0.0, 1.0, f64());
  const std::vector<double> qv = q.to_vector(), kv = k.to_vector(), vv = v.to_vector();
  std::vector<double> want(24);
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 3; ++i) {
      double s[5], mx = -1e300, z = 0;
      for (int j = 0; j < 5; ++j) {
        s[j] = 0;
        for (int c = 0; c < 4; ++c) s[j] += qv[(h * 3 + i) * 4 + c] * kv[(h * 5 + j) * 4 + c];
        s[j] /= 2.0;  // sqrt(4)
        mx = std::fmax(mx, s[j]);
      }
      for (int j = 0; j < 5; ++j) z += (s[j] = std::exp(s[j] - mx));
      for (int c = 0; c < 4; ++c) {
        double acc = 0;
        for (int j = 0; j < 5; ++j) acc += s[j] / z * vv[(h * 5 + j) * 4 + c];
        want[size_t((h * 3 + i) * 4 + c)] = acc;
      }
    }
  }
  CHECK(test::max_abs_diff(CompressorPair::attention(q, k, v).to_vector(), want) < 1e-14);
  CHECK_THROWS_WITH_AS(CompressorPair::attention(q, Tensor::zeros({1, 2, 5, 3}, f64()), v),
                       doctest::Contains("attention: q (1, 2, 3, 4)"), Error);
}

CompressorOptions small_pair_options(const std::string& kind) {
  CompressorOptions o;
  o.kind = kind;
  o.heads = 2;
  o.dim_head = 4;
  o.block = 3;
  o.expand = 0.5;
  o.dtype = DType::f64;
  o.seed = 21;
  return o;
}

TEST_CASE("nn pair gradcheck: distill loss over every parameter, positions included") {
  for (const auto& kind : compressor_kinds()) {
    INFO("kind ", kind);
    CompressorPair pair(small_pair_options(kind));
    test::perturb(pair, 8, 0.3);  // positions nonzero, identity inits moved
    const Tensor k = Tensor::randn({1, 2, 7, 4}, 30, 0, 0.0, 1.0, f64());
    const Tensor v = Tensor::randn({1, 2, 7, 4}, 30, 1, 0.0, 1.0, f64());
    const Tensor q = Tensor::randn({1, 2, 3, 4}, 30, 2, 0.0, 1.0, f64());
    const auto params = pair.named_parameters();
    REQUIRE(params.back().first == "v_intrablock_positions");
    test::require_gradcheck(gradcheck([&] { return pair.distill_loss(q, k, v); }, params));
  }
}

TEST_CASE("nn pair gradcheck: k and v through the compressed branch (target held fixed)") {
  for (const std::string kind : {"conv", "enhanced_mlp", "attention_pool"}) {
    INFO("kind ", kind);
    CompressorOptions o = small_pair_options(kind);
    o.dropout = kind == "enhanced_mlp" ? 0.2 : 0.0;
    CompressorPair pair(o);
    test::perturb(pair, 9, 0.3);
    const Tensor k = Tensor::randn({2, 2, 6, 4}, 31, 0, 0.0, 1.0, f64());
    const Tensor v = Tensor::randn({2, 2, 6, 4}, 31, 1, 0.0, 1.0, f64());
    const Tensor q = Tensor::randn({2, 2, 3, 4}, 31, 2, 0.0, 1.0, f64());
    Tensor target;
    {
      NoGradGuard ng;
      target = CompressorPair::attention(q, k, v);
    }
    const std::vector<uint64_t> counters = pair.rng_counters();
    auto f = [&] {
      pair.set_rng_counters(counters);
      const auto kv = pair.compress(k, v);
      return mse_loss(CompressorPair::attention(q, kv.first, kv.second), target);
    };
    std::vector<std::pair<std::string, Tensor>> inputs{{"k", k}, {"v", v}};
    for (auto& kv : pair.named_parameters()) inputs.push_back(kv);
    test::require_gradcheck(gradcheck(f, inputs));
  }
}

TEST_CASE("nn pair: the teacher is seed + 1 plus N(0, 0.1^2) noise, frozen, in eval mode") {
  CompressorOptions o;  // conv, h 2, d 32, n 8
  o.seed = 5;
  auto teacher = CompressorPair::make_teacher(o);
  CompressorOptions o1 = o;
  o1.seed = 6;
  CompressorPair base(o1);
  CHECK_FALSE(teacher->training());
  const auto tp = teacher->named_parameters(), bp = base.named_parameters();
  REQUIRE(tp.size() == bp.size());
  double s = 0, s2 = 0, count = 0;
  for (size_t i = 0; i < tp.size(); ++i) {
    INFO("parameter ", tp[i].first);
    CHECK(tp[i].first == bp[i].first);
    CHECK_FALSE(tp[i].second.requires_grad());
    const std::vector<double> a = tp[i].second.to_vector(), b = bp[i].second.to_vector();
    double ps2 = 0;
    for (size_t j = 0; j < a.size(); ++j) {
      const double e = a[j] - b[j];
      s += e;
      s2 += e * e;
      ps2 += e * e;
    }
    count += double(a.size());
    CHECK(ps2 > 0);  // the zero-initialized positions moved too
  }
  const double mean = s / count, sd = std::sqrt(s2 / count - mean * mean);
  CHECK(std::fabs(mean) < 5 * 0.1 / std::sqrt(count));
  CHECK(std::fabs(sd - 0.1) < 0.005);
}

TEST_CASE("nn pair: teacher loss is the sum of the two MSEs, gradients reach the student only") {
  CompressorOptions o = small_pair_options("grouped_mlp");
  auto teacher = CompressorPair::make_teacher(o);
  CompressorPair student(o);
  const Tensor k = Tensor::randn({2, 2, 6, 4}, 40, 0, 0.0, 1.0, f64());
  const Tensor v = Tensor::randn({2, 2, 6, 4}, 40, 1, 0.0, 1.0, f64());
  std::vector<double> sk, sv, tk, tv;
  {
    NoGradGuard ng;
    auto s = student.compress(k, v);
    auto t = teacher->compress(k, v);
    sk = s.first.to_vector(), sv = s.second.to_vector();
    tk = t.first.to_vector(), tv = t.second.to_vector();
  }
  double want = 0, a = 0, b = 0;
  for (size_t i = 0; i < sk.size(); ++i) a += (sk[i] - tk[i]) * (sk[i] - tk[i]);
  for (size_t i = 0; i < sv.size(); ++i) b += (sv[i] - tv[i]) * (sv[i] - tv[i]);
  want = a / double(sk.size()) + b / double(sv.size());
  const Tensor loss = student.teacher_loss(*teacher, k, v);
  CHECK(loss.shape().empty());
  CHECK(std::fabs(loss.item() - want) < 1e-12 * want);
  CHECK(want > 1e-3);
  backward(loss);
  for (auto& kv : student.named_parameters()) CHECK(kv.second.grad().defined());
  for (auto& kv : teacher->named_parameters()) CHECK_FALSE(kv.second.grad().defined());

  // A student holding the teacher's weights has zero loss.
  CompressorPair copy(o);
  copy.load_state(teacher->state());
  CHECK(copy.teacher_loss(*teacher, k, v).item() == 0.0);

  CompressorOptions other = o;
  other.kind = "mlp";
  CHECK_THROWS_WITH_AS(CompressorPair(other).teacher_loss(*teacher, k, v),
                       doctest::Contains("does not match the student"), Error);
}

TEST_CASE("nn pair errors: bad k, v, q shapes name the pair and both shapes") {
  CompressorOptions o;
  o.heads = 2;
  o.dim_head = 4;
  o.block = 3;
  CompressorPair pair(o);
  const Tensor good = Tensor::zeros({1, 2, 6, 4});
  CHECK_THROWS_WITH_AS(pair.compress(Tensor::zeros({1, 3, 6, 4}), good),
                       "pair(conv): k (1, 3, 6, 4) does not match the pair's (b, 2, seq, 4)",
                       Error);
  CHECK_THROWS_WITH_AS(pair.compress(good, Tensor::zeros({1, 2, 6, 5})),
                       "pair(conv): v (1, 2, 6, 5) does not match the pair's (b, 2, seq, 4)",
                       Error);
  CHECK_THROWS_WITH_AS(pair.distill_loss(Tensor::zeros({1, 2, 3}), good, good),
                       doctest::Contains("pair(conv): q (1, 2, 3) does not match"), Error);
  CHECK_THROWS_WITH_AS(pair.compress(Tensor::zeros({1, 2, 2, 4}), Tensor::zeros({1, 2, 2, 4})),
                       doctest::Contains("is shorter than one block of 3"), Error);
  CHECK_THROWS_WITH_AS(pair(good), doctest::Contains("pair(conv): has no single-input forward"),
                       Error);
}

}  // namespace
}  // namespace kvc
