// Tests that run the kvcompress binary: --help, exit codes and one-line errors
// for every bad input of SPEC section 8, the default run,
// eval/infer/inspect/gen-data/gradcheck/bench.
#include <hdf5.h>

#include <cctype>
#include <cmath>
#include <limits>
#include <sstream>

#include "core/tensor.h"
#include "data/h5file.h"
#include "test_train_util.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/metrics.h"

namespace kvc {
namespace {

using test::RunResult;
using test::TempDir;

// A KV file from explicit tensors (any shapes: the point is to write wrong ones
// too).
void write_kv(const std::string& path, const Tensor& k, const Tensor& v) {
  H5File f = H5File::open(path, H5Mode::create);
  f.write("/k", k);
  f.write("/v", v);
}

using test::expect_error;

// The line of `help` that documents `flag`, or "" (CLI11 versions lay the defaults out
// differently: "--heads INT:POSITIVE=2" in 2.3, "--heads INT:POSITIVE [2]" in 2.4).
std::string help_line(const std::string& help, const std::string& flag) {
  std::istringstream in(help);
  std::string line;
  while (std::getline(in, line)) {
    // The flag must be the line's first word ("  --seed UINT=0", "  -h,--help"), not a mention
    // in another flag's description.
    const size_t first = line.find_first_not_of(' ');
    if (first == std::string::npos || line[first] != '-') continue;
    const std::string word = line.substr(first, line.find(' ', first) - first);
    const size_t at = word.find(flag);
    if (at == std::string::npos || (at > 0 && word[at - 1] != ',')) continue;
    const size_t after = at + flag.size();
    if (after == word.size() ||
        !(std::isalnum(static_cast<unsigned char>(word[after])) || word[after] == '-')) {
      return line;
    }
  }
  return "";
}

// True when `line` shows `value` as its default in either CLI11 layout.
bool shows_default(const std::string& line, const std::string& value) {
  return line.find("=" + value) != std::string::npos ||
         line.find("[" + value + "]") != std::string::npos;
}

TEST_CASE("cli: --help of every subcommand lists its flags with their defaults") {
  TempDir dir("cli_help");
  const RunResult top = test::run_kvcompress("--help", dir.path);
  CHECK(top.exit_code == 0);
  for (const char* c : {"train", "gradcheck", "eval", "infer", "bench", "inspect", "gen-data"}) {
    CHECK_MESSAGE(top.out.find(c) != std::string::npos, c);
  }
  const RunResult train = test::run_kvcompress("train --help", dir.path);
  CHECK(train.exit_code == 0);
  // SPEC section 7's flags of train, each with its default where it has one ("" = none).
  const std::vector<std::pair<std::string, std::string>> flags{
      {"--compressor", "conv"}, {"--heads", "2"},        {"--dim-head", "32"},
      {"--block", "8"},         {"--seq", "256"},        {"--queries", "32"},
      {"--batch", "2"},         {"--expand", "1"},       {"--dropout", "0"},
      {"--reduction", "2"},     {"--task", "distill"},   {"--data", ""},
      {"--steps", "500"},       {"--lr", "0.001"},       {"--weight-decay", "0"},
      {"--warmup", "20"},       {"--clip", "1"},         {"--seed", "0"},
      {"--device", "auto"},     {"--precision", "fp32"}, {"--out", ""},
      {"--resume", ""},         {"--eval-every", ""},    {"--save-every", ""},
      {"--log-every", ""}};
  for (const auto& [flag, value] : flags) {
    const std::string line = help_line(train.out, flag);
    INFO("train --help line for ", flag, ": '", line, "'");
    CHECK(!line.empty());
    if (!value.empty()) CHECK(shows_default(line, value));
  }
  CHECK(help_line(train.out, "--compressor").find("efficient_conv") != std::string::npos);
  CHECK(help_line(train.out, "--task").find("teacher") != std::string::npos);
  const RunResult bench = test::run_kvcompress("bench --help", dir.path);
  for (const char* flag : {"--config", "--json", "--warmup-reps", "--reps", "--device",
                           "--precision", "--heads", "--compressor"}) {
    CHECK_MESSAGE(!help_line(bench.out, flag).empty(), flag);
  }
  CHECK(shows_default(help_line(bench.out, "--config"), "small"));
  // --warmup is the LR warmup of train; bench's untimed runs have their own name.
  CHECK(help_line(bench.out, "--warmup").empty());
  const RunResult gc = test::run_kvcompress("gradcheck --help", dir.path);
  CHECK(shows_default(help_line(gc.out, "--compressor"), "all"));
  for (const char* c : {"eval", "infer", "inspect", "gen-data"}) {
    CHECK(test::run_kvcompress(std::string(c) + " --help", dir.path).exit_code == 0);
  }
}

TEST_CASE(
    "cli: bad flag values are usage errors (exit 2, one line naming the "
    "flag)") {
  TempDir dir("cli_usage");
  const std::string out = " --out " + dir / "run";
  expect_error(test::run_kvcompress("train --compressor nope" + out, dir.path), 2,
               {"--compressor", "nope"});
  expect_error(test::run_kvcompress("train --steps 0" + out, dir.path), 2, {"--steps", "0"});
  expect_error(test::run_kvcompress("train --steps abc" + out, dir.path), 2, {"--steps", "abc"});
  expect_error(test::run_kvcompress("train --lr -1" + out, dir.path), 2, {"--lr"});
  expect_error(test::run_kvcompress("train --dropout 1.5" + out, dir.path), 2, {"--dropout"});
  expect_error(test::run_kvcompress("train --device tpu" + out, dir.path), 2, {"--device", "tpu"});
  // One GPU for now: a second device index is refused rather than run on the first GPU.
  expect_error(test::run_kvcompress("train --device cuda:1" + out, dir.path), 2,
               {"--device", "cuda:1", "one GPU"});
  expect_error(test::run_kvcompress("train --precision fp16" + out, dir.path), 2,
               {"--precision", "fp16"});
  // bf16 math exists on CUDA only: the CPU refuses it instead of training in another precision.
  const std::vector<std::string> bf16_on_cpu = {
      "train --device cpu --precision bf16" + out, "bench --device cpu --precision bf16 --reps 1",
      "eval --device cpu --precision bf16 --checkpoint none.h5",
      "infer --device cpu --precision bf16 --checkpoint none.h5 --data none.h5 --out x.h5"};
  for (const std::string& cmd : bf16_on_cpu) {
    expect_error(test::run_kvcompress(cmd, dir.path), 2, {"--precision bf16", "CUDA"});
  }
  expect_error(test::run_kvcompress("train --task nope" + out, dir.path), 2, {"--task"});
  expect_error(test::run_kvcompress("train --no-such-flag" + out, dir.path), 2, {"--no-such-flag"});
  expect_error(test::run_kvcompress("frobnicate", dir.path), 2, {"frobnicate"});
  expect_error(test::run_kvcompress("", dir.path), 2, {"subcommand"});
  expect_error(test::run_kvcompress("bench --config huge", dir.path), 2, {"--config", "huge"});
  // Combinations: d % r != 0, seq shorter than one block.
  expect_error(test::run_kvcompress("train --compressor efficient_conv --dim-head 30 "
                                    "--reduction 4" +
                                        out,
                                    dir.path),
               2, {"--dim-head 30", "--reduction 4"});
  expect_error(test::run_kvcompress("train --seq 4 --block 8" + out, dir.path), 2,
               {"--seq 4", "block", "8"});
  expect_error(test::run_kvcompress("infer --checkpoint x.h5", dir.path), 2, {"--data"});
  // Nothing was created for any of them.
  CHECK_FALSE(std::filesystem::exists(dir / "run"));
}

TEST_CASE(
    "cli: bad files and devices are errors (exit 1, one line naming the "
    "problem)") {
  TempDir dir("cli_errors");
  const std::string out = " --out " + dir / "run --steps 3 --progress none";

  expect_error(test::run_kvcompress("train --data " + dir / "missing.h5" + out, dir.path), 1,
               {"missing.h5"});

  test::write_text(dir / "garbage.h5", std::string(4096, '\x7f') + "not hdf5");
  expect_error(test::run_kvcompress("train --data " + dir / "garbage.h5" + out, dir.path), 1,
               {"garbage.h5"});

  // Wrong dataset shape: k is 3-D.
  write_kv(dir / "shape3d.h5", Tensor::zeros({4, 2, 64}), Tensor::zeros({4, 2, 64}));
  expect_error(test::run_kvcompress("train --data " + dir / "shape3d.h5" + out, dir.path), 1,
               {"shape3d.h5", "k"});
  // k and v disagree.
  write_kv(dir / "kv_mismatch.h5", Tensor::zeros({4, 2, 64, 8}), Tensor::zeros({4, 2, 32, 8}));
  expect_error(test::run_kvcompress("train --data " + dir / "kv_mismatch.h5" + out, dir.path), 1,
               {"kv_mismatch.h5"});

  // Wrong dtype: int32 datasets, written with the plain HDF5 API.
  {
    const std::string p = dir / "int32.h5";
    const hid_t f = H5Fcreate(p.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    const hsize_t dims[4] = {4, 2, 64, 8};
    const hid_t space = H5Screate_simple(4, dims, nullptr);
    std::vector<int32_t> zeros(4 * 2 * 64 * 8, 1);
    for (const char* name : {"k", "v"}) {
      const hid_t d =
          H5Dcreate2(f, name, H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data());
      H5Dclose(d);
    }
    H5Sclose(space);
    H5Fclose(f);
  }
  expect_error(test::run_kvcompress("train --data " + dir / "int32.h5" + out, dir.path), 1,
               {"int32.h5", "int32"});

  // NaN in the data: one element of every sequence's k, so whichever batch
  // comes first has one.
  {
    std::vector<double> k(8 * 2 * 64 * 8, 0.5);
    for (int n = 0; n < 8; ++n) k[n * 2 * 64 * 8 + 77] = std::numeric_limits<double>::quiet_NaN();
    write_kv(dir / "nan.h5", Tensor::from_vector(k, {8, 2, 64, 8}), Tensor::ones({8, 2, 64, 8}));
  }
  expect_error(test::run_kvcompress("train --data " + dir / "nan.h5" + out, dir.path), 1,
               {"nan.h5", "non-finite"});

  // The file's seq is shorter than one block.
  write_kv(dir / "short.h5", Tensor::ones({4, 2, 4, 8}), Tensor::ones({4, 2, 4, 8}));
  expect_error(test::run_kvcompress("train --data " + dir / "short.h5" + out, dir.path), 1,
               {"seq 4", "block"});

  // No GPU for --device cuda.
  if (!cuda_available()) {
    expect_error(test::run_kvcompress("train --device cuda" + out, dir.path), 1,
                 {"--device cuda", "GPU"});
  }

  // An output folder that cannot be created (its parent is a regular file;
  // works as root too).
  test::write_text(dir / "afile", "x");
  expect_error(test::run_kvcompress("train --steps 3 --out " + dir / "afile/run", dir.path), 1,
               {"afile/run"});

  // eval / infer / inspect with missing or foreign checkpoints.
  expect_error(test::run_kvcompress("eval --checkpoint " + dir / "nope.h5", dir.path), 1,
               {"nope.h5"});
  expect_error(test::run_kvcompress("inspect " + dir / "garbage.h5", dir.path), 1,
               {"garbage.h5", "HDF5"});
  expect_error(test::run_kvcompress("inspect " + dir / "nan.h5", dir.path), 1,
               {"nan.h5", "not a kvcompress checkpoint"});
}

TEST_CASE(
    "cli: train, then eval, infer, inspect on its checkpoint, gen-data "
    "feeds train") {
  TempDir dir("cli_flow");
  RunResult r = test::run_kvcompress(
      "gen-data --out " + dir / "kv.h5" + " --count 24 --seq 64 --heads 2 --dim-head 16", dir.path);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  {
    H5File f = H5File::open(dir / "kv.h5", H5Mode::read);
    CHECK(f.shape("/k") == Shape{24, 2, 64, 16});
    CHECK(f.shape("/q") == Shape{24, 2, 32, 16});
  }
  r = test::run_kvcompress("train --data " + dir / "kv.h5" +
                               " --steps 40 --block 4 --batch 4 --eval-every 20 --save-every 20 "
                               "--progress log --log-every 10 --out " +
                               dir / "run",
                           dir.path);
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.err.empty());
  CHECK(r.out.find("output folder " + dir / "run") != std::string::npos);
  CHECK(r.out.find("step 10/40") != std::string::npos);
  for (const char* f : {"checkpoint.h5", "best.h5", "metrics.csv", "loss.svg"}) {
    CHECK_MESSAGE(std::filesystem::exists(dir / "run/" + f), f);
  }
  const train::Checkpoint ck = train::load_checkpoint(dir / "run/checkpoint.h5");
  CHECK(ck.meta.step == 40);
  CHECK(ck.meta.dim_head == 16);  // from the file
  CHECK(ck.meta.block == 4);

  r = test::run_kvcompress("eval --checkpoint " + dir / "run/checkpoint.h5", dir.path);
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("eval loss") != std::string::npos);

  r = test::run_kvcompress("infer --checkpoint " + dir / "run/checkpoint.h5" + " --data " +
                               dir / "kv.h5" + " --out " + dir / "inf.h5" + " --batch 5",
                           dir.path);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  {
    H5File f = H5File::open(dir / "inf.h5", H5Mode::read);
    CHECK(f.shape("/k_compressed") == Shape{24, 2, 16, 16});
    CHECK(f.type_name("/v_compressed") == "float32");
  }
  // infer with data of another head dimension: error, and no output file left
  // behind.
  r = test::run_kvcompress("gen-data --out " + dir / "kv32.h5" + " --count 4 --seq 64", dir.path);
  REQUIRE(r.exit_code == 0);
  expect_error(test::run_kvcompress("infer --checkpoint " + dir / "run/checkpoint.h5" + " --data " +
                                        dir / "kv32.h5" + " --out " + dir / "bad.h5",
                                    dir.path),
               1, {"kv32.h5"});
  CHECK_FALSE(std::filesystem::exists(dir / "bad.h5"));

  r = test::run_kvcompress("inspect " + dir / "run/checkpoint.h5", dir.path);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("k_compress.conv.weight") != std::string::npos);
  CHECK(r.out.find("(32, 16, 4)") != std::string::npos);  // (h*d, d, n)
  CHECK(r.out.find("last eval loss") != std::string::npos);

  // --resume with a conflicting model flag is a usage error; a longer --steps
  // extends the run.
  expect_error(test::run_kvcompress(
                   "train --resume " + dir / "run/checkpoint.h5" + " --compressor mlp", dir.path),
               2, {"--compressor mlp", "conflicts"});
  r = test::run_kvcompress(
      "train --resume " + dir / "run/checkpoint.h5" + " --steps 50 --progress none", dir.path);
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(train::load_checkpoint(dir / "run/checkpoint.h5").meta.step == 50);
  CHECK(train::read_metrics_csv(dir / "run/metrics.csv").rows().back().step == 50);
}

TEST_CASE(
    "cli: the default train run falls clearly, under a minute, into "
    "runs/<stamp>-conv") {
  TempDir dir("cli_default");
  const auto t0 = std::chrono::steady_clock::now();
  const RunResult r = test::run_shell(
      "cd " + dir.path + " && " + test::kvcompress_binary() + " train --device cpu", dir.path);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(seconds < 60);
  std::string run;
  for (const auto& e : std::filesystem::directory_iterator(dir / "runs")) run = e.path().string();
  REQUIRE(!run.empty());
  CHECK(run.size() > 5);
  CHECK(run.substr(run.size() - 5) == "-conv");
  // Printed at the start and at the end.
  const std::string name = std::filesystem::path(run).filename().string();
  size_t first = r.out.find(name), last = r.out.rfind(name);
  CHECK(first != std::string::npos);
  CHECK(last != first);
  const train::MetricsHistory h = train::read_metrics_csv(run + "/metrics.csv");
  REQUIRE(h.size() == 501);
  const double start = h.rows().front().eval_loss, end = h.rows().back().eval_loss;
  INFO("eval loss ", start, " -> ", end);
  CHECK(end < 0.1 * start);
}

TEST_CASE("cli: gradcheck passes for every kind, bench prints every kind or the ones listed") {
  TempDir dir("cli_gradcheck");
  RunResult r = test::run_kvcompress("gradcheck", dir.path);
  INFO(r.out, r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("FAIL") == std::string::npos);
  for (const std::string& kind : {"conv", "efficient_conv", "attention_pool",
                                  "scaled_attention_pool", "grouped_mlp", "enhanced_mlp", "mlp"}) {
    CHECK_MESSAGE(r.out.find("\n" + kind + " ") != std::string::npos, kind);
    CHECK_MESSAGE(r.out.find("pair(" + kind + ") distill") != std::string::npos, kind);
  }
  CHECK(r.out.find("max abs err") != std::string::npos);
  CHECK(r.out.find("all ") != std::string::npos);

  r = test::run_kvcompress("bench --reps 2 --warmup-reps 1 --seq 64", dir.path);
  INFO(r.out, r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("seq 64") != std::string::npos);
  for (const char* kind : {"conv", "efficient_conv", "enhanced_mlp", "mlp"}) {
    CHECK_MESSAGE(r.out.find(std::string("\n") + kind + " ") != std::string::npos, kind);
  }
  r = test::run_kvcompress("bench --compressor grouped_mlp --reps 2 --json", dir.path);
  CHECK(r.exit_code == 0);
  CHECK(r.out.rfind("{\"config\": \"small\"", 0) == 0);
  CHECK(r.out.find("\"step_ms\"") != std::string::npos);
  // The peaks: each phase's within the set-up's, and the whole step's at least the backward's
  // (the same allocations, from the same state).
  const auto number = [&](const std::string& key) {
    const size_t at = r.out.find("\"" + key + "\": ");
    REQUIRE(at != std::string::npos);
    return std::stod(r.out.substr(at + key.size() + 4));
  };
  const double forward = number("forward_peak_bytes"), backward = number("backward_peak_bytes");
  // Both phases hold at least the optimizer's float32 parameters and two moments.
  const double optimizer_bytes = 3 * 4 * number("params");
  CHECK(forward >= optimizer_bytes);
  CHECK(backward >= optimizer_bytes);
  CHECK(number("setup_peak_bytes") >= std::max(forward, backward));
  CHECK(number("peak_bytes") >= backward);

  // A comma-separated list: those kinds, in the order listed, and no other.
  r = test::run_kvcompress("bench --compressor mlp,conv --reps 1 --warmup-reps 0 --seq 64",
                           dir.path);
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  const size_t mlp_row = r.out.find("\nmlp "), conv_row = r.out.find("\nconv ");
  REQUIRE(mlp_row != std::string::npos);
  REQUIRE(conv_row != std::string::npos);
  CHECK(mlp_row < conv_row);
  CHECK(r.out.find("\nefficient_conv ") == std::string::npos);
  CHECK(r.out.find("\ngrouped_mlp ") == std::string::npos);
  expect_error(test::run_kvcompress("bench --compressor conv,nope", dir.path), 2,
               {"--compressor", "unknown kind 'nope'", "conv"});
  expect_error(test::run_kvcompress("gradcheck --compressor mlp,mlp", dir.path), 2,
               {"--compressor", "'mlp' is listed twice"});
  // train takes one kind.
  expect_error(test::run_kvcompress("train --compressor conv,mlp", dir.path), 2,
               {"--compressor", "'conv,mlp' is not a compressor kind"});
}

}  // namespace
}  // namespace kvc
