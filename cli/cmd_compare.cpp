// `kvcompress compare --compressors all|LIST [train flags]`: trains each kind on the same data
// and seed, one run folder per kind, then writes the leaderboard (train/leaderboard.h).
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <memory>

#include "cli/cli_options.h"
#include "train/leaderboard.h"
#include "train/progress.h"  // format_loss
#include "train/signals.h"
#include "train/trainer.h"

namespace kvc::cli {

namespace {

struct CompareArgs {
  RunSettings run;
  std::string compressors = "all";
  std::string device = "auto";
  std::string precision = "fp32";
  std::string out;
  std::string progress = "auto";
  bool overwrite = false;
};

// Trains `kind` into OUT/<kind>; fills its leaderboard row and eval curve from its metrics.csv.
train::TrainResult train_kind(const train::TrainOptions& base, const std::string& kind,
                              std::vector<train::LeaderboardRow>& rows,
                              std::vector<train::EvalCurve>& curves) {
  train::TrainOptions o = base;
  o.compressor = kind;
  o.out = base.out + "/" + kind;
  const auto start = std::chrono::steady_clock::now();
  train::Trainer trainer(o);
  const train::TrainResult r = trainer.run();
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const train::CsvColumns metrics = train::read_csv_columns(o.out + "/metrics.csv");
  rows.push_back(train::leaderboard_row(kind, trainer.pair().num_parameters(), wall, metrics));
  curves.push_back(train::eval_curve(kind, metrics));
  return r;
}

int run_compare(const CLI::App* cmd, const CompareArgs& a) {
  const std::vector<std::string> kinds = parse_kind_list("--compressors", a.compressors);
  train::TrainOptions o;
  static_cast<RunSettings&>(o) = a.run;
  for (const std::string& kind : kinds) {
    o.compressor = kind;
    if (a.run.data.empty()) validate_shape(o);
  }
  if (!a.run.data.empty()) check_data_flags(cmd, a.run);
  o.out = a.out.empty() ? train::default_run_dir("compare") : a.out;
  o.overwrite = a.overwrite;
  o.progress = progress_mode(a.progress);
  o.device = resolve_device(a.device);
  apply_precision(a.precision, o.device);
  train::make_output_dir(o.out);
  const std::string note = "Every kind trained with " +
                           train::settings_summary(o, train::SettingGroup::model, false) + "; " +
                           train::settings_summary(o, train::SettingGroup::shape) + "; " +
                           train::settings_summary(o, train::SettingGroup::train) + "; device " +
                           o.device.name() + ", precision " + a.precision + ".";

  std::vector<train::LeaderboardRow> rows;
  std::vector<train::EvalCurve> curves;
  bool interrupted = false;
  train::clear_interrupt();
  train::install_interrupt_handlers();
  try {
    for (size_t i = 0; i < kinds.size() && !interrupted; ++i) {
      spdlog::info("kind {}/{}: {} (into {}/{})", i + 1, kinds.size(), kinds[i], o.out, kinds[i]);
      const train::TrainResult r = train_kind(o, kinds[i], rows, curves);
      interrupted = r.interrupted;
      const train::LeaderboardRow& row = rows.back();
      spdlog::info("kind {}/{}: {} done: best eval loss {} at step {}, {:.2f} ms/step, {:.1f} s",
                   i + 1, kinds.size(), kinds[i], train::format_loss(row.best_eval), row.best_step,
                   row.ms_per_step, row.wall_seconds);
    }
  } catch (...) {
    train::restore_default_handlers();
    throw;
  }
  train::restore_default_handlers();
  train::write_leaderboard(o.out, rows, curves,
                           interrupted
                               ? note + " Interrupted after " + std::to_string(rows.size()) +
                                     " of " + std::to_string(kinds.size()) + " kinds."
                               : note);
  std::fputs(train::leaderboard_markdown(train::ranked(rows), note).c_str(), stdout);
  spdlog::info(
      "output folder {}: leaderboard.csv, leaderboard.md, compare.svg, one folder per kind", o.out);
  return interrupted ? kExitInterrupted : kExitOk;
}

}  // namespace

Command add_compare_command(CLI::App& app) {
  auto a = std::make_shared<CompareArgs>();
  CLI::App* cmd = app.add_subcommand(
      "compare",
      "train each compressor kind on the same data and seed; write a leaderboard "
      "(leaderboard.csv, leaderboard.md) and every kind's eval curve (compare.svg)");
  cmd->add_option("--compressors", a->compressors,
                  "the kinds to train: all, or a comma-separated list (conv,mlp)")
      ->capture_default_str();
  add_setting_flags(cmd, &a->run, train::SettingGroup::model);
  cmd->remove_option(cmd->get_option("--compressor"));  // --compressors chooses the kinds
  add_setting_flags(cmd, &a->run, train::SettingGroup::shape);
  add_setting_flags(cmd, &a->run, train::SettingGroup::train);
  add_device_flag(cmd, &a->device);
  add_precision_flag(cmd, &a->precision);
  cmd->add_option("--out", a->out,
                  "output folder, one subfolder per kind (default: a new runs/<timestamp>-compare)")
      ->capture_default_str();
  add_progress_flag(cmd, &a->progress);
  cmd->add_flag("--overwrite", a->overwrite,
                "start over in kind folders that hold another run (their files are deleted)");
  return {cmd, [cmd, a] { return run_compare(cmd, *a); }};
}

}  // namespace kvc::cli
