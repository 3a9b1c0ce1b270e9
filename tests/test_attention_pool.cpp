// The attention pools' layer op (attention_pool): on the CPU against SPEC's composition; on CUDA
// the fused tensor-core pass (tf32, bf16) against the float64 CPU values, forward and the
// gradients of the positions and the weight, with disjoint and overlapping blocks.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "tests/test_util.h"
#ifdef KVC_WITH_CUDA
#include "kernels/attention_pool.h"
#include "kernels/memory.h"
#endif

namespace kvc {
namespace {

struct PoolCase {
  int64_t b, h, s, n, d, stride;
  double alpha;
};

struct PoolResult {
  Tensor y, g_positions, g_weight;
};

// y = attention_pool(...) and the gradients of sum(y * gy) for the positions and the weight;
// `reference` spells the layer out as SPEC's composition of plain ops instead.
PoolResult run_pool(const PoolCase& c, DType dtype, Device device, bool reference) {
  const TensorOptions opt = TensorOptions{}.with_dtype(DType::f64);
  Tensor seq = Tensor::randn({c.b, c.h, c.s, c.d}, 501, 0, 0.0, 1.0, opt).to(dtype).to(device);
  Tensor pos = Tensor::randn({c.h, c.n, c.d}, 502, 0, 0.0, 0.5, opt).to(dtype).to(device);
  // Logits of unit spread: x W^T with W ~ N(0, 1/d).
  Tensor weight = Tensor::randn({c.d, c.d}, 503, 0, 0.0, 1.0 / std::sqrt(double(c.d)), opt)
                      .to(dtype)
                      .to(device);
  pos.set_requires_grad(true);
  weight.set_requires_grad(true);
  const int64_t w = (c.s - c.n) / c.stride + 1;
  const Tensor gy = Tensor::randn({c.b, c.h, w, c.d}, 504, 0, 0.0, 1.0, opt).to(dtype).to(device);
  Tensor y;
  if (reference) {  // window by window; the loss is sum over windows of sum(y_i * gy_i)
    std::vector<double> values(static_cast<size_t>(c.b * c.h * w * c.d));
    Tensor loss;
    for (int64_t i = 0; i < w; ++i) {
      const Tensor x = add(reshape(narrow(seq, 2, i * c.stride, c.n), {c.b, c.h, 1, c.n, c.d}),
                           reshape(pos, {1, c.h, 1, c.n, c.d}));
      const Tensor logits = matmul(x, weight, false, /*trans_b=*/true);
      const Tensor yi = sum(mul(x, softmax(scale(logits, c.alpha), -2)), -2);  // (b, h, 1, d)
      const Tensor li = sum(mul(yi, narrow(gy, 2, i, 1)));
      loss = loss.defined() ? add(loss, li) : li;
      const std::vector<double> v = yi.to_vector();
      for (size_t k = 0; k < v.size(); ++k) {
        const int64_t bh = static_cast<int64_t>(k) / c.d, e = static_cast<int64_t>(k) % c.d;
        values[static_cast<size_t>((bh * w + i) * c.d + e)] = v[k];
      }
    }
    backward(loss);
    y = Tensor::from_vector(values, {c.b, c.h, w, c.d}, opt);
  } else {
    y = attention_pool(seq, pos, weight, c.n, c.stride, c.alpha);
    backward(y, gy);
  }
  return {y.to(DType::f64).to(Device::cpu()), pos.grad().to(DType::f64).to(Device::cpu()),
          weight.grad().to(DType::f64).to(Device::cpu())};
}

TEST_CASE("attention_pool: equals SPEC's composition on the CPU, disjoint and overlapping blocks") {
  const std::vector<PoolCase> cases = {{2, 3, 20, 4, 5, 4, 0.7}, {1, 2, 23, 6, 4, 2, 1.3}};
  for (const PoolCase& c : cases) {
    CAPTURE(c.n);
    CAPTURE(c.stride);
    const PoolResult got = run_pool(c, DType::f64, Device::cpu(), false);
    const PoolResult want = run_pool(c, DType::f64, Device::cpu(), true);
    CHECK(test::rel_error(got.y, want.y) < 1e-13);
    CHECK(test::rel_error(got.g_positions, want.g_positions) < 1e-13);
    CHECK(test::rel_error(got.g_weight, want.g_weight) < 1e-13);
  }
}

TEST_CASE("attention_pool: mismatched shapes are refused with both shapes named") {
  const TensorOptions opt = TensorOptions{}.with_dtype(DType::f64);
  const Tensor seq = Tensor::zeros({1, 2, 8, 4}, opt), pos = Tensor::zeros({2, 4, 4}, opt);
  CHECK_THROWS_WITH_AS(attention_pool(seq, pos, Tensor::zeros({4, 3}, opt), 4, 4, 1.0),
                       "attention_pool: input (1, 2, 8, 4) (b, h, s, d) and weight (4, 3) (d, d) "
                       "do not fit",
                       Error);
}

#ifdef KVC_WITH_CUDA
// The fused kernels against float64 on the CPU: tf32 rounds the GEMM operands to 10 mantissa
// bits, bf16 to 7, so with unit-spread logits the errors are ~3e-4 (tf32) and ~3e-3 (bf16)
// norm-wise; the bounds leave 10x. In tf32 and bf16 the error must also exceed `floor`, above
// what float32 arithmetic gives (< 1e-5): the rounded path really ran. fp32 splits each operand
// into two TF32 parts (three products) and must stay near float32's own rounding.
void check_fused(kernels::MathPrecision precision, double tol, double floor) {
  // (b, h, s, n, d, stride): every (n, d) kernel; a dropped tail; overlapping windows; more
  // windows per head than CTAs (several per CTA) and fewer (b = 1, short sequences).
  const std::vector<PoolCase> cases = {
      {2, 3, 200, 16, 64, 16, 1.0},    {1, 2, 300, 32, 128, 8, 0.088},
      {2, 1, 130, 64, 64, 64, 0.125},  {1, 1, 64, 16, 128, 16, 1.0},
      {3, 2, 4100, 32, 64, 32, 1.0},   {1, 1, 100, 64, 128, 12, 1.0},
      {1, 8, 2048, 32, 128, 32, 0.088}};
  test::PrecisionScope scope(precision);
  for (const PoolCase& c : cases) {
    CAPTURE(c.b);
    CAPTURE(c.h);
    CAPTURE(c.s);
    CAPTURE(c.n);
    CAPTURE(c.d);
    CAPTURE(c.stride);
    REQUIRE(kernels::cuda::attention_pool_fits(c.n, c.d));
    const PoolResult want = run_pool(c, DType::f64, Device::cpu(), false);
    const PoolResult got = run_pool(c, DType::f32, Device::cuda(), false);
    const double ey = test::rel_error(got.y, want.y);
    const double ep = test::rel_error(got.g_positions, want.g_positions);
    const double ew = test::rel_error(got.g_weight, want.g_weight);
    MESSAGE(std::string(kernels::precision_name(precision)), " rel error y ", ey, ", positions ",
            ep, ", weight ", ew);
    CHECK(ey < tol);
    CHECK(ep < tol);
    CHECK(ew < tol);
    CHECK(ey > floor);
    CHECK(ew > floor);
    // The fixed order of the CTA sums: the same inputs give the same bits.
    const PoolResult again = run_pool(c, DType::f32, Device::cuda(), false);
    CHECK(again.g_weight.to_vector() == got.g_weight.to_vector());
    CHECK(again.g_positions.to_vector() == got.g_positions.to_vector());
  }
}
#endif

TEST_CASE("cuda: fused attention_pool (fp32, tf32, bf16) matches the CPU, forward and backward") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  check_fused(kernels::MathPrecision::fp32, 2e-5, 0.0);  // three TF32 products: ~float32
  check_fused(kernels::MathPrecision::tf32, 5e-3, 1e-5);
  check_fused(kernels::MathPrecision::bf16, 2.5e-2, 1e-5);
#endif
}

TEST_CASE(
    "cuda: fused attention_pool adds onto existing gradients and leaves seq's to the "
    "composition") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  test::PrecisionScope scope(kernels::MathPrecision::tf32);
  const PoolCase c{2, 2, 96, 16, 64, 16, 1.0};
  const TensorOptions gpu = TensorOptions{}.with_device(Device::cuda());
  Tensor seq = Tensor::randn({c.b, c.h, c.s, c.d}, 601, 0, 0.0, 1.0, gpu);
  Tensor pos = Tensor::randn({c.h, c.n, c.d}, 602, 0, 0.0, 0.5, gpu);
  Tensor weight = Tensor::randn({c.d, c.d}, 603, 0, 0.0, 0.125, gpu);
  pos.set_requires_grad(true);
  weight.set_requires_grad(true);
  backward(sum(attention_pool(seq, pos, weight, c.n, c.stride, c.alpha)));
  const std::vector<double> once_p = pos.grad().to_vector(), once_w = weight.grad().to_vector();
  backward(sum(attention_pool(seq, pos, weight, c.n, c.stride, c.alpha)));  // accumulates
  const std::vector<double> twice_p = pos.grad().to_vector(), twice_w = weight.grad().to_vector();
  for (size_t i = 0; i < once_p.size(); ++i) CHECK(twice_p[i] == doctest::Approx(2 * once_p[i]));
  for (size_t i = 0; i < once_w.size(); ++i) CHECK(twice_w[i] == doctest::Approx(2 * once_w[i]));

  // A sequence that needs its gradient takes the composition: every gradient is there and
  // matches the CPU's.
  seq.set_requires_grad(true);
  pos.zero_grad();
  weight.zero_grad();
  backward(sum(attention_pool(seq, pos, weight, c.n, c.stride, c.alpha)));
  REQUIRE(seq.grad().defined());
  Tensor seq_c = seq.detach().to(Device::cpu()).to(DType::f64);
  Tensor pos_c = pos.detach().to(Device::cpu()).to(DType::f64);
  Tensor w_c = weight.detach().to(Device::cpu()).to(DType::f64);
  seq_c.set_requires_grad(true);
  pos_c.set_requires_grad(true);
  w_c.set_requires_grad(true);
  backward(sum(attention_pool(seq_c, pos_c, w_c, c.n, c.stride, c.alpha)));
  CHECK(test::rel_error(seq.grad().to(Device::cpu()).to(DType::f64), seq_c.grad()) < 5e-3);
  CHECK(test::rel_error(pos.grad().to(Device::cpu()).to(DType::f64), pos_c.grad()) < 5e-3);
  CHECK(test::rel_error(weight.grad().to(Device::cpu()).to(DType::f64), w_c.grad()) < 5e-3);
#endif
}

TEST_CASE(
    "cuda: under ShareBf16Copies the attention target reads the bf16 K and V the bf16 pools' "
    "forward wrote") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  test::PrecisionScope scope(kernels::MathPrecision::bf16);
  const int64_t b = 2, h = 2, s = 256, d = 64, n = 16, nq = 32;
  const TensorOptions gpu = TensorOptions{}.with_device(Device::cuda());
  const Tensor k = Tensor::randn({b, h, s, d}, 611, 0, 0.0, 1.0, gpu);
  const Tensor v = Tensor::randn({b, h, s, d}, 612, 0, 0.0, 1.0, gpu);
  const Tensor q = Tensor::randn({b, h, nq, d}, 613, 0, 0.0, 1.0, gpu);
  Tensor pos = Tensor::randn({h, n, d}, 614, 0, 0.0, 0.5, gpu);
  Tensor weight = Tensor::randn({d, d}, 615, 0, 0.0, 0.125, gpu);
  pos.set_requires_grad(true);
  weight.set_requires_grad(true);
  const size_t copy_bytes = static_cast<size_t>(k.numel()) * 2;

  // Both pools' outputs and the target's values, and the bytes the target allocated at its peak.
  struct Run {
    std::vector<double> pooled, target;
    size_t target_bytes = 0;
  };
  const auto run = [&](bool share, int64_t stride) {
    std::unique_ptr<ShareBf16Copies> shared;
    if (share) shared = std::make_unique<ShareBf16Copies>(std::vector<Tensor>{k, v});
    Run r;
    for (const Tensor* x : {&k, &v}) {
      const std::vector<double> y = attention_pool(*x, pos, weight, n, stride, 1.0).to_vector();
      r.pooled.insert(r.pooled.end(), y.begin(), y.end());
    }
    const size_t before = kernels::cuda::allocator_stats().bytes_in_use;
    kernels::cuda::reset_peak_stats();
    NoGradGuard no_grad;
    r.target = attention_target(q, k, v, 0.125).to_vector();
    r.target_bytes = kernels::cuda::allocator_stats().peak_bytes_in_use - before;
    return r;
  };
  // stride n: the windows tile K and V, the pools write both copies and the target rounds
  // nothing; stride n / 2: overlapping windows, the target rounds both itself.
  for (const int64_t stride : {n, n / 2}) {
    CAPTURE(stride);
    const Run own = run(false, stride), shared = run(true, stride);
    MESSAGE("stride ", stride, ": target's peak allocation ", own.target_bytes,
            " bytes rounding K and V, ", shared.target_bytes, " under the scope (a copy is ",
            copy_bytes, ")");
    CHECK(shared.pooled == own.pooled);
    CHECK(shared.target == own.target);
    if (stride == n) {
      CHECK(own.target_bytes >= shared.target_bytes + 2 * copy_bytes);
    } else {
      CHECK(own.target_bytes == shared.target_bytes);
    }
  }
#endif
}

}  // namespace
}  // namespace kvc
