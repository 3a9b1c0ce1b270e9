// kvc_fuzz_files: a bounded, deterministic fuzz test of the files kvcompress reads. It makes a
// fresh checkpoint and KV file with the binary under test, derives mutants from them (bytes
// changed in the first 8 KB, bytes changed anywhere, truncations; a fixed seed), and runs each
// through inspect, eval, infer and `train --resume` (checkpoints) or infer, eval and train
// (KV files), each run with a time limit. It passes only when every run ends with exit 0 or 1,
// and an exit 1 with one line on stderr: no signal, no sanitizer report, no time-out.
//
//   kvc_fuzz_files --binary build-asan/kvcompress --work DIR [--mutants 300] [--seed 9]
//                  [--jobs 2] [--timeout 60]
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string binary;
  std::string work;
  int mutants = 300;
  uint64_t seed = 9;
  int jobs = 2;
  int timeout_s = 60;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// One mutant: what was done to which file, and the bytes.
struct Mutant {
  std::string source;  // "checkpoint" or "kv"
  std::string how;     // "byte 2231 = 0x95, ..." or "truncated to 4096 bytes"
  std::string bytes;
};

Mutant mutate(const std::string& source, const std::string& original, std::mt19937_64& rng) {
  Mutant m{source, "", original};
  const int kind = static_cast<int>(rng() % 5);  // 2 in the first 8 KB, 2 anywhere, 1 truncation
  if (kind == 4) {
    const size_t size = rng() % original.size();
    m.bytes.resize(size);
    m.how = "truncated to " + std::to_string(size) + " bytes";
    return m;
  }
  const size_t span = kind < 2 ? std::min<size_t>(8192, original.size()) : original.size();
  const int count = 1 + static_cast<int>(rng() % 4);
  for (int i = 0; i < count; ++i) {
    const size_t at = rng() % span;
    const auto value = static_cast<unsigned char>(rng() % 256);
    m.bytes[at] = static_cast<char>(value);
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%sbyte %zu = 0x%02x", i ? ", " : "", at, value);
    m.how += buf;
  }
  return m;
}

// A run of the binary: its arguments, with FILE standing for the mutant's path and DIR for the
// run's own folder.
struct Job {
  int mutant = 0;
  std::string command;  // the arguments, as a shell would show them
  std::vector<std::string> args;
  std::string dir;
  pid_t pid = -1;
  Clock::time_point deadline;
  bool timed_out = false;
};

std::vector<std::vector<std::string>> commands_for(const std::string& source,
                                                   const std::string& good_ckpt,
                                                   const std::string& good_kv) {
  if (source == "checkpoint") {
    return {{"inspect", "FILE"},
            {"eval", "--device", "cpu", "--batches", "1", "--checkpoint", "FILE"},
            {"infer", "--device", "cpu", "--checkpoint", "FILE", "--data", good_kv, "--out",
             "DIR/inf.h5"},
            {"train", "--device", "cpu", "--progress", "none", "--eval-every", "0", "--steps", "7",
             "--resume", "FILE"}};
  }
  return {
      {"infer", "--device", "cpu", "--checkpoint", good_ckpt, "--data", "FILE", "--out",
       "DIR/inf.h5"},
      {"eval", "--device", "cpu", "--batches", "1", "--checkpoint", good_ckpt, "--data", "FILE"},
      {"train", "--device", "cpu", "--progress", "none", "--eval-every", "0", "--steps", "2",
       "--block", "4", "--data", "FILE", "--out", "DIR/run"}};
}

pid_t start(const Options& o, Job& job) {
  std::vector<std::string> argv_s{o.binary};
  argv_s.insert(argv_s.end(), job.args.begin(), job.args.end());
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);  // its own group: a time-out kills whatever it started too
    const int null = ::open("/dev/null", O_RDWR);
    const int err = ::open((job.dir + "/stderr").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::dup2(err, 2);
    if (::chdir(job.dir.c_str()) != 0) ::_exit(126);
    // libhdf5 leaks a few hundred bytes on some damaged files (its own error paths, outside
    // kvcompress): those leaks alone are not counted; every other report is.
    const std::string lsan = "print_suppressions=0:suppressions=" + o.work + "/lsan.supp";
    ::setenv("LSAN_OPTIONS", lsan.c_str(), 1);
    std::vector<char*> argv;
    for (std::string& s : argv_s) argv.push_back(s.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n + (!s.empty() && s.back() != '\n');
}

// "" when the run ended as the contract says; else what went wrong.
std::string verdict(int status, bool timed_out, const std::string& err) {
  if (timed_out) return "time-out";
  for (const char* report : {"AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                             "runtime error:", "HDF5-DIAG"}) {
    if (err.find(report) != std::string::npos) return std::string("report: ") + report;
  }
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  if (!WIFEXITED(status)) return "did not exit";
  const int code = WEXITSTATUS(status);
  if (code == 0) return "";
  if (code != 1) return "exit " + std::to_string(code);
  if (count_lines(err) != 1 || err.rfind("kvcompress: error: ", 0) != 0) {
    return "exit 1 without a one-line error";
  }
  return "";
}

// Runs kvcompress once to make an input; exits the fuzzer when that fails.
void make_input(const Options& o, const std::string& args) {
  const std::string cmd = o.binary + " " + args + " >/dev/null 2>" + o.work + "/setup.err";
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "fuzz: setup failed: %s\n%s", cmd.c_str(),
                 read_file(o.work + "/setup.err").c_str());
    std::exit(2);
  }
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--binary")
      o.binary = value;
    else if (flag == "--work")
      o.work = value;
    else if (flag == "--mutants")
      o.mutants = std::atoi(value.c_str());
    else if (flag == "--seed")
      o.seed = std::strtoull(value.c_str(), nullptr, 10);
    else if (flag == "--jobs")
      o.jobs = std::max(1, std::atoi(value.c_str()));
    else if (flag == "--timeout")
      o.timeout_s = std::atoi(value.c_str());
  }
  if (!o.binary.empty()) o.binary = fs::absolute(o.binary).string();  // runs chdir to their folder
  if (!o.work.empty()) o.work = fs::absolute(o.work).string();
  if (o.binary.empty() || o.work.empty() || o.mutants < 1) {
    std::fprintf(stderr,
                 "usage: kvc_fuzz_files --binary KVCOMPRESS --work DIR [--mutants N] "
                 "[--seed S] [--jobs J] [--timeout SECONDS]\n");
    std::exit(2);
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const auto t0 = Clock::now();
  fs::remove_all(o.work);
  fs::create_directories(o.work);
  write_file(o.work + "/lsan.supp", "leak:libhdf5\n");
  const std::string kv = o.work + "/kv.h5", run = o.work + "/run";
  make_input(o, "gen-data --count 8 --seq 32 --dim-head 16 --out " + kv);
  make_input(o,
             "train --device cpu --steps 5 --seq 32 --block 4 --dim-head 16 --eval-every 3 "
             "--save-every 2 --progress none --out " +
                 run);
  const std::string ckpt = run + "/checkpoint.h5";
  const std::map<std::string, std::string> originals{{"checkpoint", read_file(ckpt)},
                                                     {"kv", read_file(kv)}};

  // Four checkpoint mutants for every KV-file mutant: the checkpoint has more to go wrong.
  std::vector<Mutant> mutants;
  std::vector<Job> pending;
  for (int i = 0; i < o.mutants; ++i) {
    std::mt19937_64 rng(o.seed * 1000003 + static_cast<uint64_t>(i));
    const std::string source = i % 5 == 4 ? "kv" : "checkpoint";
    mutants.push_back(mutate(source, originals.at(source), rng));
    for (const auto& args : commands_for(source, ckpt, kv)) {
      Job job;
      job.mutant = i;
      job.dir = o.work + "/m" + std::to_string(i) + "_" + std::to_string(pending.size());
      const std::string file = job.dir + "/" + (source == "kv" ? "kv.h5" : "checkpoint.h5");
      for (std::string a : args) {
        if (a == "FILE") a = file;
        if (a.rfind("DIR/", 0) == 0) a = job.dir + a.substr(3);
        job.args.push_back(a);
        job.command += (job.command.empty() ? "" : " ") + a;
      }
      pending.push_back(std::move(job));
    }
  }

  std::map<std::string, int> outcomes;  // "exit 0", "exit 1", or the failure
  int failures = 0;
  std::vector<Job*> running;
  size_t next = 0;
  while (next < pending.size() || !running.empty()) {
    while (next < pending.size() && static_cast<int>(running.size()) < o.jobs) {
      Job& job = pending[next++];
      fs::create_directories(job.dir);
      const Mutant& m = mutants[static_cast<size_t>(job.mutant)];
      write_file(job.dir + "/" + (m.source == "kv" ? "kv.h5" : "checkpoint.h5"), m.bytes);
      job.deadline = Clock::now() + std::chrono::seconds(o.timeout_s);
      job.pid = start(o, job);
      running.push_back(&job);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    for (size_t r = 0; r < running.size();) {
      Job& job = *running[r];
      int status = 0;
      pid_t done = ::waitpid(job.pid, &status, WNOHANG);
      if (done == 0 && Clock::now() > job.deadline) {
        job.timed_out = true;
        ::kill(-job.pid, SIGKILL);
        ::kill(job.pid, SIGKILL);
        done = ::waitpid(job.pid, &status, 0);
      }
      if (done == 0) {
        ++r;
        continue;
      }
      const std::string err = read_file(job.dir + "/stderr");
      const std::string bad = verdict(status, job.timed_out, err);
      if (bad.empty()) {
        ++outcomes[WEXITSTATUS(status) == 0 ? "exit 0" : "exit 1"];
        fs::remove_all(job.dir);
      } else {
        ++outcomes[bad];
        ++failures;
        const Mutant& m = mutants[static_cast<size_t>(job.mutant)];
        std::printf("FAIL (%s): mutant %d of the %s (%s), kept in %s\n  kvcompress %s\n  %s\n",
                    bad.c_str(), job.mutant, m.source.c_str(), m.how.c_str(), job.dir.c_str(),
                    job.command.c_str(), err.substr(0, 2000).c_str());
      }
      running.erase(running.begin() + static_cast<std::ptrdiff_t>(r));
    }
  }

  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf(
      "fuzz: %d mutants (seed %llu) of a %zu-byte checkpoint and a %zu-byte KV file, %zu "
      "runs in %.0f s:",
      o.mutants, static_cast<unsigned long long>(o.seed), originals.at("checkpoint").size(),
      originals.at("kv").size(), pending.size(), seconds);
  for (const auto& [what, n] : outcomes) std::printf(" %s: %d;", what.c_str(), n);
  std::printf(" failures: %d\n", failures);
  if (failures == 0) fs::remove_all(o.work);
  return failures == 0 ? 0 : 1;
}
