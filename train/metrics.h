// The run's metrics history and its CSV file (loss_plot.h draws it).
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace kvc::train {

// One row per training step. eval_loss is NaN on steps without an evaluation.
struct MetricsRow {
  int64_t step = 0;
  double loss = 0;
  double eval_loss = 0;
  double lr = 0;
  double grad_norm = 0;
  double elapsed = 0;  // seconds since the run began (resumed runs continue the count)
  // Selection recall@k at this step's evaluation (distill task); NaN without one.
  double recall_at_k = std::numeric_limits<double>::quiet_NaN();
};

// A double field of MetricsRow and its name in the checkpoint (/metrics/<name>).
struct MetricsColumn {
  const char* name;
  double MetricsRow::*field;
};
// Every double field, in row order: the one list the checkpoint writes and reads.
const std::vector<MetricsColumn>& metrics_columns();

class MetricsHistory {
 public:
  void append(const MetricsRow& row) { rows_.push_back(row); }
  // Sets the eval loss of the latest row whose step is `step` (evaluation runs
  // after the step).
  void set_eval_loss(int64_t step, double eval_loss);
  // Sets the recall of the row set_eval_loss wrote for `step`.
  void set_recall(int64_t step, double recall_at_k);
  // Drops rows with step > `step` (a resume from an older checkpoint than the
  // CSV reached).
  void truncate_after(int64_t step);
  // Steps where a resumed run continued the history (drawn on the loss curve). Truncation drops
  // those past the new end too.
  void mark_resume(int64_t step);
  const std::vector<int64_t>& resume_steps() const { return resume_steps_; }
  void set_resume_steps(std::vector<int64_t> steps) { resume_steps_ = std::move(steps); }
  const std::vector<MetricsRow>& rows() const { return rows_; }
  bool empty() const { return rows_.empty(); }
  size_t size() const { return rows_.size(); }
  void clear() {
    rows_.clear();
    resume_steps_.clear();
  }

  // Column views (the checkpoint stores /metrics/{step, loss, eval_loss, lr,
  // grad_norm, elapsed}).
  std::vector<int64_t> steps() const;
  std::vector<double> column(double MetricsRow::*field) const;
  // Rows for `steps` with every other field NaN (checkpoint load fills them by set_column).
  static MetricsHistory with_steps(const std::vector<int64_t>& steps);
  // Sets one field of every row; throws naming the column when the lengths differ.
  void set_column(const MetricsColumn& column, const std::vector<double>& values);
  // The largest finite elapsed time (0 when none): where a resumed run's clock continues.
  double max_elapsed() const;

 private:
  std::vector<MetricsRow> rows_;
  std::vector<int64_t> resume_steps_;
};

// The lowest eval loss of a run and how many evaluations came after it (for --patience).
struct BestEval {
  double loss = std::numeric_limits<double>::quiet_NaN();  // NaN until the first evaluation
  int64_t step = 0;
  int64_t evals_since = 0;
  // Books an evaluation at `at_step`; true when it is a new lowest (the first always is).
  bool add(int64_t at_step, double eval_loss);
  // The history's evaluations replayed, except step 0's (the untrained baseline).
  static BestEval of(const MetricsHistory& history);
};

// The CSV header line: step,loss,eval_loss,lr,grad_norm,elapsed_s,recall_at_k (elapsed_s: seconds
// since the run began). Files without the recall column (older runs) still read.
const char* metrics_csv_header();
// One CSV line (no newline); NaN prints as an empty field so spreadsheets and
// pandas read it as missing. Doubles print with 9 significant digits (enough to
// round-trip a float32 loss).
std::string metrics_csv_line(const MetricsRow& row);
// Writes the whole history to `path` atomically (temp file + rename).
void write_metrics_csv(const std::string& path, const MetricsHistory& history);
// Parses a file written by write_metrics_csv; throws kvc::Error naming the file
// and line.
MetricsHistory read_metrics_csv(const std::string& path);

// Every column of a numeric CSV file with a header line, by name (an empty field is NaN): how
// readers that want a column a newer file may add (or an older one lack) see metrics.csv.
// Throws kvc::Error naming the file and line for a ragged row or a non-number.
using CsvColumns = std::map<std::string, std::vector<double>>;
CsvColumns read_csv_columns(const std::string& path);

// Writes `contents` to `path` through a temp file in the same folder, fsync and
// rename(), so a reader sees the old file or the new one, never a torn one.
// Throws kvc::Error on failure.
void write_file_atomic(const std::string& path, const std::string& contents);

}  // namespace kvc::train
