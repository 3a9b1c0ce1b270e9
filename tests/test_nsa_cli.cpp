// The NSA settings through the command line: gen-data writes grouped queries and their
// positions, train --stride --causal --query-heads reads them, eval prints the recall and the
// queries left out, infer writes the overlapping blocks.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "data/h5file.h"
#include "data/kv_file.h"
#include "data/synthetic.h"
#include "nn/compressor_pair.h"
#include "test_train_util.h"
#include "train/checkpoint.h"
#include "train/metrics.h"
#include "train/trainer.h"

namespace kvc {
namespace {

using test::expect_error;
using test::RunResult;
using test::TempDir;

TEST_CASE("nsa cli: gen-data with query heads, causal strided training, eval and infer") {
  TempDir dir("nsa_cli");
  RunResult r = test::run_kvcompress("gen-data --out " + dir / "kv.h5" +
                                         " --count 12 --seq 64 --heads 2 --dim-head 16 "
                                         "--queries 8 --query-heads 2 --seed 5",
                                     dir.path);
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  {
    // The file holds what the generator draws: q of h * G heads and the positions it drew.
    H5File f = H5File::open(dir / "kv.h5", H5Mode::read);
    CHECK(f.shape("/q") == Shape{12, 4, 8, 16});
    CHECK(f.shape("/q_pos") == Shape{12, 8});
    CHECK(f.type_name("/q_pos") == "int64");
    KVShape shape;
    shape.batch = 2, shape.heads = 2, shape.seq = 64, shape.dim_head = 16, shape.queries = 8;
    shape.query_heads = 2;
    const Batch first = SyntheticKV(shape, 5).batch_at(0);
    std::vector<int64_t> pos = f.read_int64s("/q_pos");
    const std::vector<double> want = first.q_pos.to_vector();
    REQUIRE(want.size() == 16);
    for (size_t i = 0; i < want.size(); ++i) CHECK(static_cast<double>(pos[i]) == want[i]);
    const std::vector<double> q = f.read_rows("/q", 0, 2).to_vector(), want_q = first.q.to_vector();
    REQUIRE(q.size() == want_q.size());
    for (size_t i = 0; i < q.size(); i += 97) CHECK(q[i] == doctest::Approx(want_q[i]));
  }
  expect_error(test::run_kvcompress("gen-data --out " + dir / "x.h5" + " --stride 4", dir.path), 2,
               {"--stride does not apply to gen-data"});
  // The file decides G: a flag that disagrees is refused.
  expect_error(
      test::run_kvcompress(
          "train --data " + dir / "kv.h5" + " --query-heads 3 --out " + dir / "bad", dir.path),
      2, {"--query-heads 3", "which has 2"});

  r = test::run_kvcompress("train --data " + dir / "kv.h5" +
                               " --block 8 --stride 4 --causal --topk 4 --batch 2 --steps 6 "
                               "--eval-every 3 --eval-batches 1 --progress log --log-every 3 "
                               "--device cpu --out " +
                               dir / "run",
                           dir.path);
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("recall@4 ") != std::string::npos);
  CHECK(r.out.find("queries see no complete block: left out") != std::string::npos);
  const train::Checkpoint ck = train::load_checkpoint(dir / "run/checkpoint.h5");
  CHECK(ck.meta.stride == 4);
  CHECK(ck.meta.causal);
  CHECK(ck.meta.query_heads == 2);
  CHECK(ck.meta.topk == 4);
  // Every evaluation's recall is a fraction of the top 4 (0, 1/4, ... per query: a mean in [0, 1]).
  int evals = 0;
  const train::MetricsHistory history = train::read_metrics_csv(dir / "run/metrics.csv");
  for (const train::MetricsRow& row : history.rows()) {
    if (std::isnan(row.eval_loss)) continue;
    ++evals;
    CHECK(row.recall_at_k >= 0.0);
    CHECK(row.recall_at_k <= 1.0);
  }
  CHECK(evals == 3);  // steps 0 (untrained), 3 and 6

  r = test::run_kvcompress("eval --device cpu --checkpoint " + dir / "run/checkpoint.h5", dir.path);
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("recall@4") != std::string::npos);
  CHECK(r.out.find("left out") != std::string::npos);

  r = test::run_kvcompress("infer --device cpu --checkpoint " + dir / "run/checkpoint.h5" +
                               " --data " + dir / "kv.h5" + " --out " + dir / "inf.h5",
                           dir.path);
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  H5File out = H5File::open(dir / "inf.h5", H5Mode::read);
  const int64_t w = (64 - 8) / 4 + 1;
  REQUIRE(out.shape("/k_compressed") == Shape{12, 2, w, 16});
  CHECK(out.attr_int64("/", "stride") == 4);
  // The same numbers as the checkpoint's pair compressing the file's first sequences here.
  std::shared_ptr<CompressorPair> pair = train::pair_from_checkpoint(ck, Device::cpu());
  pair->eval();
  NoGradGuard no_grad;
  H5File in = H5File::open(dir / "kv.h5", H5Mode::read);
  const auto kv = pair->compress(read_kv_rows(in, "k", 0, 3), read_kv_rows(in, "v", 0, 3));
  const std::vector<double> got = out.read_rows("/v_compressed", 0, 3).to_vector();
  const std::vector<double> want = kv.second.to_vector();
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-6));
}

TEST_CASE("nsa cli: gradcheck and bench take the stride and the query heads") {
  TempDir dir("nsa_cli_check");
  // Finite differences of the layer over overlapping windows, compress() and the grouped loss.
  RunResult r = test::run_kvcompress(
      "gradcheck --device cpu --compressor efficient_conv --stride 2 --query-heads 2", dir.path);
  INFO(r.out, r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("checks passed") != std::string::npos);
  r = test::run_kvcompress(
      "bench --device cpu --config small --compressor conv --stride 4 --query-heads 2 "
      "--warmup-reps 0 --reps 1 --json",
      dir.path);
  INFO(r.out, r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("\"kind\": \"conv\"") != std::string::npos);
}

}  // namespace
}  // namespace kvc
