// Training progress: one updating line on a terminal, spdlog lines every N
// steps otherwise.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

namespace kvc::train {

// Formats seconds as "42s", "3m07s", "2h05m".
std::string format_duration(double seconds);

class Progress {
 public:
  // `first_step` is where a resumed run starts; `tty` chooses the updating line
  // (stderr) over log lines; `log_every` is the log interval in steps when not
  // a terminal.
  Progress(int64_t first_step, int64_t total_steps, bool tty, int64_t log_every);
  ~Progress();

  // Call after every step. Rate and ETA come from the steps done since
  // construction.
  void update(int64_t step, double loss, double lr, double grad_norm);
  // A message that must not be overwritten (eval result, checkpoint saved): on
  // a terminal it clears the progress line first and the line is redrawn at the
  // next update.
  void note(const std::string& message);
  // Ends the updating line (prints the newline) so later output starts clean.
  void finish();

  double steps_per_second() const;

  // True when stderr is a terminal (and TERM is not "dumb").
  static bool stderr_is_tty();

 private:
  using Clock = std::chrono::steady_clock;
  int64_t first_step_, total_, log_every_;
  bool tty_;
  bool line_open_ = false;
  int64_t last_step_ = 0;
  Clock::time_point start_;
  Clock::time_point last_draw_;
};

// Progress of work over many items (gen-data, infer): a spdlog line at most every
// `interval_s` seconds with the count, rate and ETA, so long runs show they are alive.
class ItemProgress {
 public:
  ItemProgress(std::string what, int64_t total, double interval_s = 2.0);
  void update(int64_t done);

 private:
  using Clock = std::chrono::steady_clock;
  std::string what_;
  int64_t total_;
  double interval_s_;
  Clock::time_point start_, last_;
};

}  // namespace kvc::train
