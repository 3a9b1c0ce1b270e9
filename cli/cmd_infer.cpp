// `kvcompress infer`: compresses every sequence of a KV file with a
// checkpoint's pair (eval mode).
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "cli/cli_options.h"
#include "core/autograd.h"
#include "data/atomic_file.h"
#include "data/file_checks.h"
#include "data/kv_file.h"
#include "train/checkpoint.h"
#include "train/metrics.h"
#include "train/progress.h"
#include "train/signals.h"
#include "train/trainer.h"

namespace kvc::cli {

namespace {

struct InferArgs {
  std::string checkpoint;
  std::string data;
  std::string out;
  std::string device = "auto";
  std::string precision = "fp32";
  int64_t batch = 8;
};

int run_infer(const InferArgs& a) {
  const Device device = resolve_device(a.device);
  apply_precision(a.precision, device);
  const train::Checkpoint ck = train::load_checkpoint(a.checkpoint, /*with_optim=*/false);
  const train::CheckpointMeta& m = ck.meta;
  std::shared_ptr<CompressorPair> pair = train::pair_from_checkpoint(ck, device);
  pair->eval();

  H5File in = H5File::open(a.data, H5Mode::read);
  const KVFileInfo info = inspect_kv_file(in);
  KVC_CHECK(info.heads == m.heads && info.dim_head == m.dim_head, "infer: ", a.data,
            " has k of shape (", info.count, ", ", info.heads, ", ", info.seq, ", ", info.dim_head,
            ") but the checkpoint's pair needs h ", m.heads, " and d ", m.dim_head);
  KVC_CHECK(info.seq >= m.block, "infer: ", a.data, " has seq ", info.seq,
            ", shorter than one block of ", m.block);
  const int64_t w = pair->windows(info.seq);  // (seq - n) / stride + 1 blocks

  require_distinct_files(a.data, a.out, "infer");
  require_replaceable_output(a.out, "infer");
  train::InterruptScope interrupts;  // Ctrl-C: the temp file goes, exit 130
  // A temp file in the output's folder, renamed over --out at the end: never a
  // partial result.
  const std::string tmp = temp_path_for(a.out);
  try {
    H5File out = H5File::open(tmp, H5Mode::create);
    const Shape shape{info.count, info.heads, w, info.dim_head};
    const int64_t chunk = std::max<int64_t>(1, std::min(a.batch, info.count));
    out.create_dataset("/k_compressed", shape, DType::f32, chunk);
    out.create_dataset("/v_compressed", shape, DType::f32, chunk);
    NoGradGuard no_grad;
    train::ItemProgress progress("infer: sequences compressed", info.count);
    for (int64_t start = 0; start < info.count; start += chunk) {
      const int64_t n = std::min(chunk, info.count - start);
      const Tensor k = read_kv_rows(in, "k", start, n, DType::f32, device);
      const Tensor v = read_kv_rows(in, "v", start, n, DType::f32, device);
      const auto kv = pair->compress(k, v);
      out.write_rows("/k_compressed", start, kv.first);
      out.write_rows("/v_compressed", start, kv.second);
      progress.update(start + n);
      train::throw_if_interrupted("infer");
    }
    out.set_attr("/", "checkpoint", a.checkpoint);
    out.set_attr("/", "data", a.data);
    out.set_attr("/", "compressor", m.compressor);
    out.set_attr("/", "block", m.block);
    out.set_attr("/", "stride", pair->stride());
    out.set_attr("/", "step", m.step);
    out.set_attr("/", "created", train::iso8601_now());
    out.set_attr("/", "kvcompress_version", std::string(KVC_VERSION));
    out.flush();
    out.close();
    publish_file(tmp, a.out, "infer");
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  spdlog::info(
      "wrote {}: k_compressed and v_compressed ({}, {}, {}, {}) from "
      "{} sequences of {}",
      a.out, info.count, info.heads, w, info.dim_head, info.count, a.data);
  return kExitOk;
}

}  // namespace

Command add_infer_command(CLI::App& app) {
  auto a = std::make_shared<InferArgs>();
  CLI::App* cmd = app.add_subcommand("infer",
                                     "compress every sequence of a KV file with a "
                                     "checkpoint's pair (eval mode)");
  cmd->add_option("--checkpoint", a->checkpoint, "checkpoint file (.h5)")->required();
  cmd->add_option("--data", a->data, "KV HDF5 file: k, v (N, h, seq, d)")->required();
  cmd->add_option("--out", a->out, "output file: k_compressed, v_compressed (N, h, w, d) float32")
      ->required();
  add_device_flag(cmd, &a->device);
  add_precision_flag(cmd, &a->precision);
  cmd->add_option("--batch", a->batch, "sequences per forward")
      ->capture_default_str()
      ->check(positive());
  return {cmd, [a] { return run_infer(*a); }};
}

}  // namespace kvc::cli
