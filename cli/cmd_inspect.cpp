// `kvcompress inspect CKPT`: a checkpoint's attributes, parameters and last
// metrics.
#include <cmath>
#include <cstdio>
#include <memory>

#include "cli/cli_options.h"
#include "train/checkpoint.h"

namespace kvc::cli {

namespace {

std::string shape_text(const Shape& s) { return str(s); }

int run_inspect(const std::string& path) {
  const train::Checkpoint ck = train::load_checkpoint(path, /*with_optim=*/true);
  const train::CheckpointMeta& m = ck.meta;
  std::printf("checkpoint          %s\n", path.c_str());
  std::printf("format              %s version %lld\n", train::kCheckpointFormat,
              static_cast<long long>(train::kCheckpointFormatVersion));
  std::printf("compressor          %s\n", m.compressor.c_str());
  std::printf("heads               %lld\n", static_cast<long long>(m.heads));
  std::printf("dim_head            %lld\n", static_cast<long long>(m.dim_head));
  std::printf("block               %lld\n", static_cast<long long>(m.block));
  std::printf("expand              %g\n", m.expand);
  std::printf("dropout             %g\n", m.dropout);
  std::printf("reduction           %lld\n", static_cast<long long>(m.reduction));
  std::printf("task                %s\n", m.task.c_str());
  std::printf("seed                %llu\n", static_cast<unsigned long long>(m.seed));
  std::printf("step                %lld of %lld\n", static_cast<long long>(m.step),
              static_cast<long long>(m.steps));
  std::printf("data                %s (batch %lld, seq %lld, queries %lld)\n", m.data.c_str(),
              static_cast<long long>(m.batch), static_cast<long long>(m.seq),
              static_cast<long long>(m.queries));
  std::printf("schedule            lr %g, warmup %lld, clip %g\n", m.lr,
              static_cast<long long>(m.warmup), m.clip);
  std::printf("created             %s\n", m.created.c_str());
  std::printf("kvcompress_version  %s\n", m.kvcompress_version.c_str());
  if (ck.has_optim) {
    std::printf(
        "optimizer           %s, step %lld, lr %.3e, betas (%g, %g), eps %g, "
        "weight_decay %g\n",
        ck.optim.decoupled ? "AdamW" : "Adam", static_cast<long long>(ck.optim.step), ck.optim.lr,
        ck.optim.beta1, ck.optim.beta2, ck.optim.eps, ck.optim.weight_decay);
  }

  size_t width = 9;
  for (const auto& [key, t] : ck.params) width = std::max(width, key.size());
  std::printf("\n%-*s  %-16s %10s\n", static_cast<int>(width), "parameter", "shape", "count");
  int64_t total = 0;
  for (const auto& [key, t] : ck.params) {
    std::printf("%-*s  %-16s %10lld\n", static_cast<int>(width), key.c_str(),
                shape_text(t.shape()).c_str(), static_cast<long long>(t.numel()));
    total += t.numel();
  }
  std::printf("%-*s  %-16s %10lld\n", static_cast<int>(width), "total", "",
              static_cast<long long>(total));

  const auto& rows = ck.metrics.rows();
  std::printf("\nmetrics             %zu rows\n", rows.size());
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
    if (std::isfinite(it->loss)) {
      // Numbers as the training logs print them: losses %.4e, lr and grad_norm %.3e.
      std::printf("last train loss     %.4e at step %lld (lr %.3e, grad_norm %.3e)\n", it->loss,
                  static_cast<long long>(it->step), it->lr, it->grad_norm);
      break;
    }
  }
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
    if (std::isfinite(it->eval_loss)) {
      std::printf("last eval loss      %.4e at step %lld\n", it->eval_loss,
                  static_cast<long long>(it->step));
      break;
    }
  }
  return kExitOk;
}

}  // namespace

Command add_inspect_command(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("inspect",
                                     "print a checkpoint's attributes, parameter shapes and "
                                     "counts, last metrics");
  cmd->add_option("checkpoint", *path, "checkpoint file (.h5)")->required();
  return {cmd, [path] { return run_inspect(*path); }};
}

}  // namespace kvc::cli
