// The MLP kinds' two-layer op (two_layer_mlp): float64 gradcheck of the composition on the CPU;
// on CUDA the cuBLASLt pass (epilogue bias and ReLU, hidden activations in the operand type; under
// bf16 also the mma.sync kernels: GELU's second product, the one-pass hidden gradient, W1's
// rounding with the shift) against the float64 CPU values, forward and every gradient, in fp32,
// tf32 and bf16, for both weight layouts, both activations, both bias layouts, shifted rows and
// enhanced_mlp's residual.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "kernels/memory.h"
#include "kernels/mlp.h"
#include "tests/test_util.h"

namespace kvc {
namespace {

struct MlpCase {
  int64_t b, h, w, in, hidden, out;
  bool shared;       // F.linear's weights (hidden, in), (out, hidden) for every head
  bool head_biases;  // b1 (h, hidden), b2 (h, out); else (hidden), (out)
  Activation act;
  bool shifted = false;  // the rows of head h read x + shift[h], shift (1, h, 1, in)
  // enhanced_mlp's residual: y = the mean of each row's `residual` groups of out values + scale
  // times the MLP (in = residual out); 0: none.
  int64_t residual = 0;
};

std::string describe(const MlpCase& c) {
  return str("b ", c.b, " h ", c.h, " w ", c.w, " in ", c.in, " hidden ", c.hidden, " out ", c.out,
             c.shared ? " shared" : " per-head", c.head_biases ? " head-biases" : " biases",
             c.act == Activation::relu ? " relu" : " gelu", c.shifted ? " shifted" : "",
             c.residual ? str(" residual ", c.residual) : std::string());
}

// x, w1, b1, w2, b2 (then the shift, then the residual's scale) for a case as float64 CPU
// tensors; weights of fan-in scale so the hidden pre-activations have unit spread.
std::vector<Tensor> make_inputs(const MlpCase& c, uint64_t seed) {
  const TensorOptions opt = TensorOptions{}.with_dtype(DType::f64);
  const double s1 = 1.0 / std::sqrt(double(c.in)), s2 = 1.0 / std::sqrt(double(c.hidden));
  const Shape w1 = c.shared ? Shape{c.hidden, c.in} : Shape{c.h, c.in, c.hidden};
  const Shape w2 = c.shared ? Shape{c.out, c.hidden} : Shape{c.h, c.hidden, c.out};
  const Shape b1 = c.head_biases ? Shape{c.h, c.hidden} : Shape{c.hidden};
  const Shape b2 = c.head_biases ? Shape{c.h, c.out} : Shape{c.out};
  std::vector<Tensor> x = {
      Tensor::randn({c.b, c.h, c.w, c.in}, seed, 0, 0.0, 1.0, opt),
      Tensor::randn(w1, seed + 1, 0, 0.0, s1, opt), Tensor::randn(b1, seed + 2, 0, 0.0, 0.5, opt),
      Tensor::randn(w2, seed + 3, 0, 0.0, s2, opt), Tensor::randn(b2, seed + 4, 0, 0.0, 0.5, opt)};
  if (c.shifted) x.push_back(Tensor::randn({1, c.h, 1, c.in}, seed + 5, 0, 0.0, 0.5, opt));
  if (c.residual) x.push_back(Tensor::randn({1}, seed + 6, 0, 1.0, 0.3, opt));
  return x;
}

Tensor run(const MlpCase& c, const std::vector<Tensor>& x) {
  return two_layer_mlp(x[0], x[1], x[2], c.act, x[3], x[4], c.shifted ? x[5] : Tensor(),
                       {c.residual, c.residual ? x.back() : Tensor()});
}

const std::vector<MlpCase>& small_cases() {
  static const std::vector<MlpCase> all = {
      {2, 3, 4, 5, 6, 3, false, true, Activation::relu},
      {1, 2, 3, 4, 7, 2, true, true, Activation::relu},
      {2, 2, 3, 4, 5, 3, false, false, Activation::gelu},
      {2, 3, 2, 3, 4, 2, true, false, Activation::gelu},
      {2, 3, 4, 5, 6, 3, false, true, Activation::relu, true},
      {1, 2, 3, 4, 7, 2, true, true, Activation::relu, true},
      {2, 2, 3, 4, 5, 3, false, false, Activation::gelu, true},
      {2, 3, 2, 3, 4, 2, true, false, Activation::gelu, true},
      {2, 3, 4, 6, 5, 2, false, true, Activation::gelu, true, 3},
      {2, 2, 3, 4, 5, 2, false, false, Activation::gelu, false, 2},
      {1, 2, 3, 6, 4, 3, true, true, Activation::relu, true, 2},
  };
  return all;
}

TEST_CASE("two_layer_mlp: float64 gradcheck of every input, both layouts and activations") {
  for (const MlpCase& c : small_cases()) {
    CAPTURE(describe(c));
    std::vector<Tensor> x = make_inputs(c, 700);
    for (Tensor& t : x) t.set_requires_grad(true);
    test::check_gradients([&](const std::vector<Tensor>& in) { return run(c, in); }, x);
  }
}

TEST_CASE("two_layer_mlp: mismatched weights and biases are refused with the shapes named") {
  const TensorOptions opt = TensorOptions{}.with_dtype(DType::f64);
  const Tensor x = Tensor::zeros({1, 2, 3, 4}, opt);
  CHECK_THROWS_WITH_AS(
      two_layer_mlp(x, Tensor::zeros({2, 5, 6}, opt), Tensor::zeros({6}, opt), Activation::relu,
                    Tensor::zeros({2, 6, 3}, opt), Tensor::zeros({3}, opt)),
      "two_layer_mlp: input (1, 2, 3, 4), weights (2, 5, 6) and (2, 6, 3) are not "
      "(b, h, w, in), (h, in, hidden) and (h, hidden, out)",
      Error);
  CHECK_THROWS_WITH_AS(
      two_layer_mlp(x, Tensor::zeros({6, 4}, opt), Tensor::zeros({3, 6}, opt), Activation::relu,
                    Tensor::zeros({3, 6}, opt), Tensor::zeros({3}, opt)),
      "two_layer_mlp: biases (3, 6) and (3,) are not (h, 6) or (6,), and (h, 3) "
      "or (3,) for 2 heads",
      Error);
  CHECK_THROWS_WITH_AS(two_layer_mlp(x, Tensor::zeros({2, 4, 6}, opt), Tensor::zeros({2, 6}, opt),
                                     Activation::relu, Tensor::zeros({2, 6, 3}, opt),
                                     Tensor::zeros({3}, opt), Tensor::zeros({1, 2, 4}, opt)),
                       "two_layer_mlp: shift (1, 2, 4) is not (1, 2, 1, 4) for input (1, 2, 3, 4)",
                       Error);
  // The residual: in = block x out, and one scale value.
  const auto with_residual = [&](int64_t block, const Tensor& scale) {
    return two_layer_mlp(x, Tensor::zeros({2, 4, 6}, opt), Tensor::zeros({2, 6}, opt),
                         Activation::gelu, Tensor::zeros({2, 6, 2}, opt), Tensor::zeros({2}, opt),
                         Tensor(), {block, scale});
  };
  CHECK(with_residual(2, Tensor::ones({1}, opt)).shape() == Shape({1, 2, 3, 2}));
  CHECK_THROWS_WITH_AS(with_residual(3, Tensor::ones({1}, opt)),
                       "two_layer_mlp: a residual of block 3 needs in = block x out; input (1, 2, "
                       "3, 4) has in 4 and the output out 2",
                       Error);
  CHECK_THROWS_WITH_AS(with_residual(4, Tensor::ones({1}, opt)),
                       "two_layer_mlp: a residual of block 4 needs in = block x out; input (1, 2, "
                       "3, 4) has in 4 and the output out 2",
                       Error);
  CHECK_THROWS_WITH_AS(with_residual(2, Tensor::ones({2}, opt)),
                       "two_layer_mlp: residual scale (2,) is not one value", Error);
  CHECK_THROWS_WITH_AS(with_residual(2, Tensor()),
                       "two_layer_mlp: a residual of block 2 without its scale", Error);
}

TEST_CASE("two_layer_mlp: the residual is the block mean plus the scaled MLP, composed by hand") {
  // The op's residual against its definition written with core ops: the mean of each row's
  // groups of x + shift, plus scale times the op without a residual.
  const MlpCase c{2, 3, 4, 6, 5, 2, false, true, Activation::gelu, true, 3};
  const std::vector<Tensor> x = make_inputs(c, 710);
  MlpCase plain = c;
  plain.residual = 0;
  const Tensor shifted = add(x[0], x[5]);
  const Tensor want = add(mean(reshape(shifted, {2, 3, 4, 3, 2}), 3), mul(x[6], run(plain, x)));
  CHECK(test::rel_error(run(c, x).to_vector(), want.to_vector()) < 1e-14);
}

#ifdef KVC_WITH_CUDA
// y, then the gradients of the inputs that require one (float64, CPU), in make_inputs' order:
// x, w1, b1, w2, b2, then the shift and the residual's scale where the case has them.
struct MlpResult {
  std::vector<Tensor> values;
  std::vector<size_t> inputs;  // values[i + 1] is the gradient of input inputs[i]
};

// y and the gradients of sum(y * gy) on a device and dtype; input i requires a gradient where
// needs_grad[i].
MlpResult run_on(const MlpCase& c, DType dtype, Device device,
                 const std::vector<bool>& needs_grad) {
  std::vector<Tensor> x = make_inputs(c, 800);
  REQUIRE(needs_grad.size() == x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = x[i].to(dtype).to(device);
    x[i].set_requires_grad(needs_grad[i]);
  }
  const Tensor y = run(c, x);
  const Tensor gy =
      Tensor::randn(y.shape(), 899, 0, 0.0, 1.0, TensorOptions{}.with_dtype(DType::f64))
          .to(dtype)
          .to(device);
  backward(y, gy);
  MlpResult r;
  r.values.push_back(y.detach().to(DType::f64).to(Device::cpu()));
  for (size_t i = 0; i < x.size(); ++i) {
    if (!needs_grad[i]) continue;
    r.values.push_back(x[i].grad().to(DType::f64).to(Device::cpu()));
    r.inputs.push_back(i);
  }
  return r;
}

// Every input requires a gradient, x only where x_grad.
std::vector<bool> all_inputs(const MlpCase& c, bool x_grad) {
  std::vector<bool> needs(5 + (c.shifted ? 1 : 0) + (c.residual ? 1 : 0), true);
  needs[0] = x_grad;
  return needs;
}

// The bounds of a precision against float64 (check_fused says why).
struct Tolerance {
  double tol, kink_tol, floor;
};

// y and the gradients the mask asks for, on CUDA in float32 under the current precision, against
// float64 on the CPU.
void check_against_cpu(const MlpCase& c, const std::vector<bool>& needs_grad, const Tolerance& t) {
  const MlpResult want = run_on(c, DType::f64, Device::cpu(), needs_grad);
  const MlpResult got = run_on(c, DType::f32, Device::cuda(), needs_grad);
  REQUIRE(got.values.size() == want.values.size());
  // Rounded operands show in y and in the first weight's gradient wherever the sizes let
  // cuBLASLt take its tensor-core kernels (multiples of 8; others may run exact FP32 ones).
  // b2's gradient is a float32 sum of gy either way.
  const bool tensor_cores = c.in % 8 == 0 && c.hidden % 8 == 0 && c.out % 8 == 0;
  std::string errors;
  for (size_t i = 0; i < got.values.size(); ++i) {
    const double e = test::rel_error(got.values[i], want.values[i]);
    errors += str(" ", e);
    const size_t input = i == 0 ? 0 : got.inputs[i - 1];  // i = 0: y
    const bool is_shift = c.shifted && input == 5;
    // Below ReLU (x, w1, b1 and the shift), see kink_tol.
    const bool below_relu = c.act == Activation::relu && i > 0 && (input <= 2 || is_shift);
    CHECK(e < (below_relu ? t.kink_tol : t.tol));
    if (tensor_cores && (i == 0 || input == 1)) CHECK(e > t.floor);
  }
  std::string mask;
  for (const bool n : needs_grad) mask += n ? '1' : '0';
  MESSAGE(std::string(kernels::precision_name(kernels::cuda::math_precision())), " ", describe(c),
          " grads ", mask, ": rel errors (y, grads)", errors);
}

// The cuBLASLt pass (and under bf16 the mma.sync kernels) against float64 on the CPU. tf32
// rounds the operands to 10 mantissa bits and bf16 to 8 (and bf16 keeps the hidden activations and
// the gradient at the first product's output in bfloat16), so the norm-wise errors are ~4e-4 and
// ~4e-3; the bounds leave ~8x. In tf32 and bf16 the error must also exceed `floor`, above float32
// arithmetic's (~3e-7): the rounded path really ran. fp32 must stay near float32's own rounding.
// Below a ReLU the rounded pre-activations flip the sign of the few that lie within rounding of
// 0 (a fraction f ~ 0.4 * relative rounding: ~1e-4 in tf32, ~1e-3 in bf16), and there the
// gradient is all or nothing: the norm-wise error of x's, w1's and b1's gradients is ~sqrt(f),
// ~1.4e-2 and ~3.5e-2 (as in PyTorch's autocast). `kink_tol` bounds those; fp32's flips none.
void check_fused(kernels::MathPrecision precision, const Tolerance& tolerance) {
  const std::vector<MlpCase> cases = {
      {1, 8, 64, 512, 512, 64, false, true, Activation::relu},  // the kinds' layout, b = 1
      {3, 2, 40, 256, 384, 32, false, true, Activation::relu},  // b > 1: one product per batch
      {2, 3, 33, 96, 200, 16, true, true, Activation::relu},    // shared weights, odd sizes
      {2, 2, 50, 128, 256, 64, false, true, Activation::gelu},  // enhanced_mlp's
      {2, 3, 45, 64, 72, 16, false, false, Activation::gelu},   // per-head weights, one b1
      {1, 4, 37, 64, 130, 24, true, false, Activation::gelu},   // shared biases
      {2, 2, 20, 64, 100, 8, false, false, Activation::relu},   // mask rows not 128-aligned
      {1, 3, 7, 24, 37, 8, true, false, Activation::gelu},      // 777 hidden values: a tail
      {1, 1, 1, 16, 5, 8, false, true, Activation::gelu},       // 5: less than one 16-byte step
      {1, 3, 7, 24, 37, 8, true, false, Activation::relu},      // ReLU's signs with a tail
      {1, 1, 1, 16, 5, 8, false, true, Activation::relu},       // and with no whole step
      // bf16's one-pass hidden gradient: several row tiles and batch indices in b1's partial
      // sums, F.linear's W2 with GELU and a partial column tile.
      {2, 2, 300, 64, 128, 32, false, true, Activation::relu},
      {2, 2, 300, 64, 128, 32, false, false, Activation::gelu},
      {2, 3, 33, 96, 136, 32, true, false, Activation::gelu},
      // bf16's one-pass hidden gradient with a partial last column tile (1000 = 15 x 64 + 40)
      // and several row tiles, for both activations and weight layouts: under GELU with per-head
      // weights (W2's gradient in the pass) each CTA walks its column tile down its split of a
      // head's rows (5 row tiles of 64), the two stages taking turns; under ReLU and with
      // F.linear's weights each CTA walks several column tiles (3 on the H200).
      {2, 8, 600, 32, 1000, 64, false, true, Activation::relu},
      {1, 8, 300, 32, 1000, 32, false, false, Activation::gelu},
      {1, 8, 600, 48, 1000, 16, true, false, Activation::gelu},
      // bf16's hidden gradient with W2's (GELU, per-head weights): 128 CTAs of (column tile,
      // head), so each head's 9 row tiles (3 batch indices x 3, the last of 2 rows) go in two
      // splits of 5 and 4, the first ending inside batch index 1, the second starting there; and
      // ReLU's pass at the same sizes.
      {3, 8, 130, 32, 1024, 32, false, true, Activation::gelu, true},
      {3, 8, 130, 32, 1024, 32, false, true, Activation::relu},
      // out = 24: GELU's second product on mma.sync (out % 8), the backward's hidden gradient
      // in passes (out % 16 != 0), reading the same kept input.
      {2, 2, 20, 64, 96, 24, false, true, Activation::gelu},
      // Shifted rows: the shift's share of W1's gradient written before the product (fp32; bf16
      // and tf32 with F.linear's weights), one more row of the product's operands (bf16 per
      // head: the shift's row in x's copy, the column sums in the hidden gradient) or added after
      // it (tf32 per head), and b1's gradient per head or summed; under bf16 with per-head
      // weights the shift joins b1 as W1 is rounded (in = 96: a partial chunk of W1's rows), with
      // F.linear's through the product.
      {1, 8, 64, 512, 512, 64, false, true, Activation::relu, true},
      {2, 2, 30, 96, 128, 32, false, true, Activation::relu, true},
      {2, 3, 33, 96, 200, 16, true, true, Activation::relu, true},
      {2, 2, 50, 128, 256, 64, false, true, Activation::gelu, true},
      {2, 3, 45, 64, 72, 16, false, false, Activation::gelu, true},
      {1, 4, 37, 64, 130, 24, true, false, Activation::gelu, true},
      // enhanced_mlp's residual: the block mean and the scaled MLP, with and without the shift,
      // several row tiles of the residual's backward (130 = 2 x 64 + 2) and more columns than a
      // warp's 32 (64, 48), shared weights, ReLU.
      {2, 2, 50, 128, 256, 64, false, true, Activation::gelu, true, 2},
      {1, 8, 64, 512, 512, 64, false, true, Activation::gelu, true, 8},
      {2, 3, 130, 64, 72, 16, false, false, Activation::gelu, true, 4},
      {2, 2, 20, 96, 96, 48, false, true, Activation::gelu, false, 2},
      {2, 3, 33, 96, 136, 32, true, false, Activation::gelu, true, 3},
      {2, 2, 30, 96, 128, 32, false, true, Activation::relu, true, 3},
      // Under bf16 with the shift's row: out = 48 does not divide 1024, so x's row means are read
      // apart from its rounding; in = 2048 takes each thread's values from two places of a row,
      // and 2624 rows are more than the rounding's CTAs, each then taking several.
      {2, 2, 20, 96, 96, 48, false, true, Activation::gelu, true, 2},
      {4, 16, 40, 2048, 64, 64, false, true, Activation::gelu, true, 32},
      // bf16's hidden gradient with W2's (GELU, per-head weights): out = 128 (four warps across
      // dW2's part, a whole gy tile) and out = 80 (the third warp's columns partly past out); and
      // ReLU's per-head pass without it at out = 128.
      {2, 3, 130, 64, 256, 128, false, true, Activation::gelu, true},
      {2, 3, 130, 64, 256, 128, false, true, Activation::relu},
      {1, 4, 70, 32, 192, 80, false, false, Activation::gelu},
      // F.linear's W2 at out = 128: under bf16 the GELU product's copies of whole chunks (every
      // W2 row there, rows of 128-row tiles but the last) and the hidden gradient's W2 tiles.
      {2, 2, 300, 64, 256, 128, true, false, Activation::gelu},
      {2, 2, 300, 64, 256, 128, true, false, Activation::relu},
      // TF32's shift column under the 20 KiB chunks of the test below: 5 batch indices a chunk,
      // so the last chunk (2) puts the column inside columns the first one wrote.
      {7, 2, 8, 64, 128, 16, false, true, Activation::gelu, true},
  };
  test::PrecisionScope scope(precision);
  for (const MlpCase& c : cases) {
    for (const bool x_grad : {false, true}) {
      CAPTURE(describe(c));
      CAPTURE(x_grad);
      check_against_cpu(c, all_inputs(c, x_grad), tolerance);
    }
  }
}

// The bounds of each precision (check_fused says why).
constexpr Tolerance kFp32{1e-5, 1e-5, 0.0}, kTf32{4e-3, 3e-2, 2e-5}, kBf16{3e-2, 8e-2, 2e-4};
#endif

TEST_CASE("cuda: two_layer_mlp on cuBLASLt (fp32, tf32, bf16) matches the CPU, every gradient") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  // A subcase a precision: a sanitizer run can take one (-sc=bf16), the others being slow there.
  SUBCASE("fp32") { check_fused(kernels::MathPrecision::fp32, kFp32); }
  SUBCASE("tf32") { check_fused(kernels::MathPrecision::tf32, kTf32); }
  SUBCASE("bf16") { check_fused(kernels::MathPrecision::bf16, kBf16); }
#endif
}

TEST_CASE("cuda: two_layer_mlp with frozen inputs makes only the gradients asked for, as the CPU") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  // Frozen inputs drop parts of the backward: no W2 gradient (bf16 per-head: the hidden-gradient
  // pass without its dW2 product), no b1 gradient and no shift (the pass without column sums), no
  // gradient below the second layer at all, or only b1's.
  const std::vector<MlpCase> cases = {
      {2, 3, 130, 64, 256, 128, false, true, Activation::gelu, true},
      {2, 2, 300, 64, 128, 32, false, true, Activation::relu},
      {2, 3, 33, 96, 136, 32, true, false, Activation::gelu},
      {2, 2, 50, 128, 256, 64, false, true, Activation::gelu, true, 2},
  };
  //                                       x      w1     b1     w2     b2
  const std::vector<std::vector<bool>> masks = {{true, true, true, false, true},
                                                {true, false, false, false, false},
                                                {false, false, false, true, true},
                                                {false, false, true, false, false}};
  for (const auto& [precision, tolerance] : {std::pair{kernels::MathPrecision::fp32, kFp32},
                                             std::pair{kernels::MathPrecision::tf32, kTf32},
                                             std::pair{kernels::MathPrecision::bf16, kBf16}}) {
    test::PrecisionScope scope(precision);
    for (const MlpCase& c : cases) {
      for (std::vector<bool> needs : masks) {
        // The shift and the residual's scale follow W1 (frozen with it, or learned with it).
        while (needs.size() < all_inputs(c, true).size()) needs.push_back(needs[1]);
        CAPTURE(kernels::precision_name(precision));
        CAPTURE(describe(c));
        check_against_cpu(c, needs, tolerance);
      }
    }
  }
#endif
}

TEST_CASE("cuda: two_layer_mlp's TF32 first-weight gradient, transposed a chunk at a time") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  // 20 KiB an operand: a chunk is one head of one batch index for most per-head cases above, two
  // batch indices side by side for one head of the (2, 2, 20, 64, 100) case, and 25 or fewer
  // rows of the shared ones, so each gradient sums several chunks.
  struct ChunkScope {
    ChunkScope() { kernels::cuda::set_tf32_weight_grad_chunk_bytes(20 << 10); }
    ~ChunkScope() { kernels::cuda::set_tf32_weight_grad_chunk_bytes(0); }
  } chunks;
  check_fused(kernels::MathPrecision::tf32, kTf32);
#endif
}

TEST_CASE("cuda: two_layer_mlp adds onto existing gradients and runs without a tape") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  // GELU under TF32 without x's gradient takes the path that finishes the hidden gradient and
  // sums b1 in dW1's transposition: both x settings, both activations; shifted rows add the
  // shift's share of W1's gradient before that product or after it.
  for (const kernels::MathPrecision precision :
       {kernels::MathPrecision::tf32, kernels::MathPrecision::bf16}) {
    for (const bool shared : {false, true}) {
      for (const Activation act : {Activation::relu, Activation::gelu}) {
        for (const bool x_grad : {true, false}) {
          for (const bool shifted : {false, true}) {
            // enhanced_mlp's residual where the shift is: its scale's, the shift's and x's
            // gradients added after the MLP's.
            const MlpCase c{2, 2, 24, 64, 128, 16, shared, true, act, shifted, shifted ? 4 : 0};
            CAPTURE(kernels::precision_name(precision));
            CAPTURE(describe(c));
            CAPTURE(x_grad);
            test::PrecisionScope scope(precision);
            std::vector<Tensor> x = make_inputs(c, 900);
            for (size_t i = 0; i < x.size(); ++i) {
              x[i] = x[i].to(DType::f32).to(Device::cuda()).set_requires_grad(i > 0 || x_grad);
            }
            backward(sum(run(c, x)));
            std::vector<std::vector<double>> once;
            for (const Tensor& t : x) {
              if (t.requires_grad()) once.push_back(t.grad().to_vector());
            }
            backward(sum(run(c, x)));  // accumulates: twice, up to the rounding of the sums
            for (size_t i = x_grad ? 0 : 1; i < x.size(); ++i) {
              std::vector<double> doubled = once[i - (x_grad ? 0 : 1)];
              for (double& v : doubled) v *= 2;
              CHECK(test::rel_error(x[i].grad().to_vector(), doubled) < 1e-6);
            }
          }
        }
      }
      for (const int64_t residual : {0, 4}) {  // with the residual, shifted (enhanced_mlp's)
        const MlpCase c{2,       2, 24, 64, 128, 16, shared, true, Activation::relu, residual > 0,
                        residual};
        CAPTURE(describe(c));
        test::PrecisionScope scope(precision);
        std::vector<Tensor> x = make_inputs(c, 900);
        for (Tensor& t : x) t = t.to(DType::f32).to(Device::cuda()).set_requires_grad(true);
        Tensor y_tape = run(c, x);
        Tensor y_free;
        {
          NoGradGuard no_grad;  // forward only: nothing saved, the same values
          y_free = run(c, x);
        }
        CHECK(y_free.to_vector() == y_tape.to_vector());
      }
    }
  }
#endif
}

TEST_CASE("cuda: under ShareBf16Copies the attention target reads the MLP's bf16 copy of K") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  test::PrecisionScope scope(kernels::MathPrecision::bf16);
  // K (b, h, seq, d) seen as the blocks (b, h, w, n d) an MLP kind reads, as at stride = n: with
  // shared weights the copy is K's own layout; with per-head weights and shifted rows it has the
  // shift's row after each head's blocks, and the target reads it with that head stride.
  const int64_t b = 2, h = 2, seq = 512, d = 64, n = 16, nq = 64;
  for (const bool per_head : {false, true}) {
    for (const Activation act : {Activation::relu, Activation::gelu}) {
      const MlpCase c{b, h, seq / n, n * d, 128, d, !per_head, false, act, per_head};
      CAPTURE(describe(c));
      std::vector<Tensor> x = make_inputs(c, 930);
      for (Tensor& t : x) t = t.to(DType::f32).to(Device::cuda()).set_requires_grad(true);
      const TensorOptions cuda = TensorOptions{}.with_device(Device::cuda());
      const Tensor k = reshape(x[0].detach(), {b, h, seq, d});
      const Tensor v = Tensor::randn({b, h, seq, d}, 931, 0, 0.0, 1.0, cuda);
      const Tensor q = Tensor::randn({b, h, nq, d}, 932, 0, 0.0, 1.0, cuda);
      REQUIRE(x[0].data<float>() == k.data<float>());
      const size_t k16_bytes = static_cast<size_t>(k.numel()) * 2;

      // The target's bytes allocated at its peak while the MLP holds its saved copy of the
      // blocks: with K and V listed, K's copy is the MLP's (no second one), and the values are the
      // same. The MLP's gradients too, the copy shared or not.
      const auto target_peak = [&](bool share, std::vector<double>* out,
                                   std::vector<double>* w1_grad) {
        std::unique_ptr<ShareBf16Copies> shared;
        if (share) shared = std::make_unique<ShareBf16Copies>(std::vector<Tensor>{k, v});
        const Tensor y = run(c, x);  // keeps its bf16 blocks for the backward
        const size_t before = kernels::cuda::allocator_stats().bytes_in_use;
        kernels::cuda::reset_peak_stats();
        {
          NoGradGuard no_grad;
          *out = attention_target(q, k, v, 0.125).to_vector();
        }
        const size_t peak = kernels::cuda::allocator_stats().peak_bytes_in_use - before;
        x[1].zero_grad();
        backward(sum(y));
        *w1_grad = x[1].grad().to_vector();
        return peak;
      };
      std::vector<double> own, shared, own_w1, shared_w1;
      const size_t own_bytes = target_peak(false, &own, &own_w1);
      const size_t shared_bytes = target_peak(true, &shared, &shared_w1);
      MESSAGE(describe(c), ": target's peak allocation: ", own_bytes,
              " bytes with its own copies, ", shared_bytes, " sharing K's (", k16_bytes, " bytes)");
      CHECK(shared == own);
      CHECK(shared_w1 == own_w1);
      CHECK(own_bytes >= shared_bytes + k16_bytes);
    }
  }
#endif
}

}  // namespace
}  // namespace kvc
