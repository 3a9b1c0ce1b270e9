// Tests of how `train` and its companions treat a user: the run folder is not silently replaced,
// the LR stays continuous when a resume changes the length, eval reproduces the training's number,
// --patience stops early, the gradcheck table lines up, load_torch.py names the interpreter.
#include <cmath>
#include <map>
#include <sstream>

#include "test_train_util.h"
#include "train/checkpoint.h"
#include "train/metrics.h"

namespace kvc {
namespace {

using test::RunResult;
using test::TempDir;

constexpr double kPi = 3.14159265358979323846;

// The documented schedule: linear warmup to base_lr at step `warmup`, then a cosine to 0 at
// step `total`.
double planned_lr(int64_t s, int64_t total, double base, int64_t warmup) {
  if (s <= warmup) return base * static_cast<double>(s) / static_cast<double>(warmup);
  const double p = std::min(1.0, static_cast<double>(s - warmup) /
                                     static_cast<double>(std::max<int64_t>(1, total - warmup)));
  return base * 0.5 * (1 + std::cos(kPi * p));
}

std::map<int64_t, train::MetricsRow> rows_by_step(const std::string& csv) {
  std::map<int64_t, train::MetricsRow> out;
  const train::MetricsHistory history = train::read_metrics_csv(csv);
  for (const train::MetricsRow& r : history.rows()) out[r.step] = r;
  return out;
}

RunResult train_run(const std::string& args, const TempDir& dir) {
  return test::run_kvcompress("train --device cpu --progress none " + args, dir.path);
}

TEST_CASE("train: a folder holding another run is refused unless --resume or --overwrite") {
  TempDir dir("ux_folder");
  const std::string out = dir / "run";
  RunResult r = train_run("--steps 10 --eval-every 5 --out " + out, dir);
  REQUIRE(r.exit_code == 0);
  const std::string before = test::read_text(out + "/checkpoint.h5");
  const std::string metrics_before = test::read_text(out + "/metrics.csv");

  r = train_run("--steps 6 --seed 3 --out " + out, dir);
  INFO(r.err);
  CHECK(r.exit_code == 1);
  CHECK(test::count_lines(r.err) == 1);
  for (const char* part : {"holds another run", "--resume", "--overwrite", "checkpoint.h5"}) {
    CHECK_MESSAGE(r.err.find(part) != std::string::npos, part);
  }
  CHECK(r.err.find(out) != std::string::npos);
  // Nothing of the first run was touched.
  CHECK(test::read_text(out + "/checkpoint.h5") == before);
  CHECK(test::read_text(out + "/metrics.csv") == metrics_before);

  // Resuming a checkpoint elsewhere into this folder is another run too.
  r = train_run("--steps 10 --eval-every 5 --out " + dir / "other", dir);
  REQUIRE(r.exit_code == 0);
  r = train_run("--resume " + dir / "other/checkpoint.h5" + " --steps 12 --out " + out, dir);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("holds another run") != std::string::npos);

  // --resume of the folder's own checkpoint continues it.
  r = train_run("--resume " + out + "/checkpoint.h5 --steps 12", dir);
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(train::read_checkpoint_meta(out + "/checkpoint.h5").step == 12);

  // --overwrite starts over: the old best.h5 and metrics go, the new run's files replace them.
  r = train_run("--steps 6 --seed 3 --eval-every 0 --overwrite --out " + out, dir);
  INFO(r.err);
  CHECK(r.exit_code == 0);
  const train::CheckpointMeta m = train::read_checkpoint_meta(out + "/checkpoint.h5");
  CHECK(m.step == 6);
  CHECK(m.seed == 3);
  CHECK(train::read_metrics_csv(out + "/metrics.csv").rows().back().step == 6);
  // With --eval-every 0 the only evaluation is the last one: best.h5 is this run's, step 6.
  CHECK(train::read_checkpoint_meta(out + "/best.h5").step == 6);
}

TEST_CASE("train: a resume that changes --steps keeps the learning rate continuous") {
  TempDir dir("ux_replan");
  constexpr double kBase = 1e-3;
  constexpr int64_t kWarmup = 10;
  RunResult r = train_run("--steps 60 --warmup 10 --eval-every 0 --out " + dir / "a", dir);
  REQUIRE(r.exit_code == 0);
  // A finished run: the cosine reached 0 at step 60.
  r = train_run("--resume " + dir / "a/checkpoint.h5" + " --steps 120", dir);
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  const auto rows = rows_by_step(dir / "a/metrics.csv");
  REQUIRE(rows.size() >= 120);
  CHECK(rows.at(60).lr == doctest::Approx(planned_lr(60, 60, kBase, kWarmup)));
  // The 10 steps after the resume blend from the LR at step 60 into the 120-step plan...
  const double lr60 = rows.at(60).lr;
  for (int64_t s = 61; s <= 70; ++s) {
    const double plan = planned_lr(s, 120, kBase, kWarmup);
    INFO("step ", s);
    CHECK(rows.at(s).lr == doctest::Approx(lr60 + (plan - lr60) * (s - 60) / 10.0).epsilon(1e-6));
  }
  // ...and then follow it.
  for (int64_t s = 71; s <= 120; ++s) {
    INFO("step ", s);
    CHECK(rows.at(s).lr == doctest::Approx(planned_lr(s, 120, kBase, kWarmup)).epsilon(1e-6));
  }
  // No step changes the LR by more than a warmup step does (base / warmup).
  for (int64_t s = 2; s <= 120; ++s) {
    INFO("step ", s);
    CHECK(std::fabs(rows.at(s).lr - rows.at(s - 1).lr) <= kBase / kWarmup * (1 + 1e-9));
  }

  // The re-plan is part of the run: stopping inside the blend and resuming without --steps gives
  // the same schedule.
  r = train_run("--steps 60 --warmup 10 --eval-every 0 --out " + dir / "b", dir);
  REQUIRE(r.exit_code == 0);
  r = train_run("--resume " + dir / "b/checkpoint.h5" + " --steps 120 --stop-at 65", dir);
  REQUIRE(r.exit_code == 0);
  r = train_run("--resume " + dir / "b/checkpoint.h5", dir);
  REQUIRE(r.exit_code == 0);
  const auto split = rows_by_step(dir / "b/metrics.csv");
  for (int64_t s = 61; s <= 120; ++s) {
    INFO("step ", s);
    CHECK(split.at(s).lr == doctest::Approx(rows.at(s).lr).epsilon(1e-9));
  }
}

// The number after "eval loss" in eval's output.
double printed_eval_loss(const std::string& out) {
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("eval loss", 0) == 0) return std::stod(line.substr(9));
  }
  FAIL("no 'eval loss' line in: " << out);
  return NAN;
}

TEST_CASE("eval: by default it reproduces the eval loss the training recorded") {
  TempDir dir("ux_eval");
  RunResult r = train_run("--steps 40 --eval-every 20 --eval-batches 3 --out " + dir / "run", dir);
  REQUIRE(r.exit_code == 0);
  // The training's number for best.h5: the lowest eval loss after step 0.
  double best = INFINITY;
  int64_t best_step = 0;
  for (const auto& [step, row] : rows_by_step(dir / "run/metrics.csv")) {
    if (step > 0 && std::isfinite(row.eval_loss) && row.eval_loss < best) {
      best = row.eval_loss;
      best_step = step;
    }
  }
  REQUIRE(std::isfinite(best));
  CHECK(train::read_checkpoint_meta(dir / "run/best.h5").step == best_step);
  r = test::run_kvcompress("eval --device cpu --checkpoint " + dir / "run/best.h5", dir.path);
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("(3 batches)") != std::string::npos);
  // Printed as the training printed it: the same 5 significant digits.
  char best_text[32];
  std::snprintf(best_text, sizeof(best_text), "%.4e", best);
  CHECK(r.out.find(std::string("eval loss    ") + best_text + "\n") != std::string::npos);
  CHECK(printed_eval_loss(r.out) == doctest::Approx(best).epsilon(1e-4));
  // An explicit count still wins.
  r = test::run_kvcompress("eval --device cpu --batches 8 --checkpoint " + dir / "run/best.h5",
                           dir.path);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("(8 batches)") != std::string::npos);
}

TEST_CASE("train: --patience stops after N evaluations without a lower eval loss") {
  TempDir dir("ux_patience");
  // A learning rate high enough that the eval loss soon stops falling.
  const RunResult r =
      train_run("--steps 300 --lr 0.02 --eval-every 5 --patience 3 --out " + dir / "run", dir);
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  // Where the run should stop, from its own eval losses: the first evaluation that is the third
  // in a row above the best so far.
  double best = INFINITY;
  int64_t best_step = 0, since = 0, expected_stop = 0;
  for (const auto& [step, row] : rows_by_step(dir / "run/metrics.csv")) {
    if (step == 0 || !std::isfinite(row.eval_loss)) continue;
    if (row.eval_loss < best) {
      best = row.eval_loss;
      best_step = step;
      since = 0;
    } else if (++since == 3) {
      expected_stop = step;
      break;
    }
  }
  REQUIRE(expected_stop > 0);
  REQUIRE(expected_stop < 300);
  CHECK(train::read_metrics_csv(dir / "run/metrics.csv").rows().back().step == expected_stop);
  CHECK(train::read_checkpoint_meta(dir / "run/checkpoint.h5").step == expected_stop);
  CHECK(train::read_checkpoint_meta(dir / "run/best.h5").step == best_step);
  CHECK(r.out.find("early stop at step " + std::to_string(expected_stop)) != std::string::npos);

  const RunResult bad = train_run("--patience 2 --eval-every 0 --out " + dir / "bad", dir);
  CHECK(bad.exit_code == 2);
  CHECK(bad.err.find("--patience") != std::string::npos);
}

TEST_CASE("gradcheck: the table's columns line up whatever the names' lengths") {
  TempDir dir("ux_gradcheck");
  const RunResult r =
      test::run_kvcompress("gradcheck --compressor scaled_attention_pool", dir.path);
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  std::istringstream in(r.out);
  std::string line, header;
  std::vector<std::string> rows;
  while (std::getline(in, line)) {
    if (line.rfind("layer ", 0) == 0) header = line;
    if (line.size() > 3 && line.compare(line.size() - 3, 3, " ok") == 0) rows.push_back(line);
  }
  REQUIRE(!header.empty());
  REQUIRE(rows.size() >= 6);
  const size_t tensor_col = header.find("tensor");
  const size_t pass_col = header.find("pass");
  for (const std::string& row : rows) {
    INFO(row);
    // Every row: "ok" under "pass", the tensor name starting under "tensor".
    CHECK(row.size() - 2 == pass_col);
    CHECK(row[tensor_col - 1] == ' ');
    CHECK(row[tensor_col] != ' ');
    CHECK(row[tensor_col - 2] == ' ');
  }
}

TEST_CASE("load_torch.py: an interpreter without torch gets one line naming what to use") {
  TempDir dir("ux_python");
  REQUIRE(std::system("command -v python3 >/dev/null 2>&1") == 0);
  // -S: without the site packages, where Debian's numpy, h5py and torch live.
  const RunResult r = test::run_shell(
      "python3 -S " + std::string(KVC_SOURCE_DIR) + "/tools/load_torch.py ck.h5 kv.h5", dir.path);
  INFO(r.out, r.err);
  CHECK(r.exit_code == 1);
  CHECK(test::count_lines(r.err) == 1);
  CHECK(r.err.find("Traceback") == std::string::npos);
  CHECK(r.err.find("PYTHON=") != std::string::npos);
  CHECK(r.err.find("python3") != std::string::npos);
}

}  // namespace
}  // namespace kvc
