// `kvcompress train`: flags (docs/cli.md), then the Trainer; Ctrl-C saves
// and exits 130.
#include <spdlog/spdlog.h>

#include <cmath>
#include <memory>

#include "cli/cli_options.h"
#include "data/kv_file.h"
#include "dist/communicator.h"
#include "train/checkpoint.h"
#include "train/signals.h"
#include "train/trainer.h"

namespace kvc::cli {

namespace {

struct TrainArgs {
  RunSettings run;
  std::string device = "auto";
  std::string precision = "fp32";
  std::string out;
  std::string resume;
  std::string progress = "auto";
  bool no_graph = false;
  bool overwrite = false;
  int64_t patience = 0;
  std::string config_file;
};

// With --resume the checkpoint fixes the model, the data and the schedule (its stored
// settings); a flag given explicitly that disagrees with it is a usage error rather than
// silently ignored. --steps may extend the run.
void check_resume_flags(const CLI::App* cmd, const TrainArgs& a, const train::CheckpointMeta& m) {
  for (const train::Setting& s : train::settings_table()) {
    const std::string flag = train::setting_flag(s);
    if (s.stored == train::Stored::no || flag == "--steps" || cmd->count(flag) == 0) continue;
    const std::string mine = train::setting_text(a.run, s), theirs = train::setting_text(m, s);
    KVC_USAGE_CHECK(mine == theirs, flag, " ", mine, " conflicts with --resume ", a.resume,
                    " (trained with ", theirs, "); drop the flag to continue that run");
  }
}

// OUT/config.toml: the run's resolved settings (a resume's come from its checkpoint, a KV
// file's shape from the file) and the flags that shape the computation, so that
// `train --config-file OUT/config.toml --out NEW` trains the same run again.
void write_run_config(const CLI::App* cmd, const TrainArgs& a, const train::Trainer& trainer) {
  const train::TrainOptions& o = trainer.options();
  std::string toml =
      "# kvcompress " + std::string(KVC_VERSION) +
      " train: this run's settings; 'kvcompress train --config-file THIS_FILE --out NEW_FOLDER' "
      "trains it again (flags given on the command line override these)\n";
  if (!a.resume.empty()) {
    toml += "# continued from " + a.resume +
            "; from step 0 these settings give the same run unless the resume changed --steps\n";
  }
  toml += train::settings_toml(o);
  toml += "device = " + train::toml_string(o.device.name()) + "\n";
  // Not repeated: the table's (resolved above), where the run writes or starts from, the display.
  std::vector<std::string> written{"device", "out", "resume", "overwrite", "progress"};
  for (const train::Setting& s : train::settings_table()) {
    written.push_back(train::setting_flag(s).substr(2));
  }
  toml += options_toml(cmd, written);
  train::write_file_atomic(o.out + "/config.toml", toml);
}

int run_train(const CLI::App* cmd, const TrainArgs& a) {
  train::TrainOptions o;
  static_cast<RunSettings&>(o) = a.run;
  const bool resuming = !a.resume.empty();
  if (resuming) {
    const train::CheckpointMeta m = train::read_checkpoint_meta(a.resume);
    check_resume_flags(cmd, a, m);
    o.resume = a.resume;
    o.steps = cmd->count("--steps") > 0 ? a.run.steps : 0;  // 0: the checkpoint's planned length
    KVC_USAGE_CHECK(o.steps == 0 || o.steps >= m.step, "--steps ", a.run.steps,
                    " is below the checkpoint's step ", m.step);
    // Evaluations keep measuring what the run measured before, so "best" stays comparable.
    if (cmd->count("--eval-batches") == 0) o.eval_batches = m.eval_batches;
    if (cmd->count("--weight-decay") > 0) {
      spdlog::warn(
          "--weight-decay is taken from the checkpoint on --resume; "
          "ignoring the flag");
    }
  } else if (a.run.data.empty()) {
    validate_shape(a.run);
  } else {
    check_data_flags(cmd, a.run);
  }
  KVC_USAGE_CHECK(a.run.stop_at == 0 || a.run.stop_at <= (o.steps ? o.steps : a.run.stop_at),
                  "--stop-at ", a.run.stop_at, " is beyond --steps ", o.steps);
  o.out = a.out;
  o.cuda_graph = !a.no_graph;
  o.overwrite = a.overwrite;
  o.patience = a.patience;
  KVC_USAGE_CHECK(a.patience == 0 || a.run.eval_every > 0, "--patience ", a.patience,
                  " needs evaluations during the run (--eval-every is 0)");
  o.progress = progress_mode(a.progress);
  o.device = dist::rank_device(resolve_device(a.device));  // a rank: the GPU of its local rank
  o.comm = dist::gradient_communicator(o.device);
  if (!o.comm->is_root()) o.progress = train::ProgressMode::none;
  apply_precision(a.precision, o.device);

  train::Trainer trainer(o);
  if (o.comm->is_root()) write_run_config(cmd, a, trainer);
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

void check_data_flags(const CLI::App* cmd, const RunSettings& r) {
  const KVFileInfo f = inspect_kv_file(r.data);
  auto conflict = [&](const char* flag, int64_t mine, int64_t theirs) {
    KVC_USAGE_CHECK(cmd->count(flag) == 0 || mine == theirs, flag, " ", mine,
                    " conflicts with --data ", r.data, ", which has ", theirs,
                    "; drop the flag (the file decides it)");
  };
  conflict("--heads", r.heads, f.heads);
  conflict("--dim-head", r.dim_head, f.dim_head);
  conflict("--seq", r.seq, f.seq);
  if (f.has_queries()) {
    conflict("--queries", r.queries, f.queries);
    conflict("--query-heads", r.query_heads, f.query_heads);
  }
}

Command add_train_command(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "train a compressor pair");
  add_setting_flags(cmd, &a->run, train::SettingGroup::model);
  add_setting_flags(cmd, &a->run, train::SettingGroup::shape);
  add_setting_flags(cmd, &a->run, train::SettingGroup::train);
  add_device_flag(cmd, &a->device);
  add_precision_flag(cmd, &a->precision);
  cmd->add_option("--out", a->out, "output folder (default: a new runs/<timestamp>-<kind>)")
      ->capture_default_str();
  cmd->add_option("--resume", a->resume,
                  "continue from this checkpoint (its model, data and schedule; --steps may "
                  "extend the run)")
      ->capture_default_str();
  add_progress_flag(cmd, &a->progress);
  cmd->add_flag("--overwrite", a->overwrite,
                "start over in an --out folder that holds another run (its checkpoints and "
                "metrics are deleted)");
  cmd->add_option("--patience", a->patience,
                  "stop early after N evaluations in a row without a lower eval loss "
                  "(checkpoint.h5 saved, best.h5 kept); 0: never")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_flag("--no-graph", a->no_graph,
                "launch every step op by op; by default a CUDA run without dropout replays its "
                "step from CUDA graphs after two warm-up steps (same results, less launch time)");
  add_config_file_flag(cmd, &a->config_file);
  return {cmd, [cmd, a] {
            if (!a->config_file.empty()) apply_config_file(cmd, a->config_file);
            return run_train(cmd, *a);
          }};
}

}  // namespace kvc::cli
