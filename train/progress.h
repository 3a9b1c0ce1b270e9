// Training progress: a bar redrawn in place on a terminal, spdlog lines every N steps otherwise;
// and a periodic count for long item loops (gen-data, infer).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

namespace kvc::train {

// Formats seconds as "42s", "3m07s", "2h05m".
std::string format_duration(double seconds);
// A loss as every log line shows one: 5 significant digits, exponent form ("3.8826e-03").
std::string format_loss(double loss);

// An exponential moving average with bias correction (as Adam corrects its moments), so the
// first values are not pulled towards 0: after one value it is that value. Non-finite values
// are skipped.
class LossSmoother {
 public:
  explicit LossSmoother(double beta = 0.95) : beta_(beta) {}
  void add(double x);
  // NaN before the first value.
  double value() const;

 private:
  double beta_;
  double avg_ = 0, weight_ = 0;  // weight_ = 1 - beta^count
};

// What the progress bar shows. NaN fields are left out of the line.
struct ProgressState {
  int64_t step = 0, total = 0;
  double loss = 0;       // smoothed train loss
  double eval_loss = 0;  // the last evaluation's loss
  double steps_per_s = 0;
  double eta_s = 0;
};

// The bar line, at most `columns - 1` characters (a full-width line would wrap on some
// terminals and break the in-place redraw):
//   " 42% [=========>           ] 1260/3000 loss 4.123e-03 eval 3.880e-03 85.3 steps/s ETA 20s"
// The bar shrinks to fit, and disappears on a terminal too narrow for it.
std::string progress_line(const ProgressState& s, int columns);

class Progress {
 public:
  // `first_step` is where a resumed run starts; `tty` chooses the bar (on stderr) over log lines;
  // `log_every` is the log interval in steps when not a terminal.
  Progress(int64_t first_step, int64_t total_steps, bool tty, int64_t log_every);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Call after every step. The bar is redrawn at most ~10 times a second, and always at the last
  // step.
  void update(int64_t step, double loss, double lr, double grad_norm);
  // The latest evaluation's loss, shown on the bar from now on.
  void set_eval_loss(double eval_loss);
  // A message that must stay (eval result, checkpoint saved): on a terminal it is printed above
  // the bar, which is redrawn below it.
  void note(const std::string& message);
  // Ends the bar's line (prints the newline) so later output starts clean.
  void finish();

  // Steps per second since the first update (what the ETA assumes).
  double steps_per_second() const;

  // True when stderr is a terminal (and TERM is not "dumb").
  static bool stderr_is_tty();

 private:
  using Clock = std::chrono::steady_clock;
  void draw();
  ProgressState state() const;

  int64_t total_, log_every_;
  bool tty_;
  bool line_open_ = false;  // the bar is on screen and the cursor is at its end
  bool drawn_ = false;      // last_draw_ holds a real time
  int64_t last_step_ = 0;
  int64_t rate_from_step_ = 0;  // where the rate is counted from (the run's first step)
  double eval_loss_;
  LossSmoother smoothed_;
  Clock::time_point rate_from_;
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
