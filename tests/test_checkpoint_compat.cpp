// A checkpoint written by kvcompress before the settings table and the kind registry (a 3-step
// enhanced_mlp run) still loads, and resuming it continues exactly as that binary did.
#include <filesystem>

#include "test_train_util.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/metrics.h"

namespace kvc {
namespace {

// Written by the pre-change binary with
//   kvcompress train --compressor enhanced_mlp --dropout 0.1 --heads 2 --dim-head 4 --block 2
//     --seq 8 --batch 1 --queries 2 --steps 3 --warmup 1 --eval-every 0 --save-every 0
//     --device cpu --progress none --seed 7
std::string old_checkpoint() {
  return std::string(KVC_SOURCE_DIR) + "/tests/data/checkpoint_v1_enhanced_mlp_step3.h5";
}

TEST_CASE("checkpoint compat: a file from before the settings table keeps every setting") {
  const train::Checkpoint ck = train::load_checkpoint(old_checkpoint());
  const train::CheckpointMeta& m = ck.meta;
  CHECK(m.compressor == "enhanced_mlp");
  CHECK(m.heads == 2);
  CHECK(m.dim_head == 4);
  CHECK(m.block == 2);
  CHECK(m.dropout == doctest::Approx(0.1));
  CHECK(m.expand == 1.0);
  CHECK(m.reduction == 2);
  CHECK(m.task == "distill");
  CHECK(m.seed == 7);
  CHECK(m.step == 3);
  CHECK(m.batch == 1);
  CHECK(m.seq == 8);
  CHECK(m.queries == 2);
  CHECK(m.lr == 1e-3);
  CHECK(m.warmup == 1);
  CHECK(m.clip == 1.0);
  CHECK(m.data == "synthetic");
  CHECK(ck.has_optim);
  CHECK(ck.optim.step == 3);
  CHECK(ck.params.size() == ck.optim.exp_avg.size());
  CHECK(ck.rng.count("data_position") == 1);
  CHECK(ck.rng.count("dropout") == 1);
}

TEST_CASE(
    "checkpoint compat: resuming a file from before the change continues as that binary did") {
  test::TempDir dir("compat");
  std::filesystem::copy_file(old_checkpoint(), dir / "checkpoint.h5");
  const test::RunResult r = test::run_kvcompress(
      "train --resume " + dir / "checkpoint.h5" + " --steps 5 --progress none", dir.path);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(train::load_checkpoint(dir / "checkpoint.h5").meta.step == 5);
  // Steps 4 and 5 as the pre-change binary logged them resuming the same file (metrics.csv).
  struct Row {
    int64_t step;
    double loss, lr, grad_norm;
  };
  const Row expected[] = {{4, 0.0655145645, 0.000146446609, 0.293037981},
                          {5, 0.0373465531, 0.0, 0.228896111}};
  const train::MetricsHistory h = train::read_metrics_csv(dir / "metrics.csv");
  REQUIRE(h.size() == 5);
  for (const Row& want : expected) {
    const train::MetricsRow& got = h.rows()[static_cast<size_t>(want.step - 1)];
    CHECK(got.step == want.step);
    CHECK(got.loss == doctest::Approx(want.loss).epsilon(1e-6));
    CHECK(got.lr == doctest::Approx(want.lr).epsilon(1e-6));
    CHECK(got.grad_norm == doctest::Approx(want.grad_norm).epsilon(1e-6));
  }
  CHECK(h.rows()[4].eval_loss == doctest::Approx(0.0481212707).epsilon(1e-6));
}

}  // namespace
}  // namespace kvc
