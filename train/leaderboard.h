// The leaderboard of `kvcompress compare`: one row per compressor kind trained on the same data
// and seed, as leaderboard.csv, leaderboard.md and compare.svg (every kind's eval curve).
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "train/metrics.h"

namespace kvc::train {

struct LeaderboardRow {
  std::string kind;
  int64_t parameters = 0;
  // Lowest eval loss after step 0 (what best.h5 holds) and its step (-1: no evaluation).
  double best_eval = std::numeric_limits<double>::quiet_NaN();
  int64_t best_step = -1;
  double final_eval = std::numeric_limits<double>::quiet_NaN();  // the last evaluation's
  // Selection recall@k logged at the best step; NaN when the run logged none.
  double recall_at_best = std::numeric_limits<double>::quiet_NaN();
  // The median time between consecutive training steps, so evaluations and checkpoint writes
  // between two steps do not count.
  double ms_per_step = std::numeric_limits<double>::quiet_NaN();
  double wall_seconds = 0;  // the kind's whole run: setup, training, evaluations, checkpoints
};

// The eval points (step, eval loss) of one kind, for compare.svg.
struct EvalCurve {
  std::string kind;
  std::vector<std::pair<int64_t, double>> points;
};

// A kind's row from its metrics.csv columns: step, eval_loss and elapsed_s are required, and
// recall_at_k is read when the file has it.
LeaderboardRow leaderboard_row(const std::string& kind, int64_t parameters, double wall_seconds,
                               const CsvColumns& metrics);
// The finite eval losses of metrics.csv columns (step 0's untrained one included).
EvalCurve eval_curve(const std::string& kind, const CsvColumns& metrics);

// Rows ranked by best eval loss (kinds without one last), as written to the files.
std::vector<LeaderboardRow> ranked(std::vector<LeaderboardRow> rows);
// CSV: kind,parameters,best_eval_loss,best_step,final_eval_loss,recall_at_k,ms_per_step,wall_s;
// a missing value is an empty field.
std::string leaderboard_csv(const std::vector<LeaderboardRow>& rows);
// A Markdown table (rank first; a missing value is "n/a") under a heading, with `note` (the
// shared settings) as a paragraph.
std::string leaderboard_markdown(const std::vector<LeaderboardRow>& rows, const std::string& note);
// One log-scale panel: each kind's eval loss against the step, a colour per kind (dashed after
// the tenth), its best point ringed; the legend above the frame, best kind first, with each
// kind's best eval loss. Classes the test reads: frame `frame-compare`, series `eval-<kind>`,
// rings `best`.
std::string compare_svg(const std::vector<EvalCurve>& curves, const std::string& title);

// Writes OUT/leaderboard.csv, OUT/leaderboard.md and OUT/compare.svg atomically.
void write_leaderboard(const std::string& dir, const std::vector<LeaderboardRow>& rows,
                       const std::vector<EvalCurve>& curves, const std::string& note);

}  // namespace kvc::train
