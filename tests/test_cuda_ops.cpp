// Every op of core/ops.h on CUDA against the CPU backend (forward and the gradient of every
// input, float32 and float64, shapes chosen to reach each kernel path), plus float64 gradchecks
// run entirely on the GPU.
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/gradcheck.h"
#include "core/ops.h"
#include "tests/reference/conv1d.h"
#include "tests/test_util.h"

namespace kvc {
namespace {

using Inputs = std::vector<Tensor>;
using OpFn = std::function<Tensor(const Inputs&)>;

// One input: normal(0, 1), or uniform on [low, high) when low < high (divisors, etc.).
struct InputSpec {
  Shape shape;
  double low = 0.0, high = 0.0;
};

struct OpCase {
  std::string name;
  std::vector<InputSpec> inputs;  // CUDA-vs-CPU comparison: sizes that reach every kernel path
  std::vector<InputSpec> small;   // gradcheck: few elements (two evaluations per element)
  OpFn f;
};

Inputs make_inputs(const std::vector<InputSpec>& specs, DType dtype, Device device, uint64_t seed) {
  Inputs out;
  for (size_t i = 0; i < specs.size(); ++i) {
    const InputSpec& s = specs[i];
    const TensorOptions opt = TensorOptions{}.with_dtype(dtype);
    // Drawn on the CPU, then copied: both backends see the very same values.
    Tensor t = s.low < s.high ? Tensor::rand(s.shape, seed + i, 7, s.low, s.high, opt)
                              : Tensor::randn(s.shape, seed + i, 7, 0.0, 1.0, opt);
    out.push_back(device.is_cpu() ? t : t.to(device));
  }
  return out;
}

// The CUDA-vs-CPU comparison of one op at one dtype: forward, then backward with the same seed
// gradient, then every input's gradient.
void compare_devices(const OpCase& c, DType dtype, double tol) {
  INFO("op ", c.name, ", dtype ", std::string(dtype_name(dtype)));
  Inputs cpu = make_inputs(c.inputs, dtype, Device::cpu(), 1000);
  Inputs gpu;
  for (Tensor& t : cpu) {
    gpu.push_back(t.to(Device::cuda()));
    gpu.back().set_requires_grad(true);
    t.set_requires_grad(true);
  }
  // One device at a time: backward() frees the thread's whole tape.
  const Tensor y_cpu = c.f(cpu);
  const Tensor seed = Tensor::randn(y_cpu.shape(), 99, 0, 0.0, 1.0, y_cpu.options());
  backward(y_cpu, seed);
  const Tensor y_gpu = c.f(gpu);
  REQUIRE(y_gpu.device().is_cuda());
  REQUIRE(y_gpu.shape() == y_cpu.shape());
  const double fwd = test::rel_error(y_gpu, y_cpu);
  INFO("forward rel error ", fwd);
  CHECK(fwd <= tol);
  backward(y_gpu, seed.to(Device::cuda()));
  for (size_t i = 0; i < cpu.size(); ++i) {
    INFO("gradient of input ", i, " ", cpu[i].shape());
    REQUIRE(cpu[i].grad().defined() == gpu[i].grad().defined());
    if (!cpu[i].grad().defined()) continue;
    CHECK(gpu[i].grad().device().is_cuda());
    const double err = test::rel_error(gpu[i].grad(), cpu[i].grad());
    INFO("backward rel error ", err);
    CHECK(err <= tol);
  }
}

void gradcheck_on_cuda(const OpCase& c) {
  INFO("op ", c.name, " (float64 gradcheck on cuda)");
  const Inputs x = make_inputs(c.small, DType::f64, Device::cuda(), 2000);
  std::vector<std::pair<std::string, Tensor>> named;
  for (size_t i = 0; i < x.size(); ++i) named.push_back({"input" + std::to_string(i), x[i]});
  const auto results = gradcheck([&] { return c.f(x); }, named);
  for (const GradcheckResult& r : results) {
    INFO(r.tensor, ": max abs ", r.max_abs_error, ", max rel ", r.max_rel_error, ", worst index ",
         r.worst_index, " analytic ", r.worst_analytic, " numeric ", r.worst_numeric);
    CHECK(r.passed);
  }
}

const std::vector<OpCase>& cases() {
  static const std::vector<OpCase> all = [] {
    std::vector<OpCase> v;
    auto add_case = [&](std::string name, std::vector<InputSpec> in, std::vector<InputSpec> sm,
                        OpFn f) {
      v.push_back({std::move(name), std::move(in), std::move(sm), f});
    };
    const InputSpec pos_big{{4, 3, 5, 6}, 0.5, 2.0}, pos_small{{3, 1}, 0.5, 2.0};

    // Elementwise, with broadcasting from either side (the backward runs sum_to).
    add_case("add same shape", {{{1000, 37}}, {{1000, 37}}}, {{{2, 3}}, {{2, 3}}},
             [](const Inputs& x) { return add(x[0], x[1]); });
    add_case("add broadcast both", {{{4, 1, 5, 6}}, {{1, 3, 1, 6}}}, {{{2, 1, 3}}, {{1, 2, 1}}},
             [](const Inputs& x) { return add(x[0], x[1]); });
    add_case("add bias over many rows", {{{3000, 70, 33}}, {{33}}}, {{{4, 3}}, {{3}}},
             [](const Inputs& x) { return add(x[0], x[1]); });
    // A per-head bias over (b, h, w, n): the backward sums (b, w) at once in two passes.
    add_case("add per-head bias, long rows", {{{5, 3, 301, 70}}, {{1, 3, 1, 70}}},
             {{{2, 2, 3, 2}}, {{1, 2, 1, 2}}}, [](const Inputs& x) { return add(x[0], x[1]); });
    add_case("add leading broadcast", {{{9, 20000}}, {{5, 1, 20000}}}, {{{2, 3}}, {{2, 1, 3}}},
             [](const Inputs& x) { return add(x[0], x[1]); });
    add_case("mul row scale, long rows", {{{300, 400}}, {{300, 1}}}, {{{2, 3}}, {{2, 1}}},
             [](const Inputs& x) { return mul(x[0], x[1]); });
    add_case("mul row scale, few very long rows", {{{3, 70001}}, {{3, 1}}}, {{{2, 3}}, {{2, 1}}},
             [](const Inputs& x) { return mul(x[0], x[1]); });
    // Blocks of a sequence's kept prefix plus per-head positions: long rows, strided input.
    add_case("add_block_positions", {{{2, 3, 73, 64}}, {{3, 5, 64}}}, {{{2, 2, 7, 3}}, {{2, 3, 3}}},
             [](const Inputs& x) { return add_block_positions(x[0], x[1], x[1].shape()[1]); });
    // softmax_pool: n within the register-cached backward and beyond it; x also feeds a plain
    // sum, so its gradient is accumulated onto another.
    add_case("softmax_pool cached n", {{{7, 5, 300}}, {{7, 5, 300}}}, {{{2, 3, 4}}, {{2, 3, 4}}},
             [](const Inputs& x) { return add(softmax_pool(x[0], x[1], 0.7), sum(x[0], -2)); });
    add_case("softmax_pool long n", {{{3, 40, 50}}, {{3, 40, 50}}}, {{{2, 3, 4}}, {{2, 3, 4}}},
             [](const Inputs& x) { return softmax_pool(x[0], x[1], 0.7); });
    // The attention pools' layer, overlapping blocks: d = 8 has no fused kernel, so both
    // devices run the composition (the fused pass: tests/test_attention_pool.cpp).
    add_case("attention_pool", {{{2, 3, 40, 8}}, {{3, 5, 8}}, {{8, 8}}},
             {{{1, 2, 7, 3}}, {{2, 3, 3}}, {{3, 3}}}, [](const Inputs& x) {
               return attention_pool(x[0], x[1], x[2], x[1].shape()[1], 2, 0.7);
             });
    // The MLP kinds' two layers: float32 on CUDA is the cuBLASLt pass (its products in fp32),
    // float64 the composition (the pass in tf32 and bf16: tests/test_two_layer_mlp.cpp).
    add_case("two_layer_mlp per head, relu",
             {{{2, 3, 40, 48}}, {{3, 48, 72}}, {{3, 72}}, {{3, 72, 16}}, {{3, 16}}},
             {{{1, 2, 2, 3}}, {{2, 3, 4}}, {{2, 4}}, {{2, 4, 2}}, {{2, 2}}}, [](const Inputs& x) {
               return two_layer_mlp(x[0], x[1], x[2], Activation::relu, x[3], x[4]);
             });
    add_case("two_layer_mlp shared, gelu",
             {{{2, 3, 40, 48}}, {{72, 48}}, {{72}}, {{16, 72}}, {{16}}},
             {{{1, 2, 2, 3}}, {{4, 3}}, {{4}}, {{2, 4}}, {{2}}}, [](const Inputs& x) {
               return two_layer_mlp(x[0], x[1], x[2], Activation::gelu, x[3], x[4]);
             });
    // With the rows shifted (the positions of blocks), both weight layouts.
    add_case(
        "two_layer_mlp per head, relu, shifted",
        {{{2, 3, 40, 48}}, {{3, 48, 72}}, {{3, 72}}, {{3, 72, 16}}, {{3, 16}}, {{1, 3, 1, 48}}},
        {{{1, 2, 2, 3}}, {{2, 3, 4}}, {{2, 4}}, {{2, 4, 2}}, {{2, 2}}, {{1, 2, 1, 3}}},
        [](const Inputs& x) {
          return two_layer_mlp(x[0], x[1], x[2], Activation::relu, x[3], x[4], x[5]);
        });
    add_case("two_layer_mlp shared, gelu, shifted",
             {{{2, 3, 40, 48}}, {{72, 48}}, {{72}}, {{16, 72}}, {{16}}, {{1, 3, 1, 48}}},
             {{{1, 2, 2, 3}}, {{4, 3}}, {{4}}, {{2, 4}}, {{2}}, {{1, 2, 1, 3}}},
             [](const Inputs& x) {
               return two_layer_mlp(x[0], x[1], x[2], Activation::gelu, x[3], x[4], x[5]);
             });
    add_case("sub", {{{4, 3, 5, 6}}, {{3, 1, 6}}}, {{{2, 3}}, {{3}}},
             [](const Inputs& x) { return sub(x[0], x[1]); });
    add_case("mul", {{{4, 3, 5, 6}}, {{4, 3, 1, 1}}}, {{{2, 3}}, {{2, 1}}},
             [](const Inputs& x) { return mul(x[0], x[1]); });
    add_case("div", {{{4, 3, 5, 6}}, pos_big}, {{{3, 2}}, pos_small},
             [](const Inputs& x) { return div(x[0], x[1]); });
    add_case("neg", {{{513, 7}}}, {{{5}}}, [](const Inputs& x) { return neg(x[0]); });
    add_case("scale", {{{513, 7}}}, {{{5}}}, [](const Inputs& x) { return scale(x[0], -1.75); });
    add_case("add_scalar", {{{513, 7}}}, {{{5}}},
             [](const Inputs& x) { return add_scalar(x[0], 0.5); });

    // Reductions: short rows (warp), long rows (block), very long rows (two passes), columns,
    // columns split along a long axis.
    add_case("sum all, two passes", {{{1000, 1000}}}, {{{3, 4}}},
             [](const Inputs& x) { return sum(x[0]); });
    add_case("sum last axis short", {{{777, 33}}}, {{{3, 4}}},
             [](const Inputs& x) { return sum(x[0], -1); });
    add_case("sum last axis long", {{{300, 5000}}}, {{{2, 5}}},
             [](const Inputs& x) { return sum(x[0], 1, true); });
    add_case("sum last axis very long", {{{3, 400000}}}, {{{2, 5}}},
             [](const Inputs& x) { return sum(x[0], 1); });
    add_case("sum middle axis", {{{6, 50, 40}}}, {{{2, 3, 2}}},
             [](const Inputs& x) { return sum(x[0], 1); });
    add_case("sum first axis long", {{{200000, 40}}}, {{{5, 2}}},
             [](const Inputs& x) { return sum(x[0], 0); });
    // Short middle axes over many 16-byte column groups: one thread per four columns.
    add_case("mean middle axis short (block means)", {{{8192, 16, 64}}}, {{{3, 4, 4}}},
             [](const Inputs& x) { return mean(x[0], 1); });
    add_case("sum first axis short, wide", {{{4, 300000}}}, {{{3, 8}}},
             [](const Inputs& x) { return sum(x[0], 0); });
    add_case("mean all", {{{37, 41}}}, {{{3, 4}}}, [](const Inputs& x) { return mean(x[0]); });
    add_case("mean axis", {{{4, 9, 5}}}, {{{2, 3, 2}}},
             [](const Inputs& x) { return mean(x[0], -2, true); });
    add_case("sum_to", {{{4, 3, 5, 6}}}, {{{2, 3, 2}}}, [](const Inputs& x) {
      return sum_to(x[0], x[0].dim() == 4 ? Shape{1, 3, 1, 6} : Shape{1, 3, 1});
    });

    // Shape ops: the tiled transpose (innermost axis moves), the generic copy (it stays),
    // size-1 axes, ragged tile edges.
    add_case("reshape", {{{4, 6, 5}}}, {{{2, 3}}}, [](const Inputs& x) {
      return reshape(x[0], {-1, x[0].size(-1) * 1});
    });
    add_case("permute compressor rearrange", {{{2, 3, 5, 8, 16}}}, {{{1, 2, 2, 3, 2}}},
             [](const Inputs& x) {
               return permute(x[0], {0, 1, 4, 2, 3});
             });
    add_case("permute keeps inner", {{{3, 4, 5}}}, {{{2, 3, 2}}}, [](const Inputs& x) {
      return permute(x[0], {1, 0, 2});
    });
    add_case("permute reverse", {{{3, 33, 65}}}, {{{2, 3, 2}}}, [](const Inputs& x) {
      return permute(x[0], {2, 1, 0});
    });
    add_case("permute size-1 axes", {{{1, 45, 1, 70}}}, {{{1, 3, 1, 2}}}, [](const Inputs& x) {
      return permute(x[0], {3, 2, 1, 0});
    });
    add_case("narrow", {{{4, 10, 6}}}, {{{2, 5, 2}}},
             [](const Inputs& x) { return narrow(x[0], 1, 2, 3); });

    // Linear algebra.
    add_case("matmul batched", {{{3, 17, 33}}, {{3, 33, 9}}}, {{{2, 2, 3}}, {{2, 3, 2}}},
             [](const Inputs& x) { return matmul(x[0], x[1]); });
    add_case("matmul trans_a trans_b", {{{2, 33, 17}}, {{2, 9, 33}}}, {{{2, 3, 2}}, {{2, 2, 3}}},
             [](const Inputs& x) { return matmul(x[0], x[1], true, true); });
    add_case("matmul shared weight", {{{5, 7, 12}}, {{12, 6}}}, {{{2, 2, 3}}, {{3, 2}}},
             [](const Inputs& x) { return matmul(x[0], x[1]); });
    add_case("matmul shared weight trans", {{{5, 12, 7}}, {{6, 12}}}, {{{2, 3, 2}}, {{2, 3}}},
             [](const Inputs& x) { return matmul(x[0], x[1], true, true); });
    add_case("mix", {{{2, 3, 5, 8}}, {{3, 8, 6}}, {{3, 6}}},
             {{{1, 2, 2, 3}}, {{2, 3, 2}}, {{2, 2}}},
             [](const Inputs& x) { return mix(x[0], x[1], x[2]); });
    add_case("mix one row a head (a shifted bias)", {{{1, 3, 1, 8}}, {{3, 8, 12}}, {{3, 12}}},
             {{{1, 2, 1, 3}}, {{2, 3, 2}}, {{2, 2}}},
             [](const Inputs& x) { return mix(x[0], x[1], x[2]); });
    add_case("mix no bias", {{{4, 2, 3, 5, 8}}, {{3, 8, 6}}}, {{{2, 2, 3}}, {{2, 3, 2}}},
             [](const Inputs& x) { return mix(x[0], x[1], Tensor()); });
    add_case("conv1d kernel == stride, grouped", {{{2, 8, 24}}, {{8, 4, 4}}, {{8}}},
             {{{1, 4, 4}}, {{4, 2, 2}}, {{4}}},
             [](const Inputs& x) { return conv1d(x[0], x[1], x[2], x[1].size(2), 2); });
    add_case("conv1d overlapping windows", {{{3, 6, 21}}, {{4, 3, 5}}, {{4}}},
             {{{2, 2, 7}}, {{2, 1, 3}}, {{2}}},
             [](const Inputs& x) { return conv1d(x[0], x[1], x[2], 2, 2); });
    add_case("conv1d pointwise", {{{2, 6, 10}}, {{9, 2, 1}}, {{9}}},
             {{{2, 3, 3}}, {{3, 1, 1}}, {{3}}},
             [](const Inputs& x) { return conv1d(x[0], x[1], x[2], 1, 3); });
    add_case("conv1d pointwise batch 1", {{{1, 4, 7}}, {{5, 4, 1}}}, {{{1, 2, 3}}, {{2, 2, 1}}},
             [](const Inputs& x) { return conv1d(x[0], x[1], Tensor(), 1, 1); });
    add_case("conv1d compressor shape", {{{4, 2 * 32, 8 * 16}}, {{64, 32, 8}}, {{64}}},
             {{{1, 4, 6}}, {{4, 2, 3}}, {{4}}},
             [](const Inputs& x) { return conv1d(x[0], x[1], x[2], x[1].size(2), 2); });

    // Activations and dropout.
    add_case("softmax last axis short", {{{37, 10}}}, {{{2, 4}}},
             [](const Inputs& x) { return softmax(x[0], -1); });
    add_case("softmax last axis long", {{{5, 3000}}}, {{{1, 6}}},
             [](const Inputs& x) { return softmax(x[0], -1); });
    add_case("softmax last axis past the cached row", {{{3, 5000}}}, {{{1, 6}}},
             [](const Inputs& x) { return softmax(x[0], -1); });
    add_case("softmax middle axis", {{{4, 7, 9}}}, {{{2, 3, 2}}},
             [](const Inputs& x) { return softmax(x[0], 1); });
    add_case("relu", {{{1001, 3}}}, {{{7}}}, [](const Inputs& x) { return relu(x[0]); });
    add_case("gelu", {{{1001, 3}}}, {{{7}}}, [](const Inputs& x) { return gelu(x[0]); });
    add_case("dropout", {{{1001, 3}}}, {{{9}}},
             [](const Inputs& x) { return dropout(x[0], 0.3, true, 1234, 56); });
    add_case("dropout eval", {{{100}}}, {{{4}}},
             [](const Inputs& x) { return mul(dropout(x[0], 0.3, false, 1, 2), x[0]); });

    // Losses.
    add_case("mse_loss two passes", {{{7, 50000}}, {{7, 50000}}}, {{{2, 3}}, {{2, 3}}},
             [](const Inputs& x) { return mse_loss(x[0], x[1]); });
    add_case("mse_loss one block", {{{9, 5}}, {{9, 5}}}, {{{4}}, {{4}}},
             [](const Inputs& x) { return mse_loss(x[0], x[1]); });
    return v;
  }();
  return all;
}

TEST_CASE("cuda: every op matches the CPU in float32 and float64 forward and backward") {
  KVC_REQUIRE_CUDA();
  for (const OpCase& c : cases()) {
    compare_devices(c, DType::f32, 1e-5);
    compare_devices(c, DType::f64, 1e-12);
  }
}

TEST_CASE("cuda: float64 gradcheck of every op on the GPU") {
  KVC_REQUIRE_CUDA();
  for (const OpCase& c : cases()) gradcheck_on_cuda(c);
}

TEST_CASE("cuda: a composite graph (attention pool) matches the CPU") {
  KVC_REQUIRE_CUDA();
  // x (b, h, w, n, d) -> softmax over n of x W^T, pooled: the attention_pool compressor.
  OpCase c{"attention pool",
           {{{2, 2, 6, 8, 16}}, {{16, 16}}},
           {{{1, 1, 2, 3, 2}}, {{2, 2}}},
           [](const Inputs& x) {
             const Tensor logits = matmul(x[0], x[1], false, true);
             const Tensor a = softmax(logits, -2);
             return sum(mul(x[0], a), -2);
           }};
  compare_devices(c, DType::f32, 1e-5);
  compare_devices(c, DType::f64, 1e-12);
  gradcheck_on_cuda(c);
}

}  // namespace
}  // namespace kvc
