// Tests of the training progress display: the bar's layout, the loss smoothing, and what a
// terminal shows when `kvcompress train` runs in a pseudo terminal.
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "test_train_util.h"
#include "train/progress.h"

namespace kvc {
namespace {

using Clock = std::chrono::steady_clock;

// The few terminal controls the trainer and spdlog emit, applied to a grid of lines: printable
// characters overwrite at the cursor, \r and \n move it, ESC[2K clears the line, ESC[K clears
// to its end; other escape sequences (colours) change nothing that the test reads.
class Screen {
 public:
  void feed(const std::string& bytes) {
    for (char c : bytes) put(c);
  }
  const std::vector<std::string>& lines() const { return lines_; }
  // The lines without trailing blank ones.
  std::vector<std::string> visible() const {
    std::vector<std::string> out = lines_;
    while (!out.empty() && out.back().find_first_not_of(' ') == std::string::npos) out.pop_back();
    return out;
  }

 private:
  void put(char c) {
    if (!escape_.empty()) {
      escape_ += c;
      const bool csi = escape_.size() >= 2 && escape_[1] == '[';
      if (escape_.size() == 2 && !csi) escape_.clear();  // a two-byte escape: ignored
      if (csi && escape_.size() > 2 && c >= 0x40 && c <= 0x7e) run_csi();
      return;
    }
    std::string& line = lines_[row_];
    switch (c) {
      case '\033':
        escape_ = "\033";
        break;
      case '\r':
        col_ = 0;
        break;
      case '\n':
        if (++row_ == lines_.size()) lines_.emplace_back();
        break;
      default:
        if (line.size() <= col_) line.resize(col_ + 1, ' ');
        line[col_++] = c;
    }
  }
  void run_csi() {
    const char op = escape_.back();
    const std::string arg = escape_.substr(2, escape_.size() - 3);
    std::string& line = lines_[row_];
    if (op == 'K' && arg == "2") line.assign(line.size(), ' ');
    if (op == 'K' && (arg.empty() || arg == "0") && col_ < line.size()) line.resize(col_);
    escape_.clear();
  }

  std::vector<std::string> lines_{""};
  size_t row_ = 0, col_ = 0;
  std::string escape_;
};

struct PtyRun {
  int exit_code = -1;
  std::string bytes;   // everything the terminal received
  double seconds = 0;  // wall time of the run
};

// Runs kvcompress with `args` on a fresh pseudo terminal of `columns` x 40 (its stdout and stderr
// both), reading until it exits.
PtyRun run_in_pty(const std::vector<std::string>& args, int columns) {
  winsize ws{};
  ws.ws_col = static_cast<unsigned short>(columns);
  ws.ws_row = 40;
  int master = -1;
  const std::string binary = test::kvcompress_binary();
  const pid_t pid = ::forkpty(&master, nullptr, nullptr, &ws);
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::setenv("TERM", "xterm", 1);
    std::vector<char*> argv{const_cast<char*>(binary.c_str())};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(binary.c_str(), argv.data());
    ::_exit(127);
  }
  PtyRun run;
  const auto start = Clock::now();
  char buf[4096];
  for (;;) {
    pollfd p{master, POLLIN, 0};
    const int ready = ::poll(&p, 1, 1000);
    const double now = std::chrono::duration<double>(Clock::now() - start).count();
    if (now > 300) {  // a hang: stop it rather than the whole suite
      ::kill(pid, SIGKILL);
      FAIL_CHECK("kvcompress did not finish within 300 s");
      break;
    }
    if (ready <= 0) continue;
    const ssize_t n = ::read(master, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EIO: the child closed the terminal
    run.bytes.append(buf, static_cast<size_t>(n));
  }
  ::close(master);
  int status = 0;
  ::waitpid(pid, &status, 0);
  run.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return run;
}

// The bar lines in the raw stream: every text that follows a "\r\033[2K" redraw up to the next
// control character.
std::vector<std::string> bar_draws(const std::string& bytes) {
  std::vector<std::string> out;
  const std::string redraw = "\r\033[2K";
  for (size_t at = bytes.find(redraw); at != std::string::npos; at = bytes.find(redraw, at + 1)) {
    const size_t from = at + redraw.size();
    const size_t to = bytes.find_first_of("\r\n\033", from);
    const std::string text = bytes.substr(from, to == std::string::npos ? to : to - from);
    if (text.find('%') != std::string::npos) out.push_back(text);
  }
  return out;
}

TEST_CASE(
    "progress: the bar shows percent, step/total, loss, eval, rate and ETA within the width") {
  train::ProgressState s;
  s.step = 1260;
  s.total = 3000;
  s.loss = 4.1234e-3;
  s.eval_loss = 3.8801e-3;
  s.steps_per_s = 85.34;
  s.eta_s = 20.2;
  const std::string line = train::progress_line(s, 120);
  INFO(line);
  CHECK(line.rfind(" 42% [", 0) == 0);  // 1260 / 3000 = 42%
  for (const char* part :
       {"1260/3000", "loss 4.123e-03", "eval 3.880e-03", "85.3 steps/s", "ETA 20s"}) {
    CHECK_MESSAGE(line.find(part) != std::string::npos, part);
  }
  // The bar's filled part is 42% of its cells (floor), the head drawn as '>'.
  const size_t open = line.find('['), close = line.find(']');
  const std::string cells = line.substr(open + 1, close - open - 1);
  const size_t filled = cells.find_last_of("=>") + 1;
  CHECK(filled == static_cast<size_t>(std::floor(0.42 * static_cast<double>(cells.size()))));
  CHECK(cells[filled - 1] == '>');

  // Never wider than the terminal minus one column; the bar gives way first.
  for (int columns : {200, 100, 80, 60, 40, 20}) {
    const std::string l = train::progress_line(s, columns);
    INFO(columns, ": ", l);
    CHECK(static_cast<int>(l.size()) <= columns - 1);
    CHECK(l.rfind(" 42%", 0) == 0);
  }
  CHECK(train::progress_line(s, 60).find('[') == std::string::npos);

  // Unknown values are left out; a finished run shows a full bar.
  train::ProgressState done;
  done.step = done.total = 500;
  done.loss = done.eval_loss = NAN;
  done.eta_s = 0;
  const std::string end = train::progress_line(done, 100);
  INFO(end);
  CHECK(end.rfind("100% [==============================] 500/500", 0) == 0);
  CHECK(end.find("loss") == std::string::npos);
  CHECK(end.find("eval") == std::string::npos);
  CHECK(end.find("steps/s") == std::string::npos);
}

TEST_CASE("progress: the smoothed loss is a bias-corrected moving average") {
  train::LossSmoother s(0.5);
  CHECK(std::isnan(s.value()));
  s.add(4.0);
  CHECK(s.value() == doctest::Approx(4.0));  // one value: itself, not pulled towards 0
  s.add(NAN);                                // skipped
  s.add(1.0);
  // (0.5 * 0.5 * 4 + 0.5 * 1) / (1 - 0.5^2)
  CHECK(s.value() == doctest::Approx((0.25 * 4.0 + 0.5 * 1.0) / 0.75));
  train::LossSmoother flat;
  for (int i = 0; i < 100; ++i) flat.add(2.5);
  CHECK(flat.value() == doctest::Approx(2.5));
}

TEST_CASE("progress: on a terminal, train redraws one bar in place with the events above it") {
  test::TempDir dir("progress_pty");
  constexpr int kColumns = 100;
  const PtyRun run = run_in_pty({"train", "--steps", "300", "--eval-every", "100", "--save-every",
                                 "150", "--device", "cpu", "--out", dir / "run"},
                                kColumns);
  INFO("terminal bytes:\n", run.bytes);
  REQUIRE(run.exit_code == 0);

  const std::vector<std::string> draws = bar_draws(run.bytes);
  REQUIRE(!draws.empty());
  // The bar is drawn while the run goes, not only at the end: several draws before the last step,
  // with the step count rising.
  std::vector<std::string> before_end;
  for (const std::string& d : draws) {
    if (d.find("300/300") == std::string::npos) before_end.push_back(d);
  }
  CHECK(before_end.size() >= 3);
  // At most ~10 redraws a second, plus one after each of the 6 events (3 evals, 2 saves, step 0).
  CHECK(static_cast<double>(draws.size()) <= 10.0 * run.seconds + 6 + 2);
  for (const std::string& d : draws) {
    INFO(d);
    CHECK(static_cast<int>(d.size()) <= kColumns - 1);
    CHECK(d.find("steps/s") != std::string::npos);
    CHECK(d.find("ETA") != std::string::npos);
  }

  // What the screen shows at the end: the events, each on its own line, then the finished bar as
  // the last line and the only bar on the screen.
  Screen screen;
  screen.feed(run.bytes);
  const std::vector<std::string> lines = screen.visible();
  std::string all;
  for (const std::string& l : lines) all += l + "\n";
  INFO("screen:\n", all);
  int bars = 0;
  for (const std::string& l : lines) bars += l.find("% [") != std::string::npos;
  CHECK(bars == 1);
  for (const char* event : {"step 0: eval loss", "step 100: eval loss", "step 150: saved",
                            "step 300: eval loss", "step 300: saved", "done: step 300"}) {
    CHECK_MESSAGE(all.find(event) != std::string::npos, event);
  }
  const auto bar_line = std::find_if(lines.begin(), lines.end(), [](const std::string& l) {
    return l.find("% [") != std::string::npos;
  });
  REQUIRE(bar_line != lines.end());
  CHECK(bar_line->rfind("100% [", 0) == 0);
  CHECK(bar_line->find("300/300") != std::string::npos);
  CHECK(bar_line->find("loss ") != std::string::npos);
  CHECK(bar_line->find("eval ") != std::string::npos);
  // Eval and save lines sit above the bar; only the closing summary follows it.
  const size_t bar_row = static_cast<size_t>(bar_line - lines.begin());
  for (size_t i = bar_row + 1; i < lines.size(); ++i) {
    INFO(lines[i]);
    CHECK(lines[i].find(": eval loss") == std::string::npos);
    CHECK(lines[i].find(": saved") == std::string::npos);
  }
}

TEST_CASE("progress: without a terminal, train writes plain log lines") {
  test::TempDir dir("progress_log");
  const test::RunResult r = test::run_kvcompress(
      "train --steps 60 --log-every 20 --eval-every 30 --device cpu --out " + dir / "run",
      dir.path);
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find('\r') == std::string::npos);
  CHECK(r.out.find('\033') == std::string::npos);
  CHECK(r.err.empty());
  for (const char* line : {"step 20/60 loss ", "step 40/60 loss ", "step 60/60 loss ",
                           "step 30: eval loss ", "step 60: saved "}) {
    CHECK_MESSAGE(r.out.find(line) != std::string::npos, line);
  }
}

}  // namespace
}  // namespace kvc
