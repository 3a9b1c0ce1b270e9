// Progress line and periodic log lines for the training loop.
#include "train/progress.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

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

Progress::Progress(int64_t first_step, int64_t total_steps, bool tty, int64_t log_every)
    : first_step_(first_step),
      total_(total_steps),
      log_every_(log_every > 0 ? log_every : 1),
      tty_(tty),
      last_step_(first_step),
      start_(Clock::now()),
      last_draw_(Clock::time_point::min()) {}

Progress::~Progress() { finish(); }

bool Progress::stderr_is_tty() {
  if (!::isatty(STDERR_FILENO)) return false;
  const char* term = std::getenv("TERM");
  return !(term && std::strcmp(term, "dumb") == 0);
}

double Progress::steps_per_second() const {
  const double dt = std::chrono::duration<double>(Clock::now() - start_).count();
  const int64_t done = last_step_ - first_step_;
  return dt > 0 && done > 0 ? static_cast<double>(done) / dt : 0.0;
}

void Progress::update(int64_t step, double loss, double lr, double grad_norm) {
  last_step_ = step;
  const double rate = steps_per_second();
  const double eta = rate > 0 ? static_cast<double>(total_ - step) / rate : NAN;
  if (tty_) {
    // Redrawing more than ~10 times a second only costs terminal time.
    const auto now = Clock::now();
    if (step != total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    const int width = static_cast<int>(std::to_string(total_).size());
    std::fprintf(stderr, "\r\033[2Kstep %*lld/%lld  loss %.4e  lr %.2e  %.1f steps/s  ETA %s",
                 width, static_cast<long long>(step), static_cast<long long>(total_), loss, lr,
                 rate, format_duration(eta).c_str());
    std::fflush(stderr);
    line_open_ = true;
    return;
  }
  if (step % log_every_ == 0 || step == total_) {
    spdlog::info(
        "step {}/{} loss {:.4e} lr {:.2e} grad_norm {:.3e} {:.1f} "
        "steps/s ETA {}",
        step, total_, loss, lr, grad_norm, rate, format_duration(eta));
  }
}

void Progress::note(const std::string& message) {
  if (tty_ && line_open_) {
    std::fprintf(stderr, "\r\033[2K");
    std::fflush(stderr);
    line_open_ = false;
    last_draw_ = Clock::time_point::min();
  }
  spdlog::info("{}", message);
}

void Progress::finish() {
  if (tty_ && line_open_) {
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
    line_open_ = false;
  }
}

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
