// `kvcompress gen-data`: writes the synthetic generator's sequences as a KV
// HDF5 file (the KV file of docs/formats.md).
#include <spdlog/spdlog.h>

#include <memory>

#include "cli/cli_options.h"
#include "data/kv_file.h"
#include "train/progress.h"
#include "train/signals.h"

namespace kvc::cli {

namespace {

struct GenDataArgs {
  std::string out;
  int64_t count = 64;
  RunSettings shape;  // the shape flags (block and batch are refused: they do not shape the file)
  uint64_t seed = 0;
  std::string device = "cpu";
};

int run_gen_data(const GenDataArgs& a) {
  KVC_USAGE_CHECK(a.shape.seq >= 1 && a.count >= 1, "--count and --seq must be positive");
  const Device device = resolve_device(a.device);
  KVShape shape = a.shape;
  shape.batch = std::min<int64_t>(RunSettings{}.batch, a.count);  // the generator's chunk
  train::ItemProgress progress("gen-data: sequences written", a.count);
  train::InterruptScope interrupts;  // Ctrl-C: the temp file goes, exit 130
  generate_kv_file(a.out, shape, a.count, a.seed, device, [&](int64_t written) {
    progress.update(written);
    train::throw_if_interrupted("gen-data");
  });
  spdlog::info(
      "wrote {}: {} sequences, k and v ({}, {}, {}, {}), q ({}, {}, {}, {}) and q_pos ({}, {}), "
      "seed {}",
      a.out, a.count, a.count, shape.heads, shape.seq, shape.dim_head, a.count,
      shape.heads * shape.query_heads, shape.queries, shape.dim_head, a.count, shape.queries,
      a.seed);
  return kExitOk;
}

}  // namespace

Command add_gen_data_command(CLI::App& app) {
  auto a = std::make_shared<GenDataArgs>();
  CLI::App* cmd = app.add_subcommand("gen-data", "write synthetic KV sequences to an HDF5 file");
  cmd->add_option("--out", a->out, "output file (.h5); written atomically")->required();
  cmd->add_option("--count", a->count, "number of sequences N")
      ->capture_default_str()
      ->check(positive());
  add_setting_flags(cmd, &a->shape, train::SettingGroup::shape);
  refuse_flag(cmd, "--block", "the file holds whole sequences; train splits them into blocks");
  refuse_flag(cmd, "--stride", "the file holds whole sequences; train chooses the blocks' stride");
  refuse_flag(cmd, "--batch",
              "the file holds --count sequences; train and infer choose their own batches");
  cmd->add_option("--seed", a->seed, "generator seed")->capture_default_str();
  add_device_flag(cmd, &a->device);
  return {cmd, [a] { return run_gen_data(*a); }};
}

}  // namespace kvc::cli
