// Runs the kvcompress binary and kills it: SIGKILL during checkpoint writes
// must always leave a complete, loadable OUT/checkpoint.h5; SIGINT must save
// one and exit 130. Also the PyTorch interop check (tools/load_torch.py
// --compare) when torch and h5py are importable.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <thread>

#include "test_train_util.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/metrics.h"

namespace kvc {
namespace {

bool file_exists(const std::string& p) { return ::access(p.c_str(), F_OK) == 0; }

TEST_CASE(
    "checkpoint kill: SIGKILL at random moments never leaves a broken "
    "checkpoint.h5") {
  test::TempDir dir("kill");
  const std::string out = dir / "run";
  const std::string ckpt = out + "/checkpoint.h5";
  std::mt19937 rng(1234);
  int64_t last_step = 0;
  int kills_after_first_checkpoint = 0;
  for (int round = 0; round < 20; ++round) {
    // A checkpoint every step, so most moments fall inside a write; each round
    // resumes the last.
    std::vector<std::string> args{
        "train", "--steps",  "1000000", "--save-every", "1",  "--eval-every", "0", "--progress",
        "none",  "--device", "cpu",     "--seq",        "64", "--out",        out};
    if (file_exists(ckpt))
      args = {"train", "--resume",   ckpt,   "--save-every", "1",  "--eval-every",
              "0",     "--progress", "none", "--device",     "cpu"};
    const pid_t pid = test::spawn_kvcompress(args, dir.path);
    // Wait for the process to get going (a first checkpoint in round 0), then a
    // random delay.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (round == 0 && !file_exists(ckpt) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::this_thread::sleep_for(
        std::chrono::microseconds(std::uniform_int_distribution<int>(20000, 250000)(rng)));
    REQUIRE(::kill(pid, SIGKILL) == 0);
    const int code = test::wait_status(pid);
    INFO("round ", round, ": stderr ", test::read_text(dir / ".child_err"));
    CHECK(code == 128 + SIGKILL);
    REQUIRE(file_exists(ckpt));
    ++kills_after_first_checkpoint;
    // Complete and loadable, parameters and all, and never older than the
    // previous round's.
    train::Checkpoint ck;
    REQUIRE_NOTHROW(ck = train::load_checkpoint(ckpt));
    CHECK(ck.params.size() == 6);
    CHECK(ck.optim.step == ck.meta.step);
    CHECK(ck.meta.step >= last_step);
    CHECK(ck.metrics.rows().back().step == ck.meta.step);
    last_step = ck.meta.step;
  }
  CHECK(kills_after_first_checkpoint == 20);
  CHECK(last_step > 0);
  // A last resume, left to finish (how far the killed rounds got depends on the machine's
  // load): it sweeps the temp files the killed writers left, continues from the newest
  // checkpoint, and leaves no temp file of its own.
  const int64_t target = last_step + 3;
  const pid_t pid = test::spawn_kvcompress(
      {"train", "--resume", ckpt, "--stop-at", std::to_string(target), "--save-every", "1",
       "--eval-every", "0", "--progress", "none", "--device", "cpu"},
      dir.path);
  const int code = test::wait_status(pid);
  INFO("final resume: stderr ", test::read_text(dir / ".child_err"));
  CHECK(code == 0);
  CHECK(train::load_checkpoint(ckpt).meta.step == target);
  int temps = 0;
  for (const auto& e : std::filesystem::directory_iterator(out)) {
    temps += e.path().filename().string().find(".tmp-") != std::string::npos;
  }
  CHECK(temps == 0);
  MESSAGE("20 kills survived; the killed rounds reached step ", last_step);
}

TEST_CASE("checkpoint kill: SIGINT saves a checkpoint and exits 130, SIGTERM too") {
  for (int sig : {SIGINT, SIGTERM}) {
    test::TempDir dir("sigint");
    const std::string out = dir / "run";
    const pid_t pid =
        test::spawn_kvcompress({"train", "--steps", "1000000", "--save-every", "0", "--eval-every",
                                "0", "--progress", "none", "--device", "cpu", "--out", out},
                               dir.path);
    // Wait until it trains (metrics.csv is written before the first step), then
    // interrupt.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!file_exists(out + "/metrics.csv") && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    REQUIRE(::kill(pid, sig) == 0);
    const int code = test::wait_status(pid);
    INFO("signal ", sig, " stderr: ", test::read_text(dir / ".child_err"));
    CHECK(code == 130);
    const train::Checkpoint ck = train::load_checkpoint(out + "/checkpoint.h5");
    CHECK(ck.meta.step > 0);
    CHECK(ck.meta.step < 1000000);
    CHECK(test::read_text(dir / ".child_out").find("--resume") != std::string::npos);
    CHECK(train::read_metrics_csv(out + "/metrics.csv").rows().back().step == ck.meta.step);
  }
}

// The checkpoint layout loads into the PyTorch modules (tools/torch_modules.py)
// with load_state_dict(strict=True), and PyTorch's outputs match `kvcompress
// infer`.
TEST_CASE(
    "interop: kvcompress infer matches PyTorch on the trained checkpoint "
    "(load_torch.py)") {
  const char* env = std::getenv("PYTHON");
  const std::string python = env && *env ? env : "/usr/bin/python3";
  test::TempDir dir("interop");
  if (test::run_shell(python + " -c 'import torch, h5py'", dir.path).exit_code != 0) {
    std::printf("KVC_SKIP: interop test skipped: %s cannot import torch and h5py\n",
                python.c_str());
    std::fflush(stdout);
    return;
  }
  test::RunResult r =
      test::run_kvcompress("gen-data --out " + dir / "kv.h5" + " --count 6 --seq 40", dir.path);
  REQUIRE(r.exit_code == 0);
  for (const char* kind : {"conv", "efficient_conv", "attention_pool", "scaled_attention_pool",
                           "grouped_mlp", "enhanced_mlp", "mlp"}) {
    INFO(kind);
    const std::string run = dir / (std::string("run_") + kind);
    // Dropout in enhanced_mlp: infer (eval mode) must not apply it, nor must
    // PyTorch.
    r = test::run_kvcompress(std::string("train --compressor ") + kind +
                                 " --steps 20 --lr 1e-2 --seq 40 --block 8 --expand 0.5"
                                 " --dropout 0.1 --progress none --eval-every 0 --out " +
                                 run,
                             dir.path);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    r = test::run_kvcompress("infer --checkpoint " + run + "/checkpoint.h5 --data " +
                                 dir / "kv.h5" + " --out " + run + "/inf.h5",
                             dir.path);
    REQUIRE(r.exit_code == 0);
    r = test::run_shell(python + " " + std::string(KVC_SOURCE_DIR) + "/tools/load_torch.py " + run +
                            "/checkpoint.h5 " + dir / "kv.h5" + " --compare " + run + "/inf.h5",
                        dir.path);
    INFO("load_torch.py: ", r.out, r.err);
    CHECK(r.exit_code == 0);
  }
}

}  // namespace
}  // namespace kvc
