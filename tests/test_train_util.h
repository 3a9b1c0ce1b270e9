// Helpers for the train/CLI/checkpoint tests: temp folders, running the
// kvcompress binary.
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace kvc::test {

// A fresh folder under the build folder, removed with everything in it when the
// test ends.
struct TempDir {
  explicit TempDir(const std::string& tag) {
    std::string templ = std::string(KVC_BINARY_DIR) + "/tmp_" + tag + "_XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    REQUIRE(::mkdtemp(buf.data()) != nullptr);
    path = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
  std::string path;
};

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

inline std::string kvcompress_binary() { return std::string(KVC_BINARY_DIR) + "/kvcompress"; }

struct RunResult {
  int exit_code = -1;  // the exit status, or 128 + signal when killed
  std::string out, err;
};

// Runs a shell command line with stdout and stderr captured to files in `dir`.
inline RunResult run_shell(const std::string& cmd, const std::string& dir) {
  const std::string out = dir + "/.stdout", err = dir + "/.stderr";
  const std::string full = cmd + " >" + out + " 2>" + err + " </dev/null";
  const int status = std::system(full.c_str());
  RunResult r;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.exit_code = 128 + WTERMSIG(status);
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}

// Runs kvcompress with `args` (already shell-quoted where needed).
inline RunResult run_kvcompress(const std::string& args, const std::string& dir) {
  return run_shell(kvcompress_binary() + " " + args, dir);
}

// Starts kvcompress with `args` in the background; stdout is appended to DIR/.child_out (several
// children in one folder keep their output), stderr replaces DIR/.child_err. Returns the pid.
inline pid_t spawn_kvcompress(const std::vector<std::string>& args, const std::string& dir) {
  std::vector<std::string> argv_s{kvcompress_binary()};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int out = ::open((dir + "/.child_out").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    const int err = ::open((dir + "/.child_err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, 1);
    ::dup2(err, 2);
    std::vector<char*> argv;
    for (std::string& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

// The exit status of child `pid`, or 128 + the signal that ended it (as a shell reports it).
inline int wait_status(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

inline int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  if (!s.empty() && s.back() != '\n') ++n;
  return n;
}

// The contract for one bad invocation: the exit code, one line on stderr starting
// "kvcompress: error:" that contains every `needles` entry, and no core dump.
inline void expect_error(const RunResult& r, int code, const std::vector<std::string>& needles) {
  INFO("stderr: ", r.err);
  INFO("stdout: ", r.out);
  CHECK(r.exit_code == code);
  CHECK(count_lines(r.err) == 1);
  CHECK(r.err.rfind("kvcompress: error: ", 0) == 0);
  for (const std::string& n : needles) CHECK_MESSAGE(r.err.find(n) != std::string::npos, n);
}

// The Python interpreter of the interop tests: $PYTHON, else /usr/bin/python3. Returns "" after
// printing the KVC_SKIP line (ctest counts the test as skipped) when it cannot import `modules`
// ("torch, h5py").
inline std::string python_or_skip(const std::string& modules, const std::string& dir,
                                  const char* test_name) {
  const char* env = std::getenv("PYTHON");
  const std::string python = env && *env ? env : "/usr/bin/python3";
  if (run_shell(python + " -c 'import " + modules + "'", dir).exit_code == 0) return python;
  std::printf("KVC_SKIP: %s skipped: %s cannot import %s\n", test_name, python.c_str(),
              modules.c_str());
  std::fflush(stdout);
  return "";
}

}  // namespace kvc::test
