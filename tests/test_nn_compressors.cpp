// Tests of the seven compressors: PyTorch goldens, gradchecks, SPEC's parameter table, inits,
// dropout and the errors for bad shapes and options.
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/gradcheck.h"
#include "core/ops.h"
#include "data/h5file.h"
#include "nn/compressor.h"
#include "nn/layers.h"
#include "test_nn_util.h"
#include "test_util.h"

namespace kvc {
namespace {

using test::rel_error;

// One layer golden on `device` in `dtype`: forward and every gradient of sum(output *
// grad_output) against PyTorch. The module is built in float64, loaded by name, then converted
// with Module::to, as a user converting a checkpoint would.
void check_layer_golden(const std::string& path, DType dtype, Device device, double tol) {
  INFO("golden ", path, " as ", std::string(dtype_name(dtype)), " on ", device.name());
  const H5File f = H5File::open(path, H5Mode::read);
  const CompressorOptions o = test::golden_options(f, DType::f64);
  auto m = make_compressor(o);
  m->load_state(test::read_group(f, "/params", DType::f64));
  m->to(dtype);
  m->to(device);

  Tensor x = f.read("/input", dtype, device);
  x.set_requires_grad(true);
  const Tensor y = (*m)(x);
  const Tensor out_ref = f.read("/output", DType::f64);
  REQUIRE(y.shape() == out_ref.shape());
  CHECK(y.dtype() == dtype);
  CHECK(rel_error(y.to(DType::f64), out_ref) < tol);

  backward(y, f.read("/grad_output", dtype, device));
  REQUIRE(x.grad().defined());
  CHECK(rel_error(x.grad().to(DType::f64), f.read("/grads/input", DType::f64)) < tol);
  const auto grads_ref = test::read_group(f, "/grads/params", DType::f64);
  const auto params = m->named_parameters();
  REQUIRE(grads_ref.size() == params.size());
  for (const auto& kv : params) {
    INFO("parameter ", kv.first);
    REQUIRE(grads_ref.count(kv.first) == 1);
    REQUIRE(kv.second.grad().defined());
    CHECK(rel_error(kv.second.grad().to(DType::f64), grads_ref.at(kv.first)) < tol);
  }
}

TEST_CASE("nn golden: every compressor matches PyTorch, forward and backward, float64") {
  const auto files = test::golden_files(false);
  // Two shapes per kind (make_golden.py's tags a and b).
  REQUIRE(files.size() == 2 * compressor_kinds().size());
  std::map<std::string, int> per_kind;
  for (const auto& path : files) {
    per_kind[H5File::open(path, H5Mode::read).attr_string("/", "kind")]++;
    check_layer_golden(path, DType::f64, Device::cpu(), 1e-10);
  }
  for (const auto& kind : compressor_kinds()) CHECK(per_kind[kind] == 2);
}

TEST_CASE("nn golden: every compressor matches PyTorch in float32") {
  const auto files = test::golden_files(false);
  REQUIRE(!files.empty());
  for (const auto& path : files) check_layer_golden(path, DType::f32, Device::cpu(), 1e-5);
}

TEST_CASE("nn golden cuda: every compressor matches PyTorch on the GPU") {
  KVC_REQUIRE_CUDA();
  for (const auto& path : test::golden_files(false)) {
    check_layer_golden(path, DType::f64, Device::cuda(), 1e-10);
    check_layer_golden(path, DType::f32, Device::cuda(), 1e-5);
  }
}

// ---- gradcheck ------------------------------------------------------------------------------

CompressorOptions small_options(const std::string& kind) {
  CompressorOptions o;
  o.kind = kind;
  o.heads = 2;
  o.dim_head = 4;
  o.block = 3;
  o.expand = 0.75;  // H = 9
  o.reduction = 2;
  o.seed = 11;
  o.dtype = DType::f64;
  return o;
}

void gradcheck_compressor(Compressor& m, const Tensor& x) {
  const std::vector<uint64_t> counters = m.rng_counters();
  // Every evaluation restarts the dropout counters: the same mask each time, as gradcheck needs.
  auto f = [&]() {
    m.set_rng_counters(counters);
    return m(x);
  };
  std::vector<std::pair<std::string, Tensor>> inputs{{"input", x}};
  for (auto& kv : m.named_parameters()) inputs.push_back(kv);
  test::require_gradcheck(gradcheck(f, inputs));
}

TEST_CASE("nn gradcheck: input and every parameter of every kind, float64") {
  for (const auto& kind : compressor_kinds()) {
    INFO("kind ", kind);
    auto m = make_compressor(small_options(kind));
    test::perturb(*m, 5, 0.3);
    const Tensor x = Tensor::randn({2, 2, 2, 3, 4}, 77, 0, 0.0, 1.0, f64());
    gradcheck_compressor(*m, x);
  }
}

TEST_CASE("nn gradcheck: enhanced_mlp with dropout in training mode, fixed mask") {
  CompressorOptions o = small_options("enhanced_mlp");
  o.dropout = 0.3;
  auto m = make_compressor(o);
  test::perturb(*m, 6, 0.3);
  REQUIRE(m->training());
  const Tensor x = Tensor::randn({2, 2, 2, 3, 4}, 78, 0, 0.0, 1.0, f64());
  // The check must see dropout at work: the training output differs from the eval one.
  const std::vector<uint64_t> c0 = m->rng_counters();
  REQUIRE(c0 == std::vector<uint64_t>{0, 0});
  std::vector<double> train_out, eval_out;
  {
    NoGradGuard ng;
    train_out = (*m)(x).to_vector();
    CHECK(m->rng_counters() == std::vector<uint64_t>{1, 1});  // one step per training forward
    m->eval();
    eval_out = (*m)(x).to_vector();
    CHECK(m->rng_counters() == std::vector<uint64_t>{1, 1});  // eval draws nothing
    m->train();
  }
  CHECK(test::max_abs_diff(train_out, eval_out) > 1e-3);
  gradcheck_compressor(*m, x);
}

// ---- SPEC section 3's table, written out -----------------------------------------------------

TEST_CASE("nn params: names and shapes of every kind are SPEC section 3's table") {
  // h = 2, n = 4, d = 6, expand 0.5, r = 2: I = 24, H = 12, h*d = 12, h*d/r = 6, d/r = 3.
  const std::map<std::string, std::vector<std::pair<std::string, Shape>>> spec = {
      {"conv", {{"conv.weight", {12, 6, 4}}, {"conv.bias", {12}}}},
      {"efficient_conv",
       {{"channel_reduction.weight", {6, 6, 1}},
        {"channel_reduction.bias", {6}},
        {"grouped_conv.weight", {6, 3, 4}},
        {"grouped_conv.bias", {6}},
        {"channel_expansion.weight", {12, 3, 1}},
        {"channel_expansion.bias", {12}}}},
      {"attention_pool", {{"to_attn_logits.weight", {6, 6}}}},
      {"scaled_attention_pool", {{"to_attn_logits.weight", {6, 6}}}},
      {"grouped_mlp",
       {{"net.0.weight", {2, 24, 12}},
        {"net.0.bias", {2, 12}},
        {"net.2.weight", {2, 12, 6}},
        {"net.2.bias", {2, 6}}}},
      {"enhanced_mlp",
       {{"net.0.weight", {2, 24, 12}},
        {"net.0.bias", {2, 12}},
        {"net.3.weight", {2, 12, 6}},
        {"net.3.bias", {2, 6}},
        {"residual_scale", {1}}}},
      {"mlp",
       {{"net.0.weight", {12, 24}},
        {"net.0.bias", {12}},
        {"net.2.weight", {6, 12}},
        {"net.2.bias", {6}}}},
  };
  CHECK(compressor_kinds() == std::vector<std::string>{"conv", "efficient_conv", "attention_pool",
                                                       "scaled_attention_pool", "grouped_mlp",
                                                       "enhanced_mlp", "mlp"});
  for (const auto& kind : compressor_kinds()) {
    INFO("kind ", kind);
    CompressorOptions o;
    o.kind = kind;
    o.heads = 2;
    o.block = 4;
    o.dim_head = 6;
    o.expand = 0.5;
    o.reduction = 2;
    auto m = make_compressor(o);
    std::vector<std::pair<std::string, Shape>> got;
    for (auto& kv : m->named_parameters()) {
      got.emplace_back(kv.first, kv.second.shape());
      CHECK(kv.second.requires_grad());
      CHECK(kv.second.dtype() == DType::f32);
    }
    CHECK(got == spec.at(kind));
  }
}

// ---- initial values -------------------------------------------------------------------------

TEST_CASE("nn init: SPEC's distributions, deterministic from the seed") {
  CompressorOptions o;  // h 2, d 32, n 8: enough elements for the statistics
  for (const auto& kind : compressor_kinds()) {
    INFO("kind ", kind);
    o.kind = kind;
    o.seed = 3;
    auto m = make_compressor(o);
    const int64_t h = 2, d = 32, n = 8, i = n * d, r = 2;
    // U(a) bounds of SPEC section 3 (fan_in of each parameter), written out per key.
    const std::map<std::string, double> bound = {
        {"conv.weight", 1 / std::sqrt(double(d * n))},
        {"conv.bias", 1 / std::sqrt(double(d * n))},
        {"channel_reduction.weight", 1 / std::sqrt(double(d))},
        {"channel_reduction.bias", 1 / std::sqrt(double(d))},
        {"grouped_conv.weight", 1 / std::sqrt(double(d / r * n))},
        {"grouped_conv.bias", 1 / std::sqrt(double(d / r * n))},
        {"channel_expansion.weight", 1 / std::sqrt(double(d / r))},
        {"channel_expansion.bias", 1 / std::sqrt(double(d / r))},
        {"net.0.weight", 1 / std::sqrt(double(i))},
        {"net.0.bias", 1 / std::sqrt(double(i))},
        {"net.2.weight", 1 / std::sqrt(double(i))},  // H = I at expand 1
        {"net.2.bias", 1 / std::sqrt(double(i))},
        {"net.3.weight", 1 / std::sqrt(double(i))},
        {"net.3.bias", 1 / std::sqrt(double(i))},
    };
    (void)h;
    std::vector<std::vector<double>> seen;
    for (auto& kv : m->named_parameters()) {
      INFO("parameter ", kv.first);
      const std::vector<double> v = kv.second.to_vector();
      if (kv.first == "to_attn_logits.weight") {
        for (int64_t a = 0; a < d; ++a) {
          for (int64_t b = 0; b < d; ++b) CHECK(v[size_t(a * d + b)] == (a == b ? 1.0 : 0.0));
        }
        continue;
      }
      if (kv.first == "residual_scale") {
        CHECK(v == std::vector<double>{1.0});
        continue;
      }
      REQUIRE(bound.count(kv.first) == 1);
      const double a = bound.at(kv.first);
      double lo = 1e300, hi = -1e300, s = 0, s2 = 0;
      for (double e : v) {
        lo = std::fmin(lo, e);
        hi = std::fmax(hi, e);
        s += e;
        s2 += e * e;
      }
      const double nn = double(v.size());
      CHECK(lo >= -a);
      CHECK(hi <= a);
      if (v.size() >= 64) {  // the range is used, centered, with U(a)'s variance a^2/3
        CHECK(hi > 0.8 * a);
        CHECK(lo < -0.8 * a);
        CHECK(std::fabs(s / nn) < 5 * a / std::sqrt(3 * nn));
        CHECK(std::fabs(s2 / nn - a * a / 3) < 0.25 * a * a / 3);
      }
      for (const auto& other : seen) CHECK(other != v);  // every parameter its own stream
      seen.push_back(v);
    }
    // Same seed, same values; another seed, other values.
    auto same = make_compressor(o);
    o.seed = 4;
    auto other = make_compressor(o);
    const auto p0 = m->named_parameters(), p1 = same->named_parameters(),
               p2 = other->named_parameters();
    bool any_diff = false;
    for (size_t k = 0; k < p0.size(); ++k) {
      CHECK(p0[k].second.to_vector() == p1[k].second.to_vector());
      any_diff = any_diff || p0[k].second.to_vector() != p2[k].second.to_vector();
    }
    if (kind != "attention_pool" && kind != "scaled_attention_pool") CHECK(any_diff);
  }
}

TEST_CASE("nn init: float64 and float32 draw the same numbers") {
  CompressorOptions o;
  o.kind = "grouped_mlp";
  o.dim_head = 8;
  auto m32 = make_compressor(o);
  o.dtype = DType::f64;
  auto m64 = make_compressor(o);
  const auto a = m32->named_parameters(), b = m64->named_parameters();
  REQUIRE(a.size() == b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    CHECK(b[k].second.dtype() == DType::f64);
    CHECK(test::max_abs_diff(a[k].second.to_vector(), b[k].second.to_vector()) < 1e-7);
  }
}

// ---- dropout --------------------------------------------------------------------------------

TEST_CASE("nn dropout: keeps 1-p of the values, scaled by 1/(1-p), eval and p=0 are identity") {
  const double p = 0.25;
  const int64_t count = 200000;
  Dropout drop(p, 1234);
  const Tensor x = Tensor::full({count}, 2.0, f64());
  Tensor xg = x.clone();
  xg.set_requires_grad(true);
  const Tensor y = drop(xg);
  const std::vector<double> v = y.to_vector();
  int64_t kept = 0;
  bool values_ok = true;
  for (double e : v) {
    if (e != 0.0) {
      ++kept;
      values_ok = values_ok && std::fabs(e - 2.0 / (1 - p)) < 1e-15;
    }
  }
  CHECK(values_ok);
  const double frac = double(kept) / double(count);
  const double sigma = std::sqrt(p * (1 - p) / double(count));
  CHECK(std::fabs(frac - (1 - p)) < 5 * sigma);
  // The gradient is the same mask and scale: dy/dx = y / x elementwise.
  backward(sum(y));
  const std::vector<double> g = xg.grad().to_vector();
  bool grad_ok = true;
  for (size_t i = 0; i < g.size(); ++i) grad_ok = grad_ok && g[i] == v[i] / 2.0;
  CHECK(grad_ok);

  // The counter advances: the next mask differs; restoring it repeats the first mask.
  CHECK(drop.rng_counters() == std::vector<uint64_t>{1});
  NoGradGuard ng;
  CHECK(drop(x).to_vector() != v);
  drop.set_rng_counters({0});
  CHECK(drop(x).to_vector() == v);

  drop.eval();
  CHECK(drop(x).to_vector() == x.to_vector());
  CHECK(drop.rng_counters() == std::vector<uint64_t>{1});
  Dropout none(0.0, 1);
  const Tensor same = none(x);
  CHECK(same.to_vector() == x.to_vector());
  CHECK(none.rng_counters() == std::vector<uint64_t>{0});  // p = 0 draws nothing

  CHECK_THROWS_WITH_AS(Dropout(1.0, 0), doctest::Contains("p = 1 is outside [0, 1)"), Error);
  CHECK_THROWS_AS(Dropout(-0.1, 0), Error);
}

TEST_CASE("nn dropout: enhanced_mlp's two dropouts draw different masks and resume exactly") {
  CompressorOptions o;
  o.kind = "enhanced_mlp";
  o.dim_head = 8;
  o.block = 4;
  o.dropout = 0.5;
  o.dtype = DType::f64;
  auto m = make_compressor(o);
  const Tensor x = Tensor::randn({1, 2, 3, 4, 8}, 9, 0, 0.0, 1.0, f64());
  NoGradGuard ng;
  const std::vector<double> first = (*m)(x).to_vector();
  const std::vector<uint64_t> after_one = m->rng_counters();
  const std::vector<double> second = (*m)(x).to_vector();
  CHECK(first != second);
  m->set_rng_counters(after_one);  // a resume after step one replays step two
  CHECK((*m)(x).to_vector() == second);
  CHECK_THROWS_WITH_AS(m->set_rng_counters({1}),
                       doctest::Contains("got 1 counters but the module has 2"), Error);
}

// ---- errors ---------------------------------------------------------------------------------

TEST_CASE("nn errors: wrong input shapes name the layer and both shapes") {
  for (const auto& kind : compressor_kinds()) {
    INFO("kind ", kind);
    CompressorOptions o;
    o.kind = kind;
    o.heads = 2;
    o.block = 4;
    o.dim_head = 6;
    auto m = make_compressor(o);
    const bool pool = kind == "attention_pool" || kind == "scaled_attention_pool";
    const std::string want = pool ? "(b, 2, w, n, 6)" : "(b, 2, w, 4, 6)";
    auto expect = [&](const Shape& s) {
      const std::string msg =
          kind + ": input " + shape_str(s) + " does not match the layer's " + want;
      CHECK_THROWS_WITH_AS((*m)(Tensor::zeros(s)), msg.c_str(), Error);
    };
    expect({1, 3, 2, 4, 6});             // heads
    expect({1, 2, 2, 4, 5});             // dim_head
    if (!pool) expect({1, 2, 2, 5, 6});  // block
    CHECK_THROWS_WITH_AS((*m)(Tensor::zeros({2, 8, 6})),
                         (kind + ": input (2, 8, 6) must be 5-D, the layer's " + want).c_str(),
                         Error);
    CHECK_THROWS_WITH_AS((*m)(Tensor::zeros({1, 2, 2, 4, 6}, f64())),
                         doctest::Contains("is float64 on cpu but the layer's parameters are "
                                           "float32 on cpu"),
                         Error);
    CHECK((*m)(Tensor::zeros({1, 2, 3, 4, 6})).shape() == Shape{1, 2, 3, 6});
    if (pool) CHECK((*m)(Tensor::zeros({1, 2, 3, 7, 6})).shape() == Shape{1, 2, 3, 6});
  }
}

TEST_CASE("nn errors: invalid options") {
  CompressorOptions o;
  o.kind = "convolution";
  CHECK_THROWS_WITH_AS(make_compressor(o),
                       "compressor: unknown kind 'convolution' (expected one of conv, "
                       "efficient_conv, attention_pool, scaled_attention_pool, grouped_mlp, "
                       "enhanced_mlp, mlp)",
                       Error);
  o = CompressorOptions{};
  o.kind = "efficient_conv";
  o.dim_head = 30;
  o.reduction = 4;
  CHECK_THROWS_WITH_AS(make_compressor(o),
                       "efficient_conv: dim_head 30 is not divisible by reduction 4", Error);
  o.reduction = 0;
  CHECK_THROWS_WITH_AS(make_compressor(o), doctest::Contains("reduction 0 must be at least 1"),
                       Error);
  o = CompressorOptions{};
  o.kind = "grouped_mlp";
  o.block = 2;
  o.dim_head = 3;
  o.expand = 0.1;  // floor(0.6) = 0
  CHECK_THROWS_WITH_AS(make_compressor(o),
                       doctest::Contains("grouped_mlp: hidden size floor(n * d * expand) = "
                                         "floor(2 * 3 * 0.1) = 0 must be at least 1"),
                       Error);
  o.kind = "conv";  // expand is not used by conv: the same value is fine there
  CHECK_NOTHROW(make_compressor(o));
  for (int64_t bad : {0, -1}) {
    o = CompressorOptions{};
    o.heads = bad;
    CHECK_THROWS_WITH_AS(make_compressor(o), doctest::Contains("must all be positive"), Error);
    o = CompressorOptions{};
    o.block = bad;
    CHECK_THROWS_WITH_AS(make_compressor(o), doctest::Contains("must all be positive"), Error);
    o = CompressorOptions{};
    o.dim_head = bad;
    CHECK_THROWS_WITH_AS(make_compressor(o), doctest::Contains("must all be positive"), Error);
  }
  o = CompressorOptions{};
  o.kind = "enhanced_mlp";
  o.dropout = 1.0;
  CHECK_THROWS_WITH_AS(make_compressor(o), "enhanced_mlp: dropout 1 is outside [0, 1)", Error);
  o.dropout = -0.5;
  CHECK_THROWS_AS(make_compressor(o), Error);
  o.dropout = 0.0;
  o.expand = std::nan("");
  CHECK_THROWS_WITH_AS(make_compressor(o), doctest::Contains("must be a positive number"), Error);
}

}  // namespace
}  // namespace kvc
