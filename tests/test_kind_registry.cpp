// Tests of the compressor kind registry: a toy kind registered by the test binary is listed,
// built, costed by bench's work model and round-tripped through a checkpoint; unknown kinds fail.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/ops.h"
#include "nn/compressor.h"
#include "nn/compressor_pair.h"
#include "test_train_util.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/step_work.h"
#include "train/trainer.h"

namespace kvc {
namespace {

// The toy: y = scale * mean_n(x), one parameter `scale` (1,) initialized to 2.
class ToyMeanCompressor : public Compressor {
 public:
  explicit ToyMeanCompressor(const CompressorOptions& o) : Compressor(o) {
    scale_ = register_parameter(
        "scale", Tensor::full({1}, 2.0, TensorOptions{}.with_dtype(o.dtype).with_device(o.device)));
  }
  Tensor forward(const Tensor& x) override { return mul(scale_, mean(x, 3)); }

 private:
  Tensor scale_;  // (1)
};

// Registered for the life of one test case, so the other tests see only the built-in kinds.
struct ToyKindRegistration {
  ToyKindRegistration() {
    CompressorKind toy;
    toy.name = "toy_mean";
    toy.make = [](const CompressorOptions& o) { return std::make_shared<ToyMeanCompressor>(o); };
    toy.forward_flops = [](const CompressorOptions& o, double blocks) {
      return blocks * static_cast<double>(o.block * o.dim_head) + blocks * o.dim_head;
    };
    toy.needs_block = false;
    register_compressor_kind(toy);
  }
  ~ToyKindRegistration() { unregister_compressor_kind("toy_mean"); }
};

CompressorOptions toy_options() {
  CompressorOptions o;
  o.kind = "toy_mean";
  o.heads = 2;
  o.dim_head = 3;
  o.block = 4;
  o.seed = 5;
  return o;
}

TEST_CASE("kind registry: a toy kind is listed, built, costed and checkpointed") {
  const size_t builtin = compressor_kinds().size();
  ToyKindRegistration registration;
  const std::vector<std::string> kinds = compressor_kinds();
  REQUIRE(kinds.size() == builtin + 1);
  CHECK(kinds.back() == "toy_mean");

  // Built by the factory: y = 2 * mean over n, for any n (needs_block false).
  const CompressorOptions o = toy_options();
  CompressorOptions o64 = o;
  o64.dtype = DType::f64;
  std::shared_ptr<Compressor> c = make_compressor(o64);
  CHECK(c->name() == "toy_mean");
  CHECK_FALSE(c->needs_block());
  const Tensor x = test::param({1, 2, 1, 5, 3}, 11);  // n = 5 != block: allowed
  const std::vector<double> xv = x.to_vector(), yv = (*c)(x).to_vector();
  REQUIRE(yv.size() == 6);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t e = 0; e < 3; ++e) {
      double sum = 0;
      for (int64_t n = 0; n < 5; ++n) sum += xv[static_cast<size_t>((h * 5 + n) * 3 + e)];
      CHECK(yv[static_cast<size_t>(h * 3 + e)] == doctest::Approx(2 * sum / 5));
    }
  }

  // Counted by bench's work model: M = b*h*w blocks of n*d sums and d scalings, twice (k and v),
  // plus the attention GEMMs.
  KVShape s;
  s.batch = 2, s.heads = 2, s.dim_head = 3, s.seq = 16, s.queries = 5;
  const train::StepWork w = train::step_work(o, s, 2);
  const double blocks = 2 * 2 * (16 / 4), comp = blocks * 4 * 3 + blocks * 3;
  const double target = 4.0 * 2 * 2 * 5 * 16 * 3, pred = 4.0 * 2 * 2 * 5 * (16 / 4) * 3;
  CHECK(w.forward_flops == doctest::Approx(2 * comp + target + pred));
  CHECK(w.backward_flops == doctest::Approx(2 * (2 * comp + pred)));
  CHECK(w.optimizer_bytes == doctest::Approx(7 * 2 * 4));

  // Overlapping blocks (stride 2 < n = 4: w = (16 - 4) / 2 + 1 = 7) and 3 query heads per KV
  // head: the compressor runs over b*h*7 blocks, the attentions over b*h*3 query heads.
  CompressorOptions strided = o;
  strided.stride = 2;
  KVShape grouped = s;
  grouped.query_heads = 3;
  const train::StepWork ws = train::step_work(strided, grouped, 2);
  const double blocks7 = 2 * 2 * 7, comp7 = blocks7 * 4 * 3 + blocks7 * 3;
  const double target3 = 3 * target, pred3 = 4.0 * 2 * 6 * 5 * 7 * 3;
  CHECK(ws.forward_flops == doctest::Approx(2 * comp7 + target3 + pred3));
  CHECK(ws.backward_flops == doctest::Approx(2 * (2 * comp7 + pred3)));

  // A kind whose first layer is affine in the blocks (mlp: n*d -> H) has no input gradient
  // there: the backward counts that layer's weight gradient only.
  CompressorOptions m = o;
  m.kind = "mlp";
  m.expand = 0.5;  // H = floor(4 * 3 * 0.5) = 6
  const train::StepWork wm = train::step_work(m, s, 2);
  const double first = 2 * blocks * 12 * 6, mlp_comp = first + 2 * blocks * 6 * 3;
  CHECK(wm.forward_flops == doctest::Approx(2 * mlp_comp + target + pred));
  CHECK(wm.backward_flops == doctest::Approx(2 * (2 * mlp_comp - first + pred)));
  // efficient_conv's 1x1 reduction (d -> d/r per token) is that affine first layer there.
  CompressorOptions e = o;
  e.kind = "efficient_conv";
  e.reduction = 3;  // d = 3 -> d/r = 1
  const train::StepWork we = train::step_work(e, s, 2);
  const double reduction = 2 * blocks * 4 * 3 * 1, eff_comp = reduction + 2 * blocks * (4 + 3);
  CHECK(we.forward_flops == doctest::Approx(2 * eff_comp + target + pred));
  CHECK(we.backward_flops == doctest::Approx(2 * (2 * eff_comp - reduction + pred)));

  // Round-tripped through a checkpoint: the loaded pair is a toy pair with the saved values.
  CompressorPair pair(o);
  pair.named_parameters().front().second.copy_from(Tensor::full({1}, 3.5));
  train::Checkpoint ck;
  ck.meta.compressor = "toy_mean";
  ck.meta.heads = o.heads;
  ck.meta.dim_head = o.dim_head;
  ck.meta.block = o.block;
  ck.meta.seed = o.seed;
  ck.params = pair.named_parameters();
  test::TempDir dir("toy_kind");
  train::save_checkpoint(dir / "toy.h5", ck);
  const train::Checkpoint back = train::load_checkpoint(dir / "toy.h5", /*with_optim=*/false);
  CHECK(back.meta.compressor == "toy_mean");
  std::shared_ptr<CompressorPair> loaded = train::pair_from_checkpoint(back, Device::cpu());
  CHECK(loaded->k_compress().name() == "toy_mean");
  const auto params = loaded->named_parameters();
  REQUIRE(params.size() == pair.named_parameters().size());
  CHECK(params.front().first == "k_compress.scale");
  CHECK(params.front().second.item() == 3.5);
}

TEST_CASE("kind registry: an unknown kind is an error everywhere, never a fallback") {
  const size_t builtin = compressor_kinds().size();
  CompressorOptions o = toy_options();  // not registered in this test
  const std::vector<std::string> parts = {"unknown kind 'toy_mean'", "conv", "mlp"};
  test::check_error([&] { make_compressor(o); }, parts);
  test::check_error([&] { validate(o); }, parts);
  test::check_error([&] { CompressorPair pair(o); }, parts);
  test::check_error([&] { train::step_work(o, KVShape{}, 1); }, parts);
  test::check_error([&] { unregister_compressor_kind("conv"); }, {"conv", "not registered"});
  CompressorKind dup;
  dup.name = "conv";
  dup.make = [](const CompressorOptions& opt) { return make_compressor(opt); };
  dup.forward_flops = [](const CompressorOptions&, double) { return 0.0; };
  test::check_error([&] { register_compressor_kind(dup); }, {"conv", "already registered"});
  CompressorKind incomplete;
  incomplete.name = "half";
  test::check_error([&] { register_compressor_kind(incomplete); }, {"half", "factory"});
  CHECK(compressor_kinds().size() == builtin);
}

// The built-in FLOP models are the formulas bench documents (closed forms at one shape).
TEST_CASE("kind registry: the built-in FLOP models") {
  CompressorOptions o;
  o.block = 4, o.dim_head = 8, o.reduction = 2, o.expand = 1.5;
  const double M = 10, n = 4, d = 8, I = n * d, H = std::floor(I * 1.5), dr = d / 2;
  const std::vector<std::pair<std::string, double>> want = {
      {"conv", 2 * M * I * d},
      {"efficient_conv", 2 * M * n * d * dr + 2 * M * n * dr * dr + 2 * M * dr * d},
      {"attention_pool", 2 * M * n * d * d + 2 * M * n * d},
      {"scaled_attention_pool", 2 * M * n * d * d + 2 * M * n * d},
      {"grouped_mlp", 2 * M * I * H + 2 * M * H * d},
      {"enhanced_mlp", 2 * M * I * H + 2 * M * H * d},
      {"mlp", 2 * M * I * H + 2 * M * H * d},
  };
  for (const auto& [kind, flops] : want) {
    INFO(kind);
    o.kind = kind;
    CHECK(compressor_kind(kind).forward_flops(o, M) == doctest::Approx(flops));
    CHECK(compressor_kind(kind).needs_block == (kind.find("attention_pool") == std::string::npos));
  }
}

}  // namespace
}  // namespace kvc
