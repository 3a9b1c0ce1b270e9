// Tests of train/trainer: the teacher task converges, distill helps every kind,
// resume is bit exact, NaN stops with the last good checkpoint kept, interrupts
// save.
#include <spdlog/spdlog.h>

#include <cmath>
#include <limits>

#include "data/kv_file.h"
#include "test_train_util.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/signals.h"
#include "train/trainer.h"

namespace kvc {
namespace {

using train::Trainer;
using train::TrainOptions;

TrainOptions quiet(const std::string& out) {
  spdlog::set_level(spdlog::level::warn);  // the trainer's info lines would drown the report
  TrainOptions o;
  o.out = out;
  o.progress = train::ProgressMode::none;
  return o;
}

// SPEC section 4: for the linear kinds the teacher loss falls below 1e-3 of its
// start at `small` with 2000 steps, lr 1e-2, 20 warmup steps, cosine (about 4 s
// each on one CPU core).
TEST_CASE(
    "train: teacher task drives conv and efficient_conv below 1e-3 of "
    "the start") {
  for (const char* kind : {"conv", "efficient_conv"}) {
    test::TempDir dir(std::string("teacher_") + kind);
    TrainOptions o = quiet(dir.path);
    o.compressor = kind;
    o.task = "teacher";
    o.steps = 2000;
    o.lr = 1e-2;
    o.warmup = 20;
    o.eval_every = 1000;
    o.save_every = 0;
    Trainer t(o);
    const train::TrainResult r = t.run();
    INFO(kind, ": eval loss ", r.first_eval, " -> ", r.last_eval);
    CHECK(r.step == 2000);
    REQUIRE(std::isfinite(r.first_eval));  // step 0: the untrained pair
    CHECK(r.last_eval < 1e-3 * r.first_eval);
    CHECK(r.last_loss < 1e-3 * r.first_loss);
  }
}

// Every kind learns the distill task: after a short run its eval loss is well
// below the untrained pair's on the same held-out batches.
TEST_CASE(
    "train: distill lowers the eval loss of every kind clearly below the "
    "untrained pair's") {
  for (const std::string& kind : compressor_kinds()) {
    test::TempDir dir("distill_" + kind);
    TrainOptions o = quiet(dir.path);
    o.compressor = kind;
    o.steps = 200;
    o.lr = 3e-3;
    o.warmup = 10;
    o.eval_every = 0;
    o.save_every = 0;
    o.save_best = false;
    Trainer t(o);
    const double untrained = t.evaluate();
    const train::TrainResult r = t.run();
    INFO(kind, ": eval loss ", untrained, " -> ", r.last_eval);
    CHECK(std::isfinite(r.last_eval));
    // scaled_attention_pool starts near mean pooling (its d^-0.5 logits are
    // flat), already a good compressor of this data, and ends about 25% lower;
    // every other kind at least halves.
    const double factor = kind == "scaled_attention_pool" ? 0.85 : 0.5;
    CHECK(r.last_eval < factor * untrained);
  }
}

void check_bit_equal(Trainer& a, Trainer& b) {
  Adam& x = a.optimizer();
  Adam& y = b.optimizer();
  REQUIRE(x.names() == y.names());
  CHECK(x.step_count() == y.step_count());
  for (const std::string& key : x.names()) {
    INFO("tensor ", key);
    CHECK(x.param(key).to_vector() == y.param(key).to_vector());
    CHECK(x.exp_avg(key).to_vector() == y.exp_avg(key).to_vector());
    CHECK(x.exp_avg_sq(key).to_vector() == y.exp_avg_sq(key).to_vector());
  }
  CHECK(a.pair().rng_counters() == b.pair().rng_counters());
  CHECK(a.train_source().position() == b.train_source().position());
  // The metrics history of the pieces equals the uninterrupted one, step for
  // step.
  const auto& ra = a.metrics().rows();
  const auto& rb = b.metrics().rows();
  REQUIRE(ra.size() == rb.size());
  for (size_t i = 0; i < ra.size(); ++i) {
    CHECK(ra[i].step == rb[i].step);
    CHECK((ra[i].loss == rb[i].loss || (std::isnan(ra[i].loss) && std::isnan(rb[i].loss))));
    CHECK((ra[i].lr == rb[i].lr || (std::isnan(ra[i].lr) && std::isnan(rb[i].lr))));
  }
}

// Continuing N steps then M more from the checkpoint equals N + M uninterrupted
// steps, bit for bit: parameters, Adam moments, step, LR schedule position,
// dropout counters, data position.
TEST_CASE(
    "train: resume after N steps then M more equals N + M steps bit for "
    "bit (CPU)") {
  struct Case {
    const char* kind;
    const char* task;
    double dropout;
    bool file;
  };
  for (const Case& c :
       {Case{"enhanced_mlp", "distill", 0.2, false}, Case{"conv", "teacher", 0.0, true}}) {
    INFO(c.kind, " ", c.task, c.file ? " on a file" : " on synthetic data");
    test::TempDir dir(std::string("resume_") + c.kind);
    TrainOptions o = quiet(dir / "full");
    o.compressor = c.kind;
    o.task = c.task;
    o.dropout = c.dropout;
    o.steps = 25;
    o.lr = 1e-2;
    o.warmup = 5;
    o.eval_every = 4;
    o.save_every = 0;
    o.batch = 3;
    o.seq = 64;
    if (c.file) {
      // 40 sequences in batches of 3: 12 train batches an epoch, so the run
      // reshuffles twice.
      KVShape s;
      s.seq = 64;
      generate_kv_file(dir / "kv.h5", s, 40, 5);
      o.data = dir / "kv.h5";
    }
    Trainer full(o);
    full.run();
    CHECK(full.step() == 25);

    TrainOptions first = o;
    first.out = dir / "pieces";
    first.stop_at = 11;
    {
      Trainer t(first);
      const train::TrainResult r = t.run();
      CHECK(r.stopped);
      CHECK(r.step == 11);
    }
    TrainOptions second = quiet("");  // everything else comes from the checkpoint
    second.resume = dir / "pieces/checkpoint.h5";
    second.steps = 0;
    Trainer resumed(second);
    CHECK(resumed.step() == 11);
    CHECK(resumed.out_dir() == dir / "pieces");
    resumed.run();
    CHECK(resumed.step() == 25);
    check_bit_equal(full, resumed);

    // And the files agree too: the final checkpoints hold the same tensors.
    const train::Checkpoint a = train::load_checkpoint(dir / "full/checkpoint.h5");
    const train::Checkpoint b = train::load_checkpoint(dir / "pieces/checkpoint.h5");
    REQUIRE(a.params.size() == b.params.size());
    for (size_t i = 0; i < a.params.size(); ++i) {
      CHECK(a.params[i].second.to_vector() == b.params[i].second.to_vector());
      CHECK(a.optim.exp_avg_sq[i].second.to_vector() == b.optim.exp_avg_sq[i].second.to_vector());
    }
    CHECK(a.rng == b.rng);
  }
}

TEST_CASE(
    "train: a loss that turns NaN stops naming the step and keeps the "
    "last checkpoint") {
  test::TempDir dir("nan");
  TrainOptions o = quiet(dir.path);
  o.compressor = "mlp";
  o.steps = 200;
  o.lr = 1e36;  // Adam moves every weight by ~lr a step: float32 overflows
                // within a few steps
  o.warmup = 0;
  o.clip = 0;
  o.save_every = 1;
  o.eval_every = 0;
  Trainer t(o);
  std::string message;
  try {
    t.run();
  } catch (const Error& e) {
    message = e.what();
  }
  INFO(message);
  REQUIRE(!message.empty());
  CHECK(message.find("at step ") != std::string::npos);
  CHECK(message.find("last good checkpoint") != std::string::npos);
  CHECK(message.find('\n') == std::string::npos);
  const train::Checkpoint ck = train::load_checkpoint(dir / "checkpoint.h5");
  CHECK(ck.meta.step == t.step());
  CHECK(message.find("at step " + std::to_string(t.step() + 1)) != std::string::npos);
  for (const auto& [key, p] : ck.params) {
    for (double v : p.to_vector()) REQUIRE(std::isfinite(v));
  }
}

TEST_CASE(
    "train: an interrupt saves a checkpoint and reports it, the run "
    "resumes from it") {
  test::TempDir dir("interrupt");
  TrainOptions o = quiet(dir.path);
  o.steps = 50;
  o.eval_every = 10;
  o.save_every = 0;
  {
    Trainer t(o);  // holds the folder's lock until it goes away
    train::request_interrupt();
    const train::TrainResult r = t.run();
    train::clear_interrupt();
    CHECK(r.interrupted);
    CHECK(r.step == 1);  // the step in flight completes, then the loop saves and stops
  }
  CHECK(train::load_checkpoint(dir / "checkpoint.h5").meta.step == 1);
  TrainOptions again = quiet("");
  again.resume = dir / "checkpoint.h5";
  again.steps = 0;
  Trainer t2(again);
  CHECK(t2.run().step == 50);
  // metrics.csv covers every step once, with the step-0 baseline and the final
  // evaluation.
  const train::MetricsHistory h = train::read_metrics_csv(dir / "metrics.csv");
  REQUIRE(h.size() == 51);
  for (size_t i = 0; i < h.size(); ++i) CHECK(h.rows()[i].step == static_cast<int64_t>(i));
  CHECK(std::isfinite(h.rows().front().eval_loss));
  CHECK(std::isfinite(h.rows().back().eval_loss));
  CHECK(test::read_text(dir / "loss.svg").rfind("<svg", 0) == 0);
}

// The GPU path of the loop (losses read in batches, not every step) books every step, follows
// the CPU run, and resumes: N steps then M more equal N + M steps within fp32 rounding.
// Twenty steps of `o` (batch 2, seq 64, an eval every 5 steps; the GPU reads its losses every 7
// steps and at the evals) on the CPU into dir/cpu, then on the GPU into dir/gpu: every step is
// booked on both, and the GPU's losses (with `norms`, its gradient norms too) follow the CPU's
// within float32 rounding. Returns the GPU run's options.
TrainOptions check_gpu_follows_cpu(const test::TempDir& dir, TrainOptions o, bool norms) {
  o.out = dir / "cpu";
  o.steps = 20;
  o.eval_every = 5;
  o.save_every = 0;
  o.log_every = 7;
  o.batch = 2;
  o.seq = 64;
  Trainer(o).run();
  TrainOptions g = o;
  g.out = dir / "gpu";
  g.device = Device::cuda();
  Trainer(g).run();
  const train::MetricsHistory hc = train::read_metrics_csv(dir / "cpu/metrics.csv");
  const train::MetricsHistory hg = train::read_metrics_csv(dir / "gpu/metrics.csv");
  REQUIRE(hg.size() == 21);  // step 0 (the untrained eval) and every step once
  REQUIRE(hc.size() == hg.size());
  for (size_t i = 1; i < hg.size(); ++i) {
    const auto& c = hc.rows()[i];
    const auto& d = hg.rows()[i];
    INFO("step ", i);
    CHECK(d.step == static_cast<int64_t>(i));
    // The same data, init and dropout masks on both devices: only float rounding differs.
    CHECK(std::fabs(d.loss - c.loss) <= 1e-4 * std::fabs(c.loss));
    if (norms) CHECK(std::fabs(d.grad_norm - c.grad_norm) <= 1e-4 * std::fabs(c.grad_norm));
  }
  return g;
}

TEST_CASE("train cuda: a GPU run follows the CPU run, books every step, and resumes") {
  KVC_REQUIRE_CUDA();
  test::TempDir dir("train_cuda");
  TrainOptions o = quiet("");
  o.compressor = "enhanced_mlp";
  o.dropout = 0.2;
  const TrainOptions g = check_gpu_follows_cpu(dir, o, /*norms=*/false);

  TrainOptions first = g;
  first.out = dir / "pieces";
  first.stop_at = 9;
  CHECK(Trainer(first).run().step == 9);
  TrainOptions second = quiet("");
  second.resume = dir / "pieces/checkpoint.h5";
  second.steps = 0;
  second.device = Device::cuda();
  Trainer resumed(second);
  CHECK(resumed.run().step == 20);
  const train::Checkpoint a = train::load_checkpoint(dir / "gpu/checkpoint.h5");
  const train::Checkpoint b = train::load_checkpoint(dir / "pieces/checkpoint.h5");
  REQUIRE(a.params.size() == b.params.size());
  for (size_t i = 0; i < a.params.size(); ++i) {
    INFO(a.params[i].first);
    CHECK(test::rel_error(b.params[i].second, a.params[i].second) < 1e-6);
    CHECK(test::rel_error(b.optim.exp_avg[i].second, a.optim.exp_avg[i].second) < 1e-6);
  }
  CHECK(a.rng == b.rng);
}

TEST_CASE("train cuda: with --clip 0 the steps not read back take their norm in the update") {
  KVC_REQUIRE_CUDA();
  // No dropout: from the third step on the GPU replays its graphs. Steps 5, 7, 10, 14, 15 and 20
  // are read back before their update and take their norm first; every other step's comes from
  // the update, and the metrics still hold every step's loss and norm.
  test::TempDir dir("train_cuda_clip0");
  TrainOptions o = quiet("");
  o.compressor = "grouped_mlp";
  o.clip = 0;
  check_gpu_follows_cpu(dir, o, /*norms=*/true);
}

}  // namespace
}  // namespace kvc
