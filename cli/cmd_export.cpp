// `kvcompress export CKPT --out FILE.safetensors`: a checkpoint's parameters as safetensors.
#include <cstdio>
#include <memory>

#include "cli/cli_options.h"
#include "train/safetensors.h"

namespace kvc::cli {

namespace {

struct ExportArgs {
  std::string checkpoint;
  std::string out;
  bool overwrite = false;
};

int run_export(const ExportArgs& a) {
  const size_t n = train::export_safetensors(a.checkpoint, a.out, a.overwrite);
  std::printf("wrote %zu tensors (float32) to %s\n", n, a.out.c_str());
  return kExitOk;
}

}  // namespace

Command add_export_command(CLI::App& app) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* cmd = app.add_subcommand(
      "export",
      "write a checkpoint's parameters as safetensors (float32, the same keys as its /params)");
  cmd->add_option("checkpoint", a->checkpoint, "checkpoint file (.h5)")->required();
  cmd->add_option("--out", a->out, "output file (.safetensors)")->required();
  cmd->add_flag("--overwrite", a->overwrite, "replace an existing output file");
  return {cmd, [a] { return run_export(*a); }};
}

}  // namespace kvc::cli
