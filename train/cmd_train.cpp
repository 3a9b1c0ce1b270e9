// `kvcompress train`: flags (SPEC section 7), then the Trainer; Ctrl-C saves
// and exits 130.
#include <spdlog/spdlog.h>

#include <cmath>
#include <memory>

#include "train/checkpoint.h"
#include "train/cli_options.h"
#include "train/signals.h"
#include "train/trainer.h"

namespace kvc::cli {

namespace {

struct TrainArgs {
  ModelFlags model;
  ShapeFlags shape;
  std::string task = "distill";
  std::string data;
  int64_t steps = 500;
  double lr = 1e-3;
  double weight_decay = 0.0;
  int64_t warmup = 20;
  double clip = 1.0;
  uint64_t seed = 0;
  std::string device = "auto";
  std::string precision = "fp32";
  std::string out;
  std::string resume;
  int64_t eval_every = 50;
  int64_t save_every = 100;
  int64_t log_every = 50;
  int64_t eval_batches = 4;
  int64_t stop_at = 0;
  std::string progress = "auto";
  bool no_graph = false;
  bool overwrite = false;
  int64_t patience = 0;
};

// With --resume the checkpoint fixes the model, the data and the schedule; a
// flag given explicitly that disagrees with it is a usage error rather than
// silently ignored.
void check_resume_flags(const CLI::App* cmd, const TrainArgs& a, const train::CheckpointMeta& m) {
  auto given = [&](const char* flag) { return cmd->count(flag) > 0; };
  auto conflict = [&](const char* flag, const std::string& mine, const std::string& theirs) {
    KVC_USAGE_CHECK(!given(flag) || mine == theirs, flag, " ", mine, " conflicts with --resume ",
                    a.resume, " (trained with ", theirs, "); drop the flag to continue that run");
  };
  auto s = [](auto v) { return str(v); };
  conflict("--compressor", a.model.compressor, m.compressor);
  conflict("--heads", s(a.shape.heads), s(m.heads));
  conflict("--dim-head", s(a.shape.dim_head), s(m.dim_head));
  conflict("--block", s(a.shape.block), s(m.block));
  conflict("--seq", s(a.shape.seq), s(m.seq));
  conflict("--batch", s(a.shape.batch), s(m.batch));
  conflict("--queries", s(a.shape.queries), s(m.queries));
  conflict("--expand", s(a.model.expand), s(m.expand));
  conflict("--dropout", s(a.model.dropout), s(m.dropout));
  conflict("--reduction", s(a.model.reduction), s(m.reduction));
  conflict("--task", a.task, m.task);
  conflict("--seed", s(a.seed), s(m.seed));
  conflict("--lr", s(a.lr), s(m.lr));
  conflict("--warmup", s(a.warmup), s(m.warmup));
  conflict("--clip", s(a.clip), s(m.clip));
  conflict("--data", a.data, m.data);
}

int run_train(const CLI::App* cmd, const TrainArgs& a) {
  train::TrainOptions o;
  const bool resuming = !a.resume.empty();
  if (resuming) {
    const train::CheckpointMeta m = train::read_checkpoint_meta(a.resume);
    check_resume_flags(cmd, a, m);
    o.resume = a.resume;
    o.steps = cmd->count("--steps") > 0 ? a.steps : 0;  // 0: the checkpoint's planned length
    KVC_USAGE_CHECK(o.steps == 0 || o.steps >= m.step, "--steps ", a.steps,
                    " is below the checkpoint's step ", m.step);
    // Evaluations keep measuring what the run measured before, so "best" stays comparable.
    if (cmd->count("--eval-batches") == 0) o.eval_batches = m.eval_batches;
    if (cmd->count("--weight-decay") > 0) {
      spdlog::warn(
          "--weight-decay is taken from the checkpoint on --resume; "
          "ignoring the flag");
    }
  } else {
    if (a.data.empty()) validate_shape(a.shape, a.model);
    o.steps = a.steps;
  }
  KVC_USAGE_CHECK(a.stop_at == 0 || a.stop_at <= (o.steps ? o.steps : a.stop_at), "--stop-at ",
                  a.stop_at, " is beyond --steps ", o.steps);
  o.compressor = a.model.compressor;
  o.heads = a.shape.heads;
  o.dim_head = a.shape.dim_head;
  o.block = a.shape.block;
  o.expand = a.model.expand;
  o.dropout = a.model.dropout;
  o.reduction = a.model.reduction;
  o.task = a.task;
  o.data = a.data;
  o.batch = a.shape.batch;
  o.seq = a.shape.seq;
  o.queries = a.shape.queries;
  o.lr = a.lr;
  o.weight_decay = a.weight_decay;
  o.warmup = a.warmup;
  o.clip = a.clip;
  o.seed = a.seed;
  o.out = a.out;
  o.eval_every = a.eval_every;
  o.save_every = a.save_every;
  o.log_every = a.log_every;
  if (!resuming || cmd->count("--eval-batches") > 0) o.eval_batches = a.eval_batches;
  o.stop_at = a.stop_at;
  o.cuda_graph = !a.no_graph;
  o.overwrite = a.overwrite;
  o.patience = a.patience;
  KVC_USAGE_CHECK(a.patience == 0 || a.eval_every > 0, "--patience ", a.patience,
                  " needs evaluations during the run (--eval-every is 0)");
  o.progress = a.progress == "tty"    ? train::ProgressMode::tty
               : a.progress == "log"  ? train::ProgressMode::log
               : a.progress == "none" ? train::ProgressMode::none
                                      : train::ProgressMode::automatic;
  o.device = resolve_device(a.device);
  apply_precision(a.precision, o.device);

  train::Trainer trainer(o);
  train::clear_interrupt();
  train::install_interrupt_handlers();
  train::TrainResult r;
  try {
    r = trainer.run();
  } catch (...) {
    train::restore_default_handlers();
    throw;
  }
  train::restore_default_handlers();
  return r.interrupted ? kExitInterrupted : kExitOk;
}

}  // namespace

Command add_train_command(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "train a compressor pair (SPEC sections 4 and 7)");
  add_model_flags(cmd, &a->model, /*allow_all=*/false);
  add_shape_flags(cmd, &a->shape);
  cmd->add_option("--task", a->task,
                  "distill: match full attention with compressed K/V; teacher: "
                  "match a frozen "
                  "noisy pair")
      ->capture_default_str()
      ->check(CLI::IsMember({"distill", "teacher"}));
  cmd->add_option("--data", a->data,
                  "KV HDF5 file (k, v (N, h, seq, d), optional q); empty: "
                  "synthetic data from "
                  "--seed")
      ->capture_default_str();
  cmd->add_option("--steps", a->steps,
                  "optimizer steps in total; with --resume, a new length re-plans the cosine to "
                  "end there, reached from the current learning rate over --warmup steps")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--lr", a->lr, "peak learning rate (linear warmup, then cosine to 0)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--weight-decay", a->weight_decay,
                  "decoupled weight decay: > 0 trains with AdamW "
                  "(torch.optim.AdamW), 0 with Adam")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--warmup", a->warmup, "linear warmup steps")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--clip", a->clip, "max global gradient norm; 0 turns clipping off")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--seed", a->seed, "seed of the initial weights, dropout and synthetic data")
      ->capture_default_str();
  add_device_flag(cmd, &a->device);
  add_precision_flag(cmd, &a->precision);
  cmd->add_option("--out", a->out, "output folder (default: a new runs/<timestamp>-<kind>)")
      ->capture_default_str();
  cmd->add_option("--resume", a->resume,
                  "continue from this checkpoint (its model, data and "
                  "schedule; --steps may "
                  "extend the run)")
      ->capture_default_str();
  cmd->add_option("--eval-every", a->eval_every,
                  "evaluate on the held-out batches every N steps (0: at the end only)")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--save-every", a->save_every,
                  "write OUT/checkpoint.h5 every N steps (0: at the end only)")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--log-every", a->log_every, "log a line every N steps when not on a terminal")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--eval-batches", a->eval_batches, "held-out batches per evaluation")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--stop-at", a->stop_at,
                  "stop with a checkpoint at this step, as Ctrl-C would (0: "
                  "run to --steps)")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_flag("--overwrite", a->overwrite,
                "start over in an --out folder that holds another run (its checkpoints and "
                "metrics are deleted)");
  cmd->add_option("--patience", a->patience,
                  "stop early after N evaluations in a row without a lower eval loss "
                  "(checkpoint.h5 saved, best.h5 kept); 0: never")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--progress", a->progress,
                  "auto: an updating line on a terminal, log lines otherwise; "
                  "tty|log|none")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "tty", "log", "none"}));
  cmd->add_flag("--no-graph", a->no_graph,
                "launch every step op by op; by default a CUDA run without dropout replays its "
                "step from CUDA graphs after two warm-up steps (same results, less launch time)");
  return {cmd, [cmd, a] { return run_train(cmd, *a); }};
}

}  // namespace kvc::cli
