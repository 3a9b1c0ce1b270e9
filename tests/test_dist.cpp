// Data-parallel training: shards of the data sources equal the slices of one process's larger
// batch (random draws included), and, in TEST_SUITE("mpi"), runs of 2 ranks under mpirun against
// 1 rank with the doubled batch, resumes, mismatched flags and a killed rank.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/ops.h"
#include "data/h5_dataset.h"
#include "data/kv_file.h"
#include "data/synthetic.h"
#include "nn/compressor_pair.h"
#include "test_train_util.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
#include "train/step_runner.h"

using namespace kvc;
using kvc::test::TempDir;

namespace {

// Rows [first, first + count) of t along axis 0, as doubles.
std::vector<double> rows(const Tensor& t, int64_t first, int64_t count) {
  const std::vector<double> all = t.to_vector();
  const size_t per_row = all.size() / static_cast<size_t>(t.size(0));
  return std::vector<double>(all.begin() + static_cast<long>(first * per_row),
                             all.begin() + static_cast<long>((first + count) * per_row));
}

// Every shard of `parts` sources equals its rows of the whole batch, bit for bit.
void check_shards(KVSource& whole, std::vector<std::unique_ptr<KVSource>>& shards, uint64_t index) {
  const Batch all = whole.batch_at(index);
  const int64_t b = shards.front()->shape().batch;
  for (size_t r = 0; r < shards.size(); ++r) {
    INFO("shard ", r, " of ", shards.size(), ", batch ", index);
    const Batch part = shards[r]->batch_at(index);
    const int64_t first = static_cast<int64_t>(r) * b;
    CHECK(part.k.to_vector() == rows(all.k, first, b));
    CHECK(part.v.to_vector() == rows(all.v, first, b));
    CHECK(part.q.to_vector() == rows(all.q, first, b));
  }
}

// Sizes whose shards start inside Philox blocks of four draws (h*seq*d = 15, h*nq*d = 9).
KVShape odd_shape(int64_t batch) { return KVShape{batch, 1, 3, 5, 3}; }

// Two ranks that computed the same gradient: the sum doubles it (the pointers must be Adam's
// gradient segments, in order), so gradient_reducer's division by 2 must give back the bits of
// one rank's gradient. `reduced` counts the elements summed.
class TwinRanks final : public dist::Communicator {
 public:
  explicit TwinRanks(Adam& adam) : adam_(adam) {}
  int rank() const override { return 0; }
  int size() const override { return 2; }
  int local_rank() const override { return 0; }
  std::string name() const override { return "twin ranks"; }
  void allreduce_sum(float* data, int64_t count, Device device) override {
    const std::vector<Tensor> segments = adam_.grad_segments();
    Tensor g = segments[next_];
    next_ = (next_ + 1) % segments.size();
    REQUIRE(data == g.data<float>());
    REQUIRE(count == g.numel());
    REQUIRE(device == g.device());
    g.copy_from(scale(g, 2.0));
    reduced += count;
  }
  void allreduce_sum(double* data, int64_t count) override {
    for (int64_t i = 0; i < count; ++i) data[i] *= 2;
  }
  void broadcast(void*, int64_t, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::_Exit(code); }

  int64_t reduced = 0;

 private:
  Adam& adam_;
  size_t next_ = 0;
};

// Five steps of the trainer's StepRunner: [losses..., parameters...]. With `twin`, the gradient
// is summed over TwinRanks between backward and the clip (on CUDA with `graph`: between the
// replayed graphs of backward and of the clip).
std::vector<double> run_steps(Device device, bool twin, bool graph, bool* used_graph) {
  KVShape shape;
  SyntheticKV data(shape, 12, device);
  CompressorOptions o;
  o.kind = "efficient_conv";
  o.heads = shape.heads;
  o.dim_head = shape.dim_head;
  o.seed = 7;
  o.device = device;
  CompressorPair pair(o);
  Adam adam(pair.named_parameters());
  TwinRanks ranks(adam);
  train::StepRunnerOptions ro;
  ro.allow_graph = graph;
  if (twin) ro.reduce_gradients = train::gradient_reducer(ranks, adam);
  train::StepRunner runner(pair, nullptr, adam, ro);
  std::vector<double> out;
  for (int i = 0; i < 5; ++i) {
    adam.set_lr(1e-2 / (i + 1));
    out.push_back(runner.forward_backward(data.next()).item());
    runner.update();
  }
  *used_graph = runner.using_graph();
  const std::vector<double> params = adam.flat_params().to_vector();
  // Every step summed every gradient (the padded layout of the parameters).
  if (twin) CHECK(ranks.reduced == 5 * adam.flat_params().numel());
  out.insert(out.end(), params.begin(), params.end());
  return out;
}

}  // namespace

TEST_CASE("data-parallel: the gradient sum between backward and the clip keeps the step's bits") {
  bool graph = false;
  const std::vector<double> plain = run_steps(Device::cpu(), false, false, &graph);
  CHECK(run_steps(Device::cpu(), true, false, &graph) == plain);
}

TEST_CASE("cuda: data-parallel gradient sum between the replayed graphs keeps the step's bits") {
  KVC_REQUIRE_CUDA();
  bool graph = false;
  const std::vector<double> plain = run_steps(Device::cuda(), false, false, &graph);
  CHECK(run_steps(Device::cuda(), true, false, &graph) == plain);
  CHECK(run_steps(Device::cuda(), true, true, &graph) == plain);
  CHECK(graph);  // the last run replayed graphs
}

TEST_CASE("data-parallel: normal draws from element `first` are the slice of a longer draw") {
  const Tensor whole = Tensor::randn({37}, 11, 5, 0.0, 1.0);
  const std::vector<double> w = whole.to_vector();
  for (uint64_t first : {0u, 1u, 2u, 3u, 4u, 9u}) {
    INFO("first ", first);
    const Tensor part = Tensor::randn({13}, 11, 5, 0.0, 1.0, {}, first);
    CHECK(part.to_vector() == std::vector<double>(w.begin() + first, w.begin() + first + 13));
  }
}

TEST_CASE("data-parallel: synthetic shards concatenate to one process's batch of N x batch") {
  KVShape shape = odd_shape(2);
  for (int64_t parts : {2, 3}) {
    shape.batch = 2;
    std::vector<std::unique_ptr<KVSource>> shards;
    for (int64_t r = 0; r < parts; ++r) {
      shards.push_back(std::make_unique<SyntheticKV>(shape, 7, Device::cpu(), DType::f32,
                                                     Split::train, Shard{r, parts}));
    }
    shape.batch = 2 * parts;
    SyntheticKV whole(shape, 7, Device::cpu(), DType::f32, Split::train);
    for (uint64_t index : {0u, 3u}) check_shards(whole, shards, index);
  }
  CHECK_THROWS_WITH_AS(SyntheticKV(shape, 7, Device::cpu(), DType::f32, Split::train, Shard{2, 2}),
                       doctest::Contains("shard 2 of 2 does not exist"), Error);
}

TEST_CASE("data-parallel: HDF5 shards read their rows of the shared shuffled order") {
  TempDir dir("dist_h5");
  KVShape shape{4, 2, 5, 6, 3};  // batch, heads, dim_head, seq, queries
  const std::string path = dir / "kv.h5";
  generate_kv_file(path, shape, 26, 3);  // 25 train sequences, 1 eval; no q: queries from keys
  const int64_t parts = 2;
  std::vector<std::unique_ptr<KVSource>> shards;
  for (int64_t r = 0; r < parts; ++r) {
    shards.push_back(std::make_unique<H5KVDataset>(path, 3, 9, Device::cpu(), DType::f32,
                                                   Split::train, 3, 1, Shard{r, parts}));
  }
  H5KVDataset whole(path, 3 * parts, 9, Device::cpu(), DType::f32, Split::train, 3);
  CHECK(shards[0]->batches_per_epoch() == whole.batches_per_epoch());  // 25 / 6 = 4
  for (uint64_t index : {0u, 5u}) check_shards(whole, shards, index);  // 5: the second epoch
  CHECK_THROWS_WITH_AS(
      H5KVDataset(path, 13, 9, Device::cpu(), DType::f32, Split::train, 3, 1, Shard{0, 2}),
      doctest::Contains("fewer than batch 13 x 2 processes"), Error);
}

TEST_CASE("cuda: data-parallel synthetic shards equal the CPU's") {
  KVC_REQUIRE_CUDA();
  const KVShape shape = odd_shape(2);
  for (int64_t r = 0; r < 2; ++r) {
    SyntheticKV cpu(shape, 7, Device::cpu(), DType::f32, Split::train, Shard{r, 2});
    SyntheticKV gpu(shape, 7, Device::cuda(), DType::f32, Split::train, Shard{r, 2});
    const Batch a = cpu.batch_at(4), b = gpu.batch_at(4);
    CHECK(a.k.to_vector() == b.k.to_vector());
    CHECK(a.v.to_vector() == b.v.to_vector());
    CHECK(a.q.to_vector() == b.q.to_vector());
  }
  const Tensor whole =
      Tensor::randn({37}, 11, 5, 0.0, 1.0, TensorOptions{}.with_device(Device::cuda()));
  const Tensor part =
      Tensor::randn({13}, 11, 5, 0.0, 1.0, TensorOptions{}.with_device(Device::cuda()), 3);
  const std::vector<double> w = whole.to_vector();
  CHECK(part.to_vector() == std::vector<double>(w.begin() + 3, w.begin() + 16));
}

// ---- 2 ranks under mpirun (label mpi) ---------------------------------------------------------

namespace {

#ifdef KVC_MPIEXEC
// mpirun for `ranks` local ranks: --oversubscribe (CI has 2 cores), --allow-run-as-root where
// needed, LeakSanitizer off (MPI_Init's allocations live until exit), and a time limit so a hang
// fails the test instead of stalling the suite.
std::string mpirun(int ranks) {
  return str("ASAN_OPTIONS=detect_leaks=0 timeout -k 5 120 ", KVC_MPIEXEC, " --oversubscribe ",
             ::geteuid() == 0 ? "--allow-run-as-root " : "", "-np ", ranks, " ");
}
#define KVC_REQUIRE_MPI() (void)0
#else
std::string mpirun(int) { return ""; }
#define KVC_REQUIRE_MPI()                                                        \
  do {                                                                           \
    std::printf(                                                                 \
        "KVC_SKIP: MPI test skipped: kvcompress was built without MPI (install " \
        "libopenmpi-dev openmpi-bin and configure again)\n");                    \
    std::fflush(stdout);                                                         \
    return;                                                                      \
  } while (0)
#endif

const std::string kTiny =
    "train --device cpu --seq 32 --heads 2 --dim-head 8 --queries 4 --progress none "
    "--eval-every 3 --eval-batches 2 --save-every 3";

// Compares the parameters of two checkpoints of the same run made in different ways. An element
// whose gradient carries signal (Adam's sqrt(exp_avg_sq) in `reference` above 1e-6 of the
// largest) must agree within `tolerance`. An element whose exact gradient is zero (a shift of
// every key by one vector moves all logits of a query equally, which the softmax ignores: the
// key-side bias and part of the key positions) is driven by float32 rounding noise, which Adam
// scales up to steps of about lr whatever its size: it must stay within `noise_bound`.
void check_same_parameters(const std::string& a, const std::string& reference, double tolerance,
                           double noise_bound) {
  const train::Checkpoint ca = train::load_checkpoint(a, false);
  const train::Checkpoint cr = train::load_checkpoint(reference, true);
  REQUIRE(ca.params.size() == cr.params.size());
  REQUIRE(cr.optim.exp_avg_sq.size() == cr.params.size());
  double largest_rms = 0;
  for (const auto& [name, v] : cr.optim.exp_avg_sq) {
    for (double x : v.to_vector()) largest_rms = std::max(largest_rms, std::sqrt(x));
  }
  double worst_signal = 0, worst_noise = 0;
  for (size_t i = 0; i < ca.params.size(); ++i) {
    REQUIRE(ca.params[i].first == cr.params[i].first);
    REQUIRE(cr.optim.exp_avg_sq[i].first == cr.params[i].first);
    const std::vector<double> x = ca.params[i].second.to_vector();
    const std::vector<double> y = cr.params[i].second.to_vector();
    const std::vector<double> v = cr.optim.exp_avg_sq[i].second.to_vector();
    REQUIRE(x.size() == y.size());
    for (size_t j = 0; j < x.size(); ++j) {
      const double d = std::fabs(x[j] - y[j]);
      double& worst = std::sqrt(v[j]) > 1e-6 * largest_rms ? worst_signal : worst_noise;
      worst = std::max(worst, d);
    }
  }
  MESSAGE("largest difference: ", worst_signal, " where the gradient carries signal, ", worst_noise,
          " where it is rounding noise");
  CHECK(worst_signal <= tolerance);
  CHECK(worst_noise <= noise_bound);
}

// Starts 2 ranks training "forever" into DIR/run (stdout DIR/.out, stderr DIR/.err) in a process
// group of their own: sh becomes timeout (the returned pid), whose child is mpirun, whose
// children are the ranks.
pid_t start_endless_run(const TempDir& dir) {
  std::string launcher = mpirun(2);
  launcher.insert(launcher.find("timeout"), "exec ");
  const std::string cmd = launcher + test::kvcompress_binary() + " " + kTiny +
                          " --steps 100000000 --batch 2 --out " + (dir / "run") + " >" +
                          (dir / ".out") + " 2>" + (dir / ".err");
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::setpgid(0, 0);
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

// The ranks started by start_endless_run (`launcher` is timeout, whose child is mpirun).
std::vector<pid_t> rank_pids(pid_t launcher) {
  std::string parent = std::to_string(launcher);
  std::vector<pid_t> ranks;
  for (int depth = 0; depth < 2; ++depth) {
    std::ifstream children("/proc/" + parent + "/task/" + parent + "/children");
    std::vector<std::string> kids;
    for (std::string k; children >> k;) kids.push_back(k);
    if (kids.empty()) break;
    parent = kids.front();
    if (depth == 1) {
      for (const std::string& k : kids) ranks.push_back(std::stoi(k));
    }
  }
  return ranks;
}

// Rank 0 has logged two steps.
bool training_started(const TempDir& dir) {
  return test::count_lines(test::read_text(dir / "run/metrics.csv")) >= 3;
}

// Polls `ready` every 50 ms for up to `seconds`.
template <typename Ready>
bool wait_for(Ready ready, double seconds) {
  using Clock = std::chrono::steady_clock;
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < end) {
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

}  // namespace

TEST_SUITE("mpi") {
  TEST_CASE("mpi: 2 ranks with batch 2 train the parameters of 1 process with batch 4") {
    KVC_REQUIRE_MPI();
    TempDir dir("dist_equal");
    const std::string bin = test::kvcompress_binary();
    const auto two = test::run_shell(
        mpirun(2) + bin + " " + kTiny + " --steps 8 --batch 2 --out " + (dir / "two"), dir.path);
    INFO("stderr: ", two.err);
    REQUIRE(two.exit_code == 0);
    const auto one =
        test::run_kvcompress(kTiny + " --steps 8 --batch 4 --out " + (dir / "one"), dir.path);
    REQUIRE(one.exit_code == 0);
    // The same data and the same mean gradient; only the order of the float32 sums differs (the
    // loss's mean over 4 rows against the mean of two means over 2 rows, then the all-reduce): a
    // few ulp per step, which Adam (lr <= 4e-4 here) carries to about 1e-8 after 8 steps (7.5e-9
    // measured); the bound 1e-6 leaves room. Noise-driven elements move at most ~lr per step: 8
    // steps, sum of lr 1.8e-3.
    check_same_parameters(dir / "two/checkpoint.h5", dir / "one/checkpoint.h5", 1e-6, 2e-3);
    // Rank 0 alone wrote the run's files, and the losses of the global batch are logged.
    CHECK(std::filesystem::exists(dir / "two/metrics.csv"));
    const std::string m2 = test::read_text(dir / "two/metrics.csv");
    const std::string m1 = test::read_text(dir / "one/metrics.csv");
    CHECK(test::count_lines(m2) == test::count_lines(m1));
  }

  TEST_CASE("mpi: a checkpoint of 2 ranks resumes on 2 ranks exactly") {
    KVC_REQUIRE_MPI();
    TempDir dir("dist_resume");
    const std::string run2 = mpirun(2) + test::kvcompress_binary() + " " + kTiny + " --batch 2";
    REQUIRE(test::run_shell(run2 + " --steps 6 --out " + (dir / "full"), dir.path).exit_code == 0);
    const auto part =
        test::run_shell(run2 + " --steps 6 --stop-at 3 --out " + (dir / "part"), dir.path);
    INFO("stderr: ", part.err);
    REQUIRE(part.exit_code == 0);
    const auto resumed = test::run_shell(mpirun(2) + test::kvcompress_binary() +
                                             " train --device cpu --progress none --resume " +
                                             (dir / "part/checkpoint.h5"),
                                         dir.path);
    INFO("stderr: ", resumed.err);
    REQUIRE(resumed.exit_code == 0);
    check_same_parameters(dir / "part/checkpoint.h5", dir / "full/checkpoint.h5", 0.0, 0.0);
  }

  TEST_CASE("mpi: ranks started with different flags stop with a one-line error each") {
    KVC_REQUIRE_MPI();
    TempDir dir("dist_flags");
    const std::string bin = test::kvcompress_binary();
    const std::string launcher = mpirun(1);
    const auto r = test::run_shell(launcher + bin + " " + kTiny + " --steps 4 --batch 2 --out " +
                                       (dir / "a") + " : -np 1 " + bin + " " + kTiny +
                                       " --steps 4 --batch 3 --out " + (dir / "a"),
                                   dir.path);
    INFO("stderr: ", r.err);
    CHECK(r.exit_code != 0);
    CHECK(r.exit_code != 124);  // not the time limit
    CHECK(r.err.find("kvcompress: error: rank 1: rank 1 of 2 was started with other settings "
                     "than rank 0: 'batch 3' here, 'batch 2' on rank 0") != std::string::npos);
    CHECK(r.err.find("kvcompress: error: rank 0: 1 of the 2 ranks were started with other "
                     "settings") != std::string::npos);
  }

  TEST_CASE("mpi: a rank that fails alone stops the others") {
    KVC_REQUIRE_MPI();
    TempDir dir("dist_fail");
    const std::string bin = test::kvcompress_binary();
    const auto r = test::run_shell(mpirun(1) + bin + " " + kTiny + " --steps 4 --batch 2 --out " +
                                       (dir / "a") + " : -np 1 " + bin + " " + kTiny +
                                       " --steps 4 --batch 2 --data " + (dir / "missing.h5"),
                                   dir.path);
    INFO("stderr: ", r.err);
    CHECK(r.exit_code != 0);
    CHECK(r.exit_code != 124);
    CHECK(r.err.find("kvcompress: error: rank 1: ") != std::string::npos);
    CHECK(r.err.find("missing.h5") != std::string::npos);
  }

  TEST_CASE("mpi: a killed rank does not leave the other waiting") {
    KVC_REQUIRE_MPI();
    TempDir dir("dist_kill");
    const pid_t pid = start_endless_run(dir);
    const bool training = wait_for([&] { return training_started(dir); }, 60);
    const std::vector<pid_t> ranks = training ? rank_pids(pid) : std::vector<pid_t>{};
    int status = 0;
    bool ended = false;
    if (ranks.size() == 2) {
      ::kill(ranks.back(), SIGKILL);
      ended = wait_for([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, 60);
    }
    if (!ended) {
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
    }
    INFO("stderr: ", test::read_text(dir / ".err"));
    REQUIRE(training);
    REQUIRE(ranks.size() == 2);
    CHECK(ended);  // within 60 s of the kill
    CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }

  TEST_CASE("mpi: one rank under mpirun (the gradient sum hook running) equals the plain run") {
    KVC_REQUIRE_MPI();
    TempDir dir("dist_one");
    const std::string args = kTiny + " --steps 6 --batch 2 --out ";
    const auto one = test::run_shell(
        mpirun(1) + test::kvcompress_binary() + " " + args + (dir / "mpi"), dir.path);
    INFO("stderr: ", one.err);
    REQUIRE(one.exit_code == 0);
    REQUIRE(test::run_kvcompress(args + (dir / "plain"), dir.path).exit_code == 0);
    check_same_parameters(dir / "mpi/checkpoint.h5", dir / "plain/checkpoint.h5", 0.0, 0.0);
  }

  TEST_CASE("mpi: SIGTERM to the ranks stops both at one step and rank 0 saves a checkpoint") {
    KVC_REQUIRE_MPI();
    TempDir dir("dist_term");
    const pid_t pid = start_endless_run(dir);
    const bool training = wait_for([&] { return training_started(dir); }, 60);
    // As a launcher passes a Ctrl-C or a scheduler's SIGTERM on: to every rank (sent here to
    // the ranks themselves, since mpirun kills them 1 s after passing it on, which a busy
    // machine may not leave rank 0 for its checkpoint).
    const std::vector<pid_t> ranks = training ? rank_pids(pid) : std::vector<pid_t>{};
    for (pid_t rank : ranks) ::kill(rank, SIGTERM);
    int status = 0;
    ::waitpid(pid, &status, 0);
    INFO("stderr: ", test::read_text(dir / ".err"));
    REQUIRE(training);
    REQUIRE(ranks.size() == 2);
    const std::string err = test::read_text(dir / ".out");  // the log goes to stdout
    const size_t at = err.find("interrupted at step ");
    REQUIRE(at != std::string::npos);
    const int64_t step = std::stoll(err.substr(at + 20));
    CHECK(train::load_checkpoint(dir / "run/checkpoint.h5", true).meta.step == step);
    // Both ranks continue from it.
    const auto resumed = test::run_shell(
        mpirun(2) + test::kvcompress_binary() + " train --device cpu --progress none --steps " +
            std::to_string(step + 2) + " --resume " + (dir / "run/checkpoint.h5"),
        dir.path);
    INFO("resumed: ", resumed.err);
    CHECK(resumed.exit_code == 0);
  }

  TEST_CASE("mpi: commands other than train and bench refuse to run on several ranks") {
    KVC_REQUIRE_MPI();
    TempDir dir("dist_cmd");
    const auto r = test::run_shell(
        mpirun(2) + test::kvcompress_binary() + " gen-data --out " + (dir / "kv.h5"), dir.path);
    INFO("stderr: ", r.err);
    CHECK(r.exit_code != 0);
    CHECK(r.exit_code != 124);
    CHECK(r.err.find("'gen-data' runs as 2 MPI ranks; only train and bench run on several") !=
          std::string::npos);
    CHECK(!std::filesystem::exists(dir / "kv.h5"));
  }
}
