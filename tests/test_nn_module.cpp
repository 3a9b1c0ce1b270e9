// Tests of Module: registration order and keys, state loading, in-place conversion, modes, and
// the building blocks' forwards against closed forms.
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "nn/compressor.h"
#include "nn/layers.h"
#include "nn/module.h"
#include "test_util.h"
#include "tests/reference/conv1d.h"

namespace kvc {
namespace {

// A module that registers a parameter, a child, then another parameter: keys in that order.
class Toy : public Module {
 public:
  Toy() {
    ParamInit init{7, f64()};
    a_ = register_parameter("a", Tensor::zeros({2}, f64()));
    net_ = register_module("net", std::make_shared<Sequential>());
    net_->add(std::make_shared<Linear>(LinearOptions(3, 2), init));
    net_->add(std::make_shared<ReLU>());
    net_->add(std::make_shared<Dropout>(0.5, 99));
    net_->add(std::make_shared<Linear>(LinearOptions(2, 1).bias(false), init));
    b_ = register_parameter("b", Tensor::ones({1}, f64()));
  }
  Tensor forward(const Tensor& x) override { return add((*net_)(x), b_); }
  std::string name() const override { return "Toy"; }
  void add_duplicate() { register_parameter("a", Tensor::zeros({1})); }

  Tensor a_, b_;
  std::shared_ptr<Sequential> net_;
};

TEST_CASE("nn module: named_parameters follow registration order with dotted keys") {
  Toy m;
  std::vector<std::string> keys;
  for (auto& kv : m.named_parameters()) keys.push_back(kv.first);
  CHECK(keys == std::vector<std::string>{"a", "net.0.weight", "net.0.bias", "net.3.weight", "b"});
  CHECK(m.parameters().size() == 5);
  CHECK(m.num_parameters() == 2 + 6 + 2 + 2 + 1);
  CHECK(m.children().size() == 1);
  CHECK(m.parameters()[0].same(m.a_));  // the registry holds the member's own handle
  CHECK_THROWS_WITH_AS(m.add_duplicate(), "Toy: 'a' is registered twice", Error);
}

TEST_CASE("nn module: train/eval is recursive, zero_grad drops gradients") {
  Toy m;
  CHECK(m.training());
  m.eval();
  CHECK_FALSE(m.training());
  CHECK_FALSE(m.net_->training());
  for (auto& c : m.net_->children()) CHECK_FALSE(c.second->training());
  m.train();
  for (auto& c : m.net_->children()) CHECK(c.second->training());

  m.eval();  // no dropout, so the gradient below is deterministic
  backward(sum(m(Tensor::ones({4, 3}, f64()))));
  for (auto& kv : m.named_parameters()) {
    if (kv.first != "a") CHECK(kv.second.grad().defined());
  }
  CHECK(m.b_.grad().item() == 4.0);  // d/db of sum over 4 rows of (... + b)
  m.zero_grad();
  for (const Tensor& p : m.parameters()) CHECK_FALSE(p.grad().defined());
}

TEST_CASE("nn module: load_state copies values into the same tensors, converting dtype") {
  Toy m;
  const auto before = m.named_parameters();
  std::map<std::string, Tensor> state;
  double base = 1;
  for (auto& kv : before) {
    std::vector<double> v(static_cast<size_t>(kv.second.numel()));
    for (auto& e : v) e = base++;
    state[kv.first] = Tensor::from_vector(v, kv.second.shape(), f32());  // float32 in
  }
  m.load_state(state);
  const auto after = m.named_parameters();
  for (size_t i = 0; i < after.size(); ++i) {
    CHECK(after[i].second.same(before[i].second));  // an optimizer's handles stay valid
    CHECK(after[i].second.dtype() == DType::f64);
    CHECK(after[i].second.to_vector() == state[after[i].first].to_vector());
  }
  CHECK(m.a_.to_vector() == std::vector<double>{1, 2});
}

TEST_CASE("nn module: load_state errors name the keys and both shapes, and change nothing") {
  Toy m;
  auto state = m.state();
  std::map<std::string, Tensor> copy;
  for (auto& kv : state) copy[kv.first] = kv.second.clone();

  auto missing = copy;
  missing.erase("net.0.bias");
  missing["net.9.weight"] = Tensor::zeros({1}, f64());
  CHECK_THROWS_WITH_AS(m.load_state(missing),
                       "Toy: load_state does not match the module's parameters; missing keys: "
                       "'net.0.bias'; unexpected keys: 'net.9.weight'",
                       Error);
  // Not strict: the missing key keeps its value, the unknown one is ignored.
  missing["a"] = Tensor::full({2}, 5.0, f64());
  const std::vector<double> bias_before = m.state().at("net.0.bias").to_vector();
  m.load_state(missing, /*strict=*/false);
  CHECK(m.a_.to_vector() == std::vector<double>{5, 5});
  CHECK(m.state().at("net.0.bias").to_vector() == bias_before);

  auto wrong = copy;
  wrong["a"] = Tensor::full({2}, 9.0, f64());
  wrong["net.0.weight"] = Tensor::zeros({3, 2}, f64());
  CHECK_THROWS_WITH_AS(
      m.load_state(wrong),
      "Toy: load_state: 'net.0.weight' has shape (3, 2) in the state but (2, 3) in the module",
      Error);
  CHECK(m.a_.to_vector() == std::vector<double>{5, 5});  // checked before anything was copied
}

TEST_CASE("nn module: to(dtype) converts in place, keeping the handles") {
  Toy m;
  m.b_.set_grad(Tensor::ones({1}, f64()));
  const auto before = m.named_parameters();
  std::vector<std::vector<double>> values;
  for (auto& kv : before) values.push_back(kv.second.to_vector());
  m.to(DType::f32);
  CHECK(m.dtype() == DType::f32);
  const auto after = m.named_parameters();
  for (size_t i = 0; i < after.size(); ++i) {
    CHECK(after[i].second.same(before[i].second));
    CHECK(before[i].second.dtype() == DType::f32);  // seen through the old handle too
    CHECK(test::max_abs_diff(after[i].second.to_vector(), values[i]) < 1e-7);
    CHECK(after[i].second.requires_grad());
  }
  CHECK_FALSE(m.b_.grad().defined());
  m.eval();
  const Tensor y = m(Tensor::ones({1, 3}));
  CHECK(y.dtype() == DType::f32);
  m.to(Device::cpu());  // a no-op that must not disturb anything
  CHECK(m.device() == Device::cpu());
}

TEST_CASE("nn module: rng counters collected recursively in order") {
  Toy m;
  CHECK(m.rng_counters() == std::vector<uint64_t>{0});
  NoGradGuard ng;
  m(Tensor::ones({2, 3}, f64()));
  m(Tensor::ones({2, 3}, f64()));
  CHECK(m.rng_counters() == std::vector<uint64_t>{2});
  m.set_rng_counters({7});
  CHECK(m.rng_counters() == std::vector<uint64_t>{7});
  CHECK_THROWS_WITH_AS(m.set_rng_counters({1, 2}),
                       "Toy: set_rng_counters got 2 counters but the module has 1 random streams",
                       Error);
}

TEST_CASE("nn layers: Linear, Mix and Conv1d against their formulas") {
  ParamInit init{3, f64()};
  // Linear: y = x W^T + b.
  Linear lin(LinearOptions(3, 2), init);
  const auto lp = lin.named_parameters();
  REQUIRE(lp[0].first == "weight");
  REQUIRE(lp[0].second.shape() == Shape{2, 3});
  const std::vector<double> w = lp[0].second.to_vector(), b = lp[1].second.to_vector();
  const Tensor x = Tensor::from_vector({1, 2, 3, -1, 0, 4}, {2, 3}, f64());
  const std::vector<double> xv = x.to_vector(), y = lin(x).to_vector();
  for (int r = 0; r < 2; ++r) {
    for (int o = 0; o < 2; ++o) {
      double acc = b[o];
      for (int i = 0; i < 3; ++i) acc += xv[r * 3 + i] * w[o * 3 + i];
      CHECK(std::fabs(y[r * 2 + o] - acc) < 1e-14);
    }
  }
  CHECK_THROWS_WITH_AS(lin(Tensor::zeros({2, 4}, f64())),
                       "Linear: input (2, 4) does not end in the layer's in_features 3 "
                       "(weight (2, 3))",
                       Error);

  // Mix: y[b,h,w,o] = sum_i x[b,h,w,i] W[h,i,o] + B[h,o].
  Mix mix(2, 3, 2, init);
  const auto mp = mix.named_parameters();
  REQUIRE(mp[0].second.shape() == Shape{2, 3, 2});
  REQUIRE(mp[1].second.shape() == Shape{2, 2});
  const std::vector<double> mw = mp[0].second.to_vector(), mb = mp[1].second.to_vector();
  const Tensor xm = Tensor::randn({1, 2, 2, 3}, 4, 0, 0.0, 1.0, f64());
  const std::vector<double> xmv = xm.to_vector(), ym = mix(xm).to_vector();
  for (int h = 0; h < 2; ++h) {
    for (int ww = 0; ww < 2; ++ww) {
      for (int o = 0; o < 2; ++o) {
        double acc = mb[h * 2 + o];
        for (int i = 0; i < 3; ++i) acc += xmv[(h * 2 + ww) * 3 + i] * mw[(h * 3 + i) * 2 + o];
        CHECK(std::fabs(ym[(h * 2 + ww) * 2 + o] - acc) < 1e-14);
      }
    }
  }
  CHECK_THROWS_WITH_AS(mix(Tensor::zeros({1, 3, 2, 3}, f64())),
                       "Mix: input (1, 3, 2, 3) does not match the layer's (..., 2, w, 3)", Error);

  // Conv1d, groups 2, kernel 2, stride 2: out[c, t] = B[c] + sum_{i,k} W[c, i, k] x[g*2+i, 2t+k].
  Conv1d conv(Conv1dOptions(4, 4).kernel(2).stride(2).groups(2), init);
  const auto cp = conv.named_parameters();
  REQUIRE(cp[0].second.shape() == Shape{4, 2, 2});
  const std::vector<double> cw = cp[0].second.to_vector(), cb = cp[1].second.to_vector();
  const Tensor xc = Tensor::randn({1, 4, 4}, 4, 1, 0.0, 1.0, f64());
  const std::vector<double> xcv = xc.to_vector(), yc = conv(xc).to_vector();
  REQUIRE(yc.size() == 8);
  for (int c = 0; c < 4; ++c) {
    const int g = c / 2;
    for (int t = 0; t < 2; ++t) {
      double acc = cb[c];
      for (int i = 0; i < 2; ++i) {
        for (int k = 0; k < 2; ++k)
          acc += cw[(c * 2 + i) * 2 + k] * xcv[(g * 2 + i) * 4 + 2 * t + k];
      }
      CHECK(std::fabs(yc[c * 2 + t] - acc) < 1e-14);
    }
  }
  CHECK_THROWS_WITH_AS(Conv1d(Conv1dOptions(3, 4).kernel(2).stride(2).groups(2), init),
                       doctest::Contains("not divisible by groups 2"), Error);
}

TEST_CASE("nn layers: Conv1d as mix equals the reference conv1d op, forward and backward") {
  ParamInit init;
  init.seed = 5;
  init.options = f64();
  // groups 2, 3 -> 4 channels per group, kernel = stride 3; length 14 leaves a remainder of 2.
  Conv1d conv(Conv1dOptions(6, 8).kernel(3).stride(3).groups(2), init);
  const auto params = conv.named_parameters();
  const Tensor w = params[0].second, b = params[1].second;
  const Tensor x = Tensor::randn({2, 6, 14}, 6, 0, 0.0, 1.0, f64().with_requires_grad(true));
  const Tensor x_ref = x.detach().clone().set_requires_grad(true);
  const Tensor w_ref = w.detach().clone().set_requires_grad(true);
  const Tensor b_ref = b.detach().clone().set_requires_grad(true);
  const Tensor seed = Tensor::randn({2, 8, 4}, 6, 1, 0.0, 1.0, f64());
  const Tensor y = conv(x), y_ref = conv1d(x_ref, w_ref, b_ref, 3, 2);
  REQUIRE(y.shape() == y_ref.shape());
  CHECK(test::max_abs_diff(y.to_vector(), y_ref.to_vector()) < 1e-13);
  backward(add(sum(mul(y, seed)), sum(mul(y_ref, seed))));  // one tape holds both graphs
  CHECK(test::max_abs_diff(x.grad().to_vector(), x_ref.grad().to_vector()) < 1e-13);
  CHECK(test::max_abs_diff(w.grad().to_vector(), w_ref.grad().to_vector()) < 1e-13);
  CHECK(test::max_abs_diff(b.grad().to_vector(), b_ref.grad().to_vector()) < 1e-13);

  CHECK_THROWS_WITH_AS(Conv1d(Conv1dOptions(4, 4).kernel(3).stride(2), init),
                       "Conv1d: stride 2 differs from kernel 3 (only non-overlapping windows are "
                       "supported)",
                       Error);
}

TEST_CASE("nn layers: GELU is the exact erf form, ReLU clips") {
  const Tensor x = Tensor::from_vector({-2, -0.5, 0, 0.7, 3}, {5}, f64());
  GELU gelu_layer;
  ReLU relu_layer;
  const std::vector<double> g = gelu_layer(x).to_vector(), r = relu_layer(x).to_vector();
  const std::vector<double> xv = x.to_vector();
  for (size_t i = 0; i < xv.size(); ++i) {
    CHECK(std::fabs(g[i] - 0.5 * xv[i] * (1 + std::erf(xv[i] / std::sqrt(2.0)))) < 1e-15);
    CHECK(r[i] == std::fmax(xv[i], 0.0));
  }
}

TEST_CASE("nn module: derive_seed separates streams") {
  CHECK(derive_seed(0, 1) != derive_seed(0, 2));
  CHECK(derive_seed(0, 1) != derive_seed(1, 1));
  CHECK(derive_seed(5, 3) == derive_seed(5, 3));
}

}  // namespace
}  // namespace kvc
