// The training progress bar, its log-line fallback, and item progress for gen-data and infer.
#include "train/progress.h"

#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace kvc::train {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const int64_t t = static_cast<int64_t>(std::llround(s));
  if (t < 60) {
    std::snprintf(buf, sizeof(buf), "%llds", static_cast<long long>(t));
  } else if (t < 3600) {
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", static_cast<long long>(t / 60),
                  static_cast<long long>(t % 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", static_cast<long long>(t / 3600),
                  static_cast<long long>((t % 3600) / 60));
  }
  return buf;
}

std::string format_loss(double loss) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4e", loss);
  return buf;
}

// ---- LossSmoother ------------------------------------------------------------------------------

void LossSmoother::add(double x) {
  if (!std::isfinite(x)) return;
  avg_ = beta_ * avg_ + (1 - beta_) * x;
  weight_ = beta_ * weight_ + (1 - beta_);
}

double LossSmoother::value() const { return weight_ > 0 ? avg_ / weight_ : NAN; }

// ---- the bar -----------------------------------------------------------------------------------

namespace {

std::string format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

// The terminal's width on stderr, 80 when it cannot be read.
int terminal_columns() {
  winsize ws{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

}  // namespace

std::string progress_line(const ProgressState& s, int columns) {
  const double frac =
      s.total > 0 ? std::clamp(static_cast<double>(s.step) / static_cast<double>(s.total), 0.0, 1.0)
                  : 0.0;
  const int percent = static_cast<int>(std::floor(frac * 100.0));
  char head[16];
  std::snprintf(head, sizeof(head), "%3d%%", percent);

  const int count_width = static_cast<int>(std::to_string(s.total).size());
  char count[64];
  std::snprintf(count, sizeof(count), "%*lld/%lld", count_width, static_cast<long long>(s.step),
                static_cast<long long>(s.total));
  std::string text = count;
  if (std::isfinite(s.loss)) text += " loss " + format("%.3e", s.loss);
  if (std::isfinite(s.eval_loss)) text += " eval " + format("%.3e", s.eval_loss);
  if (s.steps_per_s > 0 && std::isfinite(s.steps_per_s)) {
    text += " " + format(s.steps_per_s < 10 ? "%.2f" : "%.1f", s.steps_per_s) + " steps/s";
  }
  text += " ETA " + format_duration(s.eta_s);

  const int room = columns - 1;  // writing the last column wraps the line on some terminals
  constexpr int kMinBar = 8, kMaxBar = 30;
  const int bar = std::min<int>(
      kMaxBar, room - static_cast<int>(std::strlen(head) + text.size()) - 4);  // " [" + "] "
  std::string line;
  if (bar >= kMinBar) {
    const int filled = static_cast<int>(std::floor(frac * bar));
    std::string cells(static_cast<size_t>(bar), ' ');
    std::fill_n(cells.begin(), filled, '=');
    if (filled < bar && filled > 0) cells[static_cast<size_t>(filled - 1)] = '>';
    line = std::string(head) + " [" + cells + "] " + text;
  } else {
    line = std::string(head) + " " + text;
  }
  if (room > 0 && static_cast<int>(line.size()) > room) line.resize(static_cast<size_t>(room));
  return line;
}

// ---- Progress ----------------------------------------------------------------------------------

Progress::Progress(int64_t first_step, int64_t total_steps, bool tty, int64_t log_every)
    : total_(total_steps),
      log_every_(log_every > 0 ? log_every : 1),
      tty_(tty),
      last_step_(first_step),
      rate_from_step_(first_step),
      eval_loss_(NAN),
      rate_from_(Clock::now()) {}

Progress::~Progress() { finish(); }

bool Progress::stderr_is_tty() {
  if (!::isatty(STDERR_FILENO)) return false;
  const char* term = std::getenv("TERM");
  return !(term && std::strcmp(term, "dumb") == 0);
}

double Progress::steps_per_second() const {
  const double dt = std::chrono::duration<double>(Clock::now() - rate_from_).count();
  const int64_t done = last_step_ - rate_from_step_;
  return dt > 0 && done > 0 ? static_cast<double>(done) / dt : 0.0;
}

ProgressState Progress::state() const {
  ProgressState s;
  s.step = last_step_;
  s.total = total_;
  s.loss = smoothed_.value();
  s.eval_loss = eval_loss_;
  s.steps_per_s = steps_per_second();
  s.eta_s = s.steps_per_s > 0 ? static_cast<double>(total_ - last_step_) / s.steps_per_s : NAN;
  return s;
}

void Progress::draw() {
  const std::string line = progress_line(state(), terminal_columns());
  std::fprintf(stderr, "\r\033[2K%s", line.c_str());
  std::fflush(stderr);
  line_open_ = true;
  drawn_ = true;
  last_draw_ = Clock::now();
}

void Progress::update(int64_t step, double loss, double lr, double grad_norm) {
  last_step_ = step;
  smoothed_.add(loss);
  if (tty_) {
    // Redrawing more than ~10 times a second only costs terminal time.
    const bool due = !drawn_ || Clock::now() - last_draw_ >= std::chrono::milliseconds(100);
    if (due || step == total_) draw();
    return;
  }
  if (step % log_every_ == 0 || step == total_) {
    const ProgressState s = state();
    spdlog::info(
        "step {}/{} loss {:.4e} (smoothed {:.4e}) lr {:.3e} grad_norm {:.3e} {:.1f} steps/s ETA {}",
        step, total_, loss, s.loss, lr, grad_norm, s.steps_per_s, format_duration(s.eta_s));
  }
}

void Progress::set_eval_loss(double eval_loss) { eval_loss_ = eval_loss; }

void Progress::note(const std::string& message) {
  const bool redraw = tty_ && line_open_;
  if (redraw) {
    std::fprintf(stderr, "\r\033[2K");
    std::fflush(stderr);
    line_open_ = false;
  }
  spdlog::info("{}", message);
  if (redraw) draw();
}

void Progress::finish() {
  if (tty_ && line_open_) {
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
    line_open_ = false;
  }
}

// ---- ItemProgress ------------------------------------------------------------------------------

ItemProgress::ItemProgress(std::string what, int64_t total, double interval_s)
    : what_(std::move(what)),
      total_(total),
      interval_s_(interval_s),
      start_(Clock::now()),
      last_(start_) {}

void ItemProgress::update(int64_t done) {
  const Clock::time_point now = Clock::now();
  if (done >= total_ || std::chrono::duration<double>(now - last_).count() < interval_s_) return;
  last_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
  spdlog::info("{}: {}/{} ({:.0f}%), {:.1f}/s, ETA {}", what_, done, total_,
               100.0 * static_cast<double>(done) / static_cast<double>(total_), rate,
               rate > 0 ? format_duration(static_cast<double>(total_ - done) / rate) : "?");
}

}  // namespace kvc::train
