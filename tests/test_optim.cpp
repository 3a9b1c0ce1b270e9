// Tests of optim/: Adam/AdamW vs PyTorch goldens and closed forms, the clip, the flat buffers,
// the learning-rate schedule.
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "data/h5file.h"
#include "kernels/memory.h"
#include "optim/adam.h"
#include "optim/schedule.h"
#include "test_util.h"

namespace kvc {
namespace {

using test::max_abs_diff;
using test::rel_error;

using Named = std::vector<std::pair<std::string, Tensor>>;

// The golden's flat vector split over two parameters of different shapes (the second does not
// start at an aligned element), so the test also crosses the flat buffer's padding.
Named split_params(const std::vector<double>& values, DType dtype) {
  const TensorOptions opt = TensorOptions{}.with_dtype(dtype).with_requires_grad(true);
  const std::vector<double> a(values.begin(), values.begin() + 4);
  const std::vector<double> b(values.begin() + 4, values.end());
  return {{"first", Tensor::from_vector(a, {4}, opt)},
          {"second.weight", Tensor::from_vector(b, {2, static_cast<int64_t>(b.size()) / 2}, opt)}};
}

std::vector<double> concat_values(const Named& params) {
  std::vector<double> out;
  for (const auto& [name, p] : params) {
    const std::vector<double> v = p.to_vector();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

std::vector<double> row(const Tensor& t, int64_t r) {
  const std::vector<double> all = t.to_vector();
  const int64_t n = t.size(1);
  return std::vector<double>(all.begin() + r * n, all.begin() + (r + 1) * n);
}

// Sets the parameters' gradients to `values` (as user code assigns p.grad; the optimizer copies
// them into its buffer when it settles).
void set_grads(const Named& params, const std::vector<double>& values) {
  size_t at = 0;
  for (const auto& [name, p] : params) {
    Tensor param = p;
    const size_t n = static_cast<size_t>(p.numel());
    std::vector<double> part(values.begin() + static_cast<std::ptrdiff_t>(at),
                             values.begin() + static_cast<std::ptrdiff_t>(at + n));
    param.set_grad(Tensor::from_vector(part, p.shape(), p.options()));
    at += n;
  }
}

void check_against_golden(const std::string& group, DType dtype, double tol) {
  const H5File f =
      H5File::open(std::string(KVC_SOURCE_DIR) + "/tests/golden/optim.h5", H5Mode::read);
  const std::string g = "/" + group;
  AdamOptions o;
  o.lr = f.attr_double(g, "lr");
  o.beta1 = f.attr_double(g, "beta1");
  o.beta2 = f.attr_double(g, "beta2");
  o.eps = f.attr_double(g, "eps");
  o.weight_decay = f.attr_double(g, "weight_decay");
  o.decoupled = group == "adamw";
  const int64_t steps = f.attr_int64(g, "steps");
  const Tensor init = f.read(g + "/param_init", DType::f64);
  const Tensor grads = f.read(g + "/grads", DType::f64);
  const Tensor expected = f.read(g + "/params", DType::f64);
  REQUIRE(steps >= 2);
  REQUIRE(grads.size(0) == steps);
  REQUIRE(expected.size(0) == steps);

  Named params = split_params(init.to_vector(), dtype);
  Adam adam(params, o);
  for (int64_t t = 0; t < steps; ++t) {
    adam.zero_grad();
    set_grads(params, row(grads, t));
    adam.step();
    const double err = rel_error(concat_values(params), row(expected, t));
    INFO(group, " ", dtype_name(dtype), " step ", t + 1, " rel error ", err);
    CHECK(err < tol);
  }
  CHECK(adam.step_count() == steps);
}

TEST_CASE("optim: Adam, AdamW and Adam+L2 match torch.optim goldens") {
  for (const char* group : {"adam", "adamw", "adam_l2"}) {
    check_against_golden(group, DType::f64, 1e-10);
    check_against_golden(group, DType::f32, 1e-6);
  }
}

TEST_CASE("optim: the first Adam step moves each parameter by lr * sign(grad)") {
  // After one step m_hat = g and v_hat = g^2 exactly, so the update is lr * g / (|g| + eps).
  const std::vector<double> p0{0.5, -1.0, 2.0, 0.0, 3.0};
  const std::vector<double> g{0.3, -2.0, 1e-3, 5.0, -0.01};
  AdamOptions o;
  o.lr = 0.05;
  o.eps = 1e-8;
  Named params{{"w", Tensor::from_vector(p0, {5}, f64().with_requires_grad(true))}};
  Adam adam(params, o);
  set_grads(params, g);
  adam.step();
  std::vector<double> expected(p0.size());
  for (size_t i = 0; i < p0.size(); ++i) {
    expected[i] = p0[i] - o.lr * g[i] / (std::fabs(g[i]) + o.eps);
    // and that is lr * sign(g) up to eps / |g|:
    CHECK(std::fabs(expected[i] - (p0[i] - o.lr * (g[i] > 0 ? 1 : -1))) < 1e-6 * o.lr / 1e-3);
  }
  CHECK(max_abs_diff(params[0].second.to_vector(), expected) < 1e-15);
}

TEST_CASE("optim: AdamW decays the parameter by lr * weight_decay before the update") {
  // Zero gradient: moments stay 0, the Adam update is 0, only the decoupled decay acts.
  AdamOptions o;
  o.lr = 0.1;
  o.weight_decay = 0.5;
  o.decoupled = true;
  Named params{{"w", Tensor::from_vector({2.0, -4.0}, {2}, f64().with_requires_grad(true))}};
  Adam adam(params, o);
  adam.step();
  adam.step();
  const double f = (1 - 0.1 * 0.5) * (1 - 0.1 * 0.5);
  CHECK(max_abs_diff(params[0].second.to_vector(), {2.0 * f, -4.0 * f}) < 1e-15);
}

TEST_CASE("optim: clip_grad_norm returns the global norm and scales the next step") {
  // Two parameters with gradients (3, 4) and (12): global norm 13.
  Named params{{"a", Tensor::from_vector({1.0, 1.0}, {2}, f64().with_requires_grad(true))},
               {"b", Tensor::from_vector({1.0}, {1}, f64().with_requires_grad(true))}};
  AdamOptions o;
  o.lr = 0.0;  // the clip scale is visible in the moments, not the parameters
  o.beta1 = 0.5;
  Adam adam(params, o);
  set_grads(params, {3.0, 4.0, 12.0});
  CHECK(adam.clip_grad_norm(6.5) == doctest::Approx(13.0).epsilon(1e-14));
  CHECK(adam.last_grad_norm() == doctest::Approx(13.0).epsilon(1e-14));
  adam.step();
  // m = (1 - beta1) * scale * g, scale = 6.5 / (13 + 1e-6).
  const double s = 6.5 / (13.0 + 1e-6);
  CHECK(max_abs_diff(adam.exp_avg("a").to_vector(), {0.5 * s * 3, 0.5 * s * 4}) < 1e-14);
  CHECK(max_abs_diff(adam.exp_avg("b").to_vector(), {0.5 * s * 12}) < 1e-14);
  CHECK(max_abs_diff(adam.exp_avg_sq("b").to_vector(), {0.001 * s * s * 144}) < 1e-12);

  // A norm below max_norm leaves the gradient alone (scale 1, not max/(norm+eps) > 1).
  adam.zero_grad();
  set_grads(params, {0.0, 0.0, 2.0});
  CHECK(adam.clip_grad_norm(10.0) == doctest::Approx(2.0).epsilon(1e-14));
  adam.step();
  const double m_b = 0.5 * (0.5 * s * 12) + 0.5 * 2.0;
  CHECK(adam.exp_avg("b").to_vector()[0] == doctest::Approx(m_b).epsilon(1e-14));

  CHECK_THROWS_WITH_AS(adam.clip_grad_norm(0.0), doctest::Contains("max_norm 0"), Error);
}

TEST_CASE("optim: apply_step_with_norm updates as apply_step and reports the unclipped norm") {
  // Gradients (3, 4) and (12): global norm 13.
  const auto make = [] {
    return Named{{"a", Tensor::from_vector({1.0, -2.0}, {2}, f64().with_requires_grad(true))},
                 {"b", Tensor::from_vector({0.5}, {1}, f64().with_requires_grad(true))}};
  };
  Named clipped = make(), fused = make();
  AdamOptions o;
  o.lr = 0.1;
  Adam first(clipped, o), inside(fused, o);
  for (int t = 0; t < 2; ++t) {
    const std::vector<double> g =
        t == 0 ? std::vector<double>{3.0, 4.0, 12.0} : std::vector<double>{-1.0, 2.0, 2.0};
    first.zero_grad();
    inside.zero_grad();
    set_grads(clipped, g);
    set_grads(fused, g);
    first.set_clip_scale(std::numeric_limits<double>::infinity());
    first.step();
    inside.stage_step();
    inside.apply_step_with_norm();
    CHECK(inside.last_grad_norm() == doctest::Approx(t == 0 ? 13.0 : 3.0).epsilon(1e-15));
    CHECK(inside.norm_scale().to_vector()[1] == 1.0);
    for (const char* name : {"a", "b"}) {
      CHECK(inside.param(name).to_vector() == first.param(name).to_vector());
      CHECK(inside.exp_avg(name).to_vector() == first.exp_avg(name).to_vector());
      CHECK(inside.exp_avg_sq(name).to_vector() == first.exp_avg_sq(name).to_vector());
    }
  }
  // A clip scale already pending would be lost: refused.
  inside.set_clip_scale(1.0);
  inside.stage_step();
  CHECK_THROWS_WITH_AS(inside.apply_step_with_norm(), doctest::Contains("clip scale pending"),
                       Error);
}

TEST_CASE("optim: parameters alias the flat buffer, backward accumulates into the flat grads") {
  Tensor w = Tensor::from_vector({1.0, 2.0, 3.0}, {3}, f64().with_requires_grad(true));
  Tensor b = Tensor::from_vector({0.5}, {1}, f64().with_requires_grad(true));
  Tensor w_handle = w;  // what a module keeps
  Adam adam({{"w", w}, {"b", b}}, AdamOptions{});
  CHECK(adam.numel() == 4);

  // Values moved in; writes through the module's handle are what the optimizer sees.
  CHECK(max_abs_diff(adam.param("w").to_vector(), {1.0, 2.0, 3.0}) == 0);
  w_handle.copy_from(Tensor::from_vector({7.0, 8.0, 9.0}, {3}, f64()));
  CHECK(max_abs_diff(adam.param("w").to_vector(), {7.0, 8.0, 9.0}) == 0);
  CHECK(w_handle.raw_data() == adam.param("w").raw_data());
  CHECK(static_cast<const char*>(w_handle.raw_data()) >=
        static_cast<const char*>(adam.flat_params().raw_data()));

  // loss = sum(w * x) + 2 * sum(b): d/dw = x, d/db = 2; twice accumulates.
  const Tensor x = Tensor::from_vector({1.0, -1.0, 0.5}, {3}, f64());
  for (int rep = 0; rep < 2; ++rep) {
    Tensor loss = add(sum(mul(w_handle, x)), scale(sum(b), 2.0));
    backward(loss);
  }
  CHECK(max_abs_diff(adam.grad("w").to_vector(), {2.0, -2.0, 1.0}) == 0);
  CHECK(max_abs_diff(adam.grad("b").to_vector(), {4.0}) == 0);
  CHECK(w_handle.grad().raw_data() == adam.grad("w").raw_data());
  // One gradient segment (neither name has a dot) holds exactly these four values (padding is
  // zero).
  const std::vector<Tensor> segments = adam.grad_segments();
  REQUIRE(segments.size() == 1);
  double flat_sq = 0;
  for (double v : segments[0].to_vector()) flat_sq += v * v;
  CHECK(flat_sq == doctest::Approx(4 + 4 + 1 + 16));

  // zero_grad drops the gradients (PyTorch's set_to_none); the next backward writes w's gradient
  // straight into its view (x, not added to the 2 x of before), and settling zero-fills b's,
  // which backward did not reach.
  adam.zero_grad();
  CHECK_FALSE(w_handle.grad().defined());
  CHECK_FALSE(b.grad().defined());
  backward(sum(mul(w_handle, x)));
  CHECK(w_handle.grad().raw_data() == segments[0].raw_data());
  CHECK(max_abs_diff(w_handle.grad().to_vector(), {1.0, -1.0, 0.5}) == 0);
  CHECK_FALSE(b.grad().defined());
  adam.settle_grads();
  CHECK(max_abs_diff(adam.grad("b").to_vector(), {0.0}) == 0);
  CHECK(b.grad().raw_data() == adam.grad("b").raw_data());
  // A gradient user code replaced is copied in; a dropped one (Tensor::zero_grad) goes home.
  w_handle.set_grad(Tensor::from_vector({5.0, 6.0, 7.0}, {3}, f64()));
  CHECK(max_abs_diff(adam.grad("w").to_vector(), {5.0, 6.0, 7.0}) == 0);
  CHECK(w_handle.grad().raw_data() == adam.grad("w").raw_data());
  w_handle.zero_grad();
  backward(sum(w_handle));
  CHECK(w_handle.grad().raw_data() == adam.grad("w").raw_data());
  CHECK(max_abs_diff(adam.grad("w").to_vector(), {1, 1, 1}) == 0);

  // A parameter whose storage was swapped out (a device move) is reported, not skipped.
  b.impl()->storage = std::make_shared<Storage>(b.nbytes(), Device::cpu());
  b.impl()->offset = 0;
  CHECK_THROWS_WITH_AS(adam.step(), doctest::Contains("parameter 'b' no longer lives"), Error);
}

TEST_CASE("optim: gradients live in a segment per module, from backward to zero_grad") {
  namespace mem = kernels::cpu;
  const TensorOptions opt = f64().with_requires_grad(true);
  // Segments (with no minimum size): a.* (3 and 1 elements, 8 each with the padding to 64
  // bytes), c.* (5 -> 8), and the names without a dot (2 -> 8, 16).
  Named params{{"a.w", Tensor::from_vector({1, 2, 3}, {3}, opt)},
               {"a.b", Tensor::from_vector({4}, {1}, opt)},
               {"c.w", Tensor::from_vector({1, 1, 1, 1, 1}, {5}, opt)},
               {"p", Tensor::zeros({2}, opt)},
               {"q", Tensor::zeros({16}, opt)}};
  Adam adam(params, AdamOptions{}, /*min_segment_bytes=*/0);
  const Tensor x = Tensor::from_vector({1.0, -2.0, 0.5}, {3}, f64());
  // loss = sum(a.w * x) + 3 sum(c.w): backward reaches a.w and c.w only.
  const auto run_backward = [&] {
    backward(add(sum(mul(params[0].second, x)), scale(sum(params[2].second), 3.0)));
  };
  const size_t bytes_without_gradients = mem::bytes_in_use();

  // Backward allocates the segments it writes into, and nothing else stays.
  run_backward();
  CHECK(mem::bytes_in_use() == bytes_without_gradients + (16 + 8) * sizeof(double));
  // The clip settles the rest: the third segment, zero-filled; the norm is over the gradients
  // alone (the padding reads as zero): |x|^2 + 5 * 9.
  CHECK(adam.clip_grad_norm(1e9) == doctest::Approx(std::sqrt(1 + 4 + 0.25 + 45)));
  CHECK(mem::bytes_in_use() == bytes_without_gradients + (16 + 8 + 24) * sizeof(double));
  std::vector<Tensor> segments = adam.grad_segments();
  REQUIRE(segments.size() == 3);
  CHECK(segments[0].numel() == 16);
  CHECK(segments[1].numel() == 8);
  CHECK(segments[2].numel() == 24);
  CHECK(segments[0].to_vector() == std::vector<double>{1, -2, 0.5, 0, 0, 0, 0, 0,  //
                                                       0, 0, 0, 0, 0, 0, 0, 0});
  adam.step();

  // zero_grad gives a segment's memory back only while nothing else holds a view of it: here
  // `segments` holds all three.
  adam.zero_grad();
  CHECK(mem::bytes_in_use() == bytes_without_gradients + (16 + 8 + 24) * sizeof(double));
  segments.clear();
  adam.zero_grad();
  CHECK(mem::bytes_in_use() == bytes_without_gradients);

  // New memory again: backward's values and zeroed padding (under AddressSanitizer new memory
  // is filled with 0xbe bytes, so stale padding would show).
  run_backward();
  CHECK(adam.grad_segments()[0].to_vector() == std::vector<double>{1, -2, 0.5, 0, 0, 0, 0, 0,  //
                                                                   0, 0, 0, 0, 0, 0, 0, 0});
  CHECK(adam.clip_grad_norm(1e9) == doctest::Approx(std::sqrt(1 + 4 + 0.25 + 45)));

  // A gradient user code keeps holds its segment, values and all, across zero_grad.
  Tensor kept = params[2].second.grad();
  adam.zero_grad();
  CHECK(mem::bytes_in_use() == bytes_without_gradients + 8 * sizeof(double));
  CHECK(kept.to_vector() == std::vector<double>{3, 3, 3, 3, 3});
  CHECK_FALSE(params[2].second.grad().defined());
  kept = Tensor();
  adam.zero_grad();
  CHECK(mem::bytes_in_use() == bytes_without_gradients);

  // Two clipped steps with the gradients in three segments and in one (no dots in the names):
  // the same parameters, bit for bit (each segment is padded to 64 bytes, so even the norm's
  // partial sums meet the same elements).
  const auto two_steps = [&](const std::string& a_prefix, const std::string& c_prefix,
                             size_t min_segment_bytes) {
    Named ps{{a_prefix + "w", Tensor::from_vector({1, 2, 3}, {3}, opt)},
             {a_prefix + "b", Tensor::from_vector({4}, {1}, opt)},
             {c_prefix + "w", Tensor::from_vector({1, 1, 1, 1, 1}, {5}, opt)},
             {"p", Tensor::zeros({2}, opt)},
             {"q", Tensor::zeros({16}, opt)}};
    Adam optimizer(ps, AdamOptions{}, min_segment_bytes);
    for (int step = 0; step < 2; ++step) {
      optimizer.zero_grad();
      backward(add(sum(mul(ps[0].second, x)), scale(sum(ps[2].second), 3.0)));
      optimizer.clip_grad_norm(1.0);
      optimizer.step();
    }
    return concat_values(ps);
  };
  CHECK(two_steps("a.", "c.", 0) == two_steps("a_", "c_", 0));
}

TEST_CASE("optim: a module's parameters get a segment of their own only when it is large") {
  // Runs of 2 + 2 + 1 MiB of float32 gradients (a.*, b.*, the undotted names): with a 2 MiB
  // minimum, a and b each get one and the 1 MiB run joins b's; with 4 MiB, all share one.
  const TensorOptions opt = TensorOptions{}.with_requires_grad(true);
  const int64_t mib = 1 << 18;  // floats
  const auto make = [&] {
    return Named{{"a.w", Tensor::zeros({mib}, opt)},
                 {"a.b", Tensor::zeros({mib}, opt)},
                 {"b.w", Tensor::zeros({2 * mib}, opt)},
                 {"p", Tensor::zeros({mib / 2}, opt)},
                 {"q", Tensor::zeros({mib / 2}, opt)}};
  };
  Named two = make();
  Adam by_module(two, AdamOptions{}, size_t{2} << 20);
  const std::vector<Tensor> segments = by_module.grad_segments();
  REQUIRE(segments.size() == 2);
  CHECK(segments[0].numel() == 2 * mib);
  CHECK(segments[1].numel() == 3 * mib);
  Named one = make();
  Adam together(one, AdamOptions{}, size_t{4} << 20);
  CHECK(together.grad_segments().size() == 1);
  // The default minimum (64 MiB) keeps a model of this size in one segment.
  Named small = make();
  CHECK(Adam(small).grad_segments().size() == 1);
}

TEST_CASE("optim: state views restore moments and step count for a resume") {
  const std::vector<double> p0{0.1, 0.2, -0.3};
  const std::vector<std::vector<double>> gs{{1, 2, 3}, {-1, 0.5, 2}, {0.3, -0.2, 0.1}};
  AdamOptions o;
  o.lr = 0.01;
  // Reference: three steps in one run.
  Named ref{{"w", Tensor::from_vector(p0, {3}, f64().with_requires_grad(true))}};
  Adam a(ref, o);
  for (const auto& g : gs) {
    set_grads(ref, g);
    a.step();
  }
  // Resume after two steps into a fresh optimizer.
  Named first{{"w", Tensor::from_vector(p0, {3}, f64().with_requires_grad(true))}};
  Adam b(first, o);
  for (int i = 0; i < 2; ++i) {
    set_grads(first, gs[static_cast<size_t>(i)]);
    b.step();
  }
  Named resumed{{"w", first[0].second.clone().set_requires_grad(true)}};
  Adam c(resumed, o);
  c.set_state("w", b.exp_avg("w").to(DType::f32), b.exp_avg_sq("w"));
  c.set_step_count(b.step_count());
  set_grads(resumed, gs[2]);
  c.step();
  CHECK(c.step_count() == 3);
  // exp_avg went through float32 on the way; the rest is exact.
  CHECK(rel_error(resumed[0].second.to_vector(), ref[0].second.to_vector()) < 1e-6);

  CHECK_THROWS_WITH_AS(c.exp_avg("nope"), doctest::Contains("'nope'"), Error);
  CHECK_THROWS_WITH_AS(c.set_state("w", Tensor::zeros({2}, f64()), Tensor::zeros({3}, f64())),
                       doctest::Contains("(2,)"), Error);
}

TEST_CASE("optim: state_dict and load_state_dict continue a run to the same bits") {
  const std::vector<double> p0{0.1, 0.2, -0.3, 0.7};
  const std::vector<std::vector<double>> gs{{1, 2, 3, -1}, {-1, 0.5, 2, 0}, {0.3, -0.2, 0.1, 4}};
  AdamOptions o;
  o.lr = 0.02;
  o.weight_decay = 0.1;
  o.decoupled = true;
  auto params = [&] {
    return Named{{"a", Tensor::from_vector({p0[0], p0[1]}, {2}, f64().with_requires_grad(true))},
                 {"b", Tensor::from_vector({p0[2], p0[3]}, {2}, f64().with_requires_grad(true))}};
  };
  Named ref = params();  // three steps in one run
  Adam a(ref, o);
  for (const auto& g : gs) {
    set_grads(ref, g);
    a.step();
  }
  Named first = params();  // two steps, then state_dict into a fresh optimizer
  Adam b(first, o);
  for (int i = 0; i < 2; ++i) {
    set_grads(first, gs[static_cast<size_t>(i)]);
    b.step();
  }
  const AdamState state = b.state_dict();
  CHECK(state.step == 2);
  CHECK(state.lr == 0.02);
  CHECK(state.decoupled);
  REQUIRE(state.exp_avg.size() == 2);
  CHECK(state.exp_avg[1].first == "b");
  Named resumed{{"a", first[0].second.clone().set_requires_grad(true)},
                {"b", first[1].second.clone().set_requires_grad(true)}};
  Adam c(resumed, o);
  c.load_state_dict(state);
  set_grads(resumed, gs[2]);
  c.step();
  CHECK(c.step_count() == 3);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(resumed[i].second.to_vector() == ref[i].second.to_vector());
  }

  AdamState missing = state;
  missing.exp_avg_sq.pop_back();
  CHECK_THROWS_WITH_AS(c.load_state_dict(missing),
                       "adam: the state has exp_avg/b but no exp_avg_sq/b", Error);
  AdamState short_state = state;
  short_state.exp_avg.pop_back();
  CHECK_THROWS_WITH_AS(c.load_state_dict(short_state),
                       "adam: the state has moments for 1 tensors, the optimizer has 2", Error);
}

TEST_CASE("optim: Adam rejects mixed dtypes, devices, duplicates and bad options") {
  Tensor a = Tensor::zeros({2}, f32().with_requires_grad(true));
  Tensor b = Tensor::zeros({2}, f64().with_requires_grad(true));
  CHECK_THROWS_WITH_AS(Adam({{"a", a}, {"b", b}}), doctest::Contains("float64"), Error);
  CHECK_THROWS_WITH_AS(Adam({{"a", a}, {"a2", a}}), doctest::Contains("same tensor"), Error);
  CHECK_THROWS_WITH_AS(Adam(Named{}), doctest::Contains("no parameters"), Error);
  AdamOptions bad;
  bad.beta1 = 1.0;
  Tensor c = Tensor::zeros({2}, f32().with_requires_grad(true));
  CHECK_THROWS_WITH_AS(Adam({{"c", c}}, bad), doctest::Contains("beta1 1"), Error);
}

TEST_CASE("optim: learning_rate is linear warmup then cosine to zero") {
  const double base = 1e-2;
  // warmup 20 of 100
  CHECK(learning_rate(1, 100, base, 20) == doctest::Approx(base / 20));
  CHECK(learning_rate(10, 100, base, 20) == doctest::Approx(base / 2));
  CHECK(learning_rate(20, 100, base, 20) == doctest::Approx(base));
  // halfway through the cosine (step 60 = 20 + 40 of 80): cos(pi/2) = 0 -> base/2
  CHECK(learning_rate(60, 100, base, 20) == doctest::Approx(base / 2));
  // a quarter in: (1 + cos(pi/4)) / 2
  CHECK(learning_rate(40, 100, base, 20) == doctest::Approx(base * (1 + std::sqrt(0.5)) / 2));
  CHECK(learning_rate(100, 100, base, 20) == doctest::Approx(0.0));
  CHECK(learning_rate(150, 100, base, 20) == doctest::Approx(0.0));
  // no warmup: step 1 is already on the cosine
  CHECK(learning_rate(1, 5, base, 0) == doctest::Approx(base * (1 + std::cos(M_PI / 5)) / 2));
  // warmup longer than the run: a pure ramp
  CHECK(learning_rate(5, 5, base, 10) == doctest::Approx(base / 2));
  CHECK_THROWS_WITH_AS(learning_rate(0, 5, base, 1), doctest::Contains("step 0"), Error);
  CHECK_THROWS_WITH_AS(learning_rate(1, 5, base, -1), doctest::Contains("warmup -1"), Error);
}

}  // namespace
}  // namespace kvc

namespace kvc {
namespace {

TEST_CASE("optim: Adam on CUDA matches the CPU (clip, L2 and AdamW)") {
  KVC_REQUIRE_CUDA();
  for (const bool decoupled : {false, true}) {
    AdamOptions o;
    o.lr = 1e-2;
    o.weight_decay = 0.05;
    o.decoupled = decoupled;
    const Tensor w0 = Tensor::randn({37, 5}, 3, 0), b0 = Tensor::randn({129}, 3, 1);
    Named cpu{{"w", w0.clone().set_requires_grad(true)}, {"b", b0.clone().set_requires_grad(true)}};
    Named gpu{{"w", w0.to(Device::cuda()).set_requires_grad(true)},
              {"b", b0.to(Device::cuda()).set_requires_grad(true)}};
    Adam a(cpu, o), g(gpu, o);
    for (uint64_t t = 0; t < 4; ++t) {
      const Tensor gw = Tensor::randn({37, 5}, 4, 2 * t, 0.0, 3.0);
      const Tensor gb = Tensor::randn({129}, 4, 2 * t + 1, 0.0, 3.0);
      a.zero_grad();
      g.zero_grad();
      a.grad("w").copy_from(gw);
      a.grad("b").copy_from(gb);
      g.grad("w").copy_from(gw);
      g.grad("b").copy_from(gb);
      a.set_clip_scale(5.0);
      g.set_clip_scale(5.0);
      a.step();
      g.step();
      CHECK(g.last_grad_norm() == doctest::Approx(a.last_grad_norm()).epsilon(1e-5));
    }
    for (const char* name : {"w", "b"}) {
      CHECK(rel_error(g.param(name).to_vector(), a.param(name).to_vector()) < 1e-5);
      CHECK(rel_error(g.exp_avg(name).to_vector(), a.exp_avg(name).to_vector()) < 1e-5);
      CHECK(rel_error(g.exp_avg_sq(name).to_vector(), a.exp_avg_sq(name).to_vector()) < 1e-5);
    }
  }
}

TEST_CASE("cuda: apply_step_with_norm takes the norm in the update, to apply_step's bits") {
  KVC_REQUIRE_CUDA();
  // Two segments (a 1 MiB minimum): a's, and b's with c's joined, which ends in an odd number of
  // elements (the element-by-element tail).
  const int64_t mib = 1 << 18;
  const auto make = [&] {
    return Named{{"a.w", Tensor::randn({mib + 4}, 7, 0).to(Device::cuda()).set_requires_grad(true)},
                 {"b.w", Tensor::randn({mib + 3}, 7, 1).to(Device::cuda()).set_requires_grad(true)},
                 {"c.w", Tensor::randn({37}, 7, 2).to(Device::cuda()).set_requires_grad(true)}};
  };
  AdamOptions o;
  o.lr = 1e-2;
  o.weight_decay = 0.01;
  Named clipped = make(), fused = make();
  Adam first(clipped, o, size_t{1} << 20), inside(fused, o, size_t{1} << 20);
  REQUIRE(inside.grad_segments().size() == 2);
  for (uint64_t t = 0; t < 3; ++t) {
    double sumsq = 0;  // the norm in double on the host, from the same float32 values
    first.zero_grad();
    inside.zero_grad();
    for (size_t i = 0; i < clipped.size(); ++i) {
      const Tensor g = Tensor::randn(clipped[i].second.shape(), 8, 3 * t + i, 0.0, 2.0);
      for (const float v : g.to_vector()) sumsq += static_cast<double>(v) * v;
      first.grad(clipped[i].first).copy_from(g);
      inside.grad(fused[i].first).copy_from(g);
    }
    first.set_clip_scale(std::numeric_limits<double>::infinity());
    first.step();
    inside.stage_step();
    inside.apply_step_with_norm();
    INFO("step ", t);
    CHECK(inside.last_grad_norm() == doctest::Approx(std::sqrt(sumsq)).epsilon(1e-6));
    CHECK(inside.norm_scale().to_vector()[1] == 1.0);
    CHECK(inside.flat_params().to_vector() == first.flat_params().to_vector());
    for (const auto& [name, p] : clipped) {
      CHECK(inside.exp_avg(name).to_vector() == first.exp_avg(name).to_vector());
      CHECK(inside.exp_avg_sq(name).to_vector() == first.exp_avg_sq(name).to_vector());
    }
  }
}

}  // namespace
}  // namespace kvc
