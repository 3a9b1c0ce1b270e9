// `kvcompress eval`: a checkpoint's loss on held-out data (synthetic from its
// seed, or a file).
#include <cmath>
#include <cstdio>
#include <memory>

#include "cli/cli_options.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace kvc::cli {

namespace {

struct EvalArgs {
  std::string checkpoint;
  std::string data;
  std::string device = "auto";
  std::string precision = "fp32";
  int64_t batches = 0;  // 0: the training's own count, from the checkpoint
};

int run_eval(const EvalArgs& a) {
  const Device device = resolve_device(a.device);
  apply_precision(a.precision, device);
  const train::Checkpoint ck = train::load_checkpoint(a.checkpoint, /*with_optim=*/false);
  const train::CheckpointMeta& m = ck.meta;
  std::shared_ptr<CompressorPair> pair = train::pair_from_checkpoint(ck, device);
  std::shared_ptr<CompressorPair> teacher;
  if (m.task == "teacher")
    teacher = CompressorPair::make_teacher(train::compressor_options(m, device));

  const KVShape& shape = m;
  // Without --data: the run's own held-out stream (its file when it trained on
  // one).
  const std::string data = a.data.empty() ? (m.data == "synthetic" ? "" : m.data) : a.data;
  std::unique_ptr<KVSource> source = train::make_source(data, shape, m.seed, device, Split::eval);
  const KVShape fs = source->shape();
  KVC_CHECK(fs.heads == m.heads && fs.dim_head == m.dim_head, "eval: ", data, " has h ", fs.heads,
            " and d ", fs.dim_head, " but the checkpoint's pair has h ", m.heads, " and d ",
            m.dim_head);
  KVC_CHECK(fs.seq >= m.block, "eval: ", data, " has seq ", fs.seq, ", shorter than one block of ",
            m.block);

  // The training's count by default, so the number matches the eval loss the run printed.
  const int64_t batches = a.batches > 0 ? a.batches : m.eval_batches;
  const train::EvalResult r =
      train::evaluate_with_recall(*pair, teacher.get(), m.task, *source, batches, m.topk);
  const double loss = r.loss;
  // The same pair untrained (the seed's initial weights): what the training
  // bought.
  CompressorPair fresh(train::compressor_options(m, device));
  const double base = train::evaluate(fresh, teacher.get(), m.task, *source, batches);
  std::printf("checkpoint   %s (step %lld, %s, task %s)\n", a.checkpoint.c_str(),
              static_cast<long long>(m.step), m.compressor.c_str(), m.task.c_str());
  std::printf("data         %s (%lld batches)\n", source->describe().c_str(),
              static_cast<long long>(batches));
  // Losses as the training logs print them (5 significant digits), so the two read alike.
  std::printf("eval loss    %.4e\n", loss);
  std::printf("untrained    %.4e (ratio %.3g)\n", base, base > 0 ? loss / base : NAN);
  if (m.task == "distill") {
    std::printf("recall@%-5lld %.4f (selection of the top %lld compressed blocks)\n",
                static_cast<long long>(m.topk), r.recall_at_k, static_cast<long long>(m.topk));
  }
  if (m.causal) {
    std::printf("left out     %lld of %lld queries (no complete block before them)\n",
                static_cast<long long>(r.queries_without_block), static_cast<long long>(r.queries));
  }
  return kExitOk;
}

}  // namespace

Command add_eval_command(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval",
                                     "loss of a checkpoint on held-out data "
                                     "(synthetic from its seed without --data)");
  cmd->add_option("--checkpoint", a->checkpoint, "checkpoint file (.h5)")->required();
  cmd->add_option("--data", a->data, "KV HDF5 file; its last 5% of sequences are the eval split")
      ->capture_default_str();
  add_device_flag(cmd, &a->device);
  add_precision_flag(cmd, &a->precision);
  cmd->add_option("--batches", a->batches,
                  "held-out batches to average over (default: as many as the training's "
                  "evaluations used, recorded in the checkpoint)")
      ->check(positive());
  return {cmd, [a] { return run_eval(*a); }};
}

}  // namespace kvc::cli
