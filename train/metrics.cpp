// Metrics history, CSV read/write, and atomic small-file writes.
#include "train/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "base/error.h"
#include "data/atomic_file.h"

namespace kvc::train {

// ---- history
// --------------------------------------------------------------------------------

void MetricsHistory::set_eval_loss(int64_t step, double eval_loss) {
  for (auto it = rows_.rbegin(); it != rows_.rend(); ++it) {
    if (it->step == step) {
      it->eval_loss = eval_loss;
      return;
    }
  }
  // No training row for this step (evaluation of an untrained model at step 0):
  // keep it anyway.
  MetricsRow row;
  row.step = step;
  row.loss = std::numeric_limits<double>::quiet_NaN();
  row.eval_loss = eval_loss;
  row.lr = row.grad_norm = row.elapsed = std::numeric_limits<double>::quiet_NaN();
  rows_.push_back(row);
}

void MetricsHistory::set_recall(int64_t step, double recall_at_k) {
  for (auto it = rows_.rbegin(); it != rows_.rend(); ++it) {
    if (it->step == step) {
      it->recall_at_k = recall_at_k;
      return;
    }
  }
}

void MetricsHistory::truncate_after(int64_t step) {
  rows_.erase(std::remove_if(rows_.begin(), rows_.end(),
                             [&](const MetricsRow& r) { return r.step > step; }),
              rows_.end());
  resume_steps_.erase(std::remove_if(resume_steps_.begin(), resume_steps_.end(),
                                     [&](int64_t s) { return s > step; }),
                      resume_steps_.end());
}

void MetricsHistory::mark_resume(int64_t step) {
  if (resume_steps_.empty() || resume_steps_.back() != step) resume_steps_.push_back(step);
}

std::vector<int64_t> MetricsHistory::steps() const {
  std::vector<int64_t> out;
  out.reserve(rows_.size());
  for (const MetricsRow& r : rows_) out.push_back(r.step);
  return out;
}

std::vector<double> MetricsHistory::column(double MetricsRow::*field) const {
  std::vector<double> out;
  out.reserve(rows_.size());
  for (const MetricsRow& r : rows_) out.push_back(r.*field);
  return out;
}

const std::vector<MetricsColumn>& metrics_columns() {
  static const std::vector<MetricsColumn> columns = {
      {"loss", &MetricsRow::loss},       {"eval_loss", &MetricsRow::eval_loss},
      {"lr", &MetricsRow::lr},           {"grad_norm", &MetricsRow::grad_norm},
      {"elapsed", &MetricsRow::elapsed}, {"recall_at_k", &MetricsRow::recall_at_k}};
  return columns;
}

MetricsHistory MetricsHistory::with_steps(const std::vector<int64_t>& steps) {
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  MetricsHistory h;
  h.rows_.reserve(steps.size());
  for (const int64_t step : steps) h.rows_.push_back({step, nan, nan, nan, nan, nan, nan});
  return h;
}

void MetricsHistory::set_column(const MetricsColumn& column, const std::vector<double>& values) {
  KVC_CHECK(values.size() == rows_.size(), "metrics: column ", column.name, " has ", values.size(),
            " values for ", rows_.size(), " steps");
  for (size_t i = 0; i < rows_.size(); ++i) rows_[i].*column.field = values[i];
}

double MetricsHistory::max_elapsed() const {
  double out = 0;
  for (const MetricsRow& r : rows_) {
    if (std::isfinite(r.elapsed)) out = std::max(out, r.elapsed);
  }
  return out;
}

bool BestEval::add(int64_t at_step, double eval_loss) {
  const bool best = !(eval_loss >= loss);  // also true while loss is NaN (none yet)
  if (best) {
    loss = eval_loss;
    step = at_step;
  }
  evals_since = best ? 0 : evals_since + 1;
  return best;
}

BestEval BestEval::of(const MetricsHistory& history) {
  BestEval best;
  for (const MetricsRow& r : history.rows()) {
    if (std::isfinite(r.eval_loss) && r.step != 0) best.add(r.step, r.eval_loss);
  }
  return best;
}

// ---- CSV
// ------------------------------------------------------------------------------------

const char* metrics_csv_header() {
  return "step,loss,eval_loss,lr,grad_norm,elapsed_s,recall_at_k";
}

namespace {
// The header of files written before the recall column.
constexpr const char* kHeaderWithoutRecall = "step,loss,eval_loss,lr,grad_norm,elapsed_s";
}  // namespace

namespace {

std::string fmt_double(double v) {
  if (std::isnan(v)) return "";
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

double parse_field(const std::string& s, const std::string& path, size_t line_no) {
  if (s.empty()) return std::numeric_limits<double>::quiet_NaN();
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  KVC_CHECK(end && *end == '\0' && errno != ERANGE, "metrics: ", path, " line ", line_no, ": '", s,
            "' is not a number");
  return v;
}

}  // namespace

std::string metrics_csv_line(const MetricsRow& r) {
  std::string s = std::to_string(r.step);
  for (double v : {r.loss, r.eval_loss, r.lr, r.grad_norm, r.elapsed, r.recall_at_k}) {
    s += "," + fmt_double(v);
  }
  return s;
}

void write_metrics_csv(const std::string& path, const MetricsHistory& history) {
  std::string out = metrics_csv_header();
  out += '\n';
  for (const MetricsRow& r : history.rows()) out += metrics_csv_line(r) + '\n';
  write_file_atomic(path, out);
}

MetricsHistory read_metrics_csv(const std::string& path) {
  std::ifstream in(path);
  KVC_CHECK(in.good(), "metrics: cannot open ", path, ": ", std::strerror(errno));
  std::string line;
  // Runs written before recall@k was logged have six columns; before the time column said its
  // unit, it was named "elapsed" (the same seconds).
  const bool header = static_cast<bool>(std::getline(in, line)) &&
                      (line == metrics_csv_header() || line == kHeaderWithoutRecall ||
                       line == "step,loss,eval_loss,lr,grad_norm,elapsed");
  KVC_CHECK(header, "metrics: ", path, " does not start with the header '", metrics_csv_header(),
            "'");
  const size_t fields = line == metrics_csv_header() ? 7 : 6;
  MetricsHistory h;
  size_t line_no = 1;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    std::vector<std::string> f;
    std::stringstream ss(line);
    std::string field;
    while (std::getline(ss, field, ',')) f.push_back(field);
    if (!line.empty() && line.back() == ',') f.push_back("");
    KVC_CHECK(f.size() == fields, "metrics: ", path, " line ", line_no, " has ", f.size(),
              " fields, expected ", fields);
    MetricsRow r;
    const double step = parse_field(f[0], path, line_no);
    KVC_CHECK(std::isfinite(step), "metrics: ", path, " line ", line_no, ": empty step");
    r.step = static_cast<int64_t>(step);
    r.loss = parse_field(f[1], path, line_no);
    r.eval_loss = parse_field(f[2], path, line_no);
    r.lr = parse_field(f[3], path, line_no);
    r.grad_norm = parse_field(f[4], path, line_no);
    r.elapsed = parse_field(f[5], path, line_no);
    if (fields == 7) r.recall_at_k = parse_field(f[6], path, line_no);
    h.append(r);
  }
  return h;
}

CsvColumns read_csv_columns(const std::string& path) {
  std::ifstream in(path);
  KVC_CHECK(in.good(), "csv: cannot open ", path, ": ", std::strerror(errno));
  auto split = [](const std::string& line) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    std::string field;
    while (std::getline(ss, field, ',')) f.push_back(field);
    if (!line.empty() && line.back() == ',') f.push_back("");
    return f;
  };
  std::string line;
  KVC_CHECK(static_cast<bool>(std::getline(in, line)), "csv: ", path, " is empty (no header)");
  const std::vector<std::string> names = split(line);
  CsvColumns columns;
  for (const std::string& name : names) {
    KVC_CHECK(columns.emplace(name, std::vector<double>{}).second, "csv: ", path,
              " names the column '", name, "' twice");
  }
  size_t line_no = 1;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    const std::vector<std::string> f = split(line);
    KVC_CHECK(f.size() == names.size(), "csv: ", path, " line ", line_no, " has ", f.size(),
              " fields, expected ", names.size());
    for (size_t i = 0; i < f.size(); ++i)
      columns[names[i]].push_back(parse_field(f[i], path, line_no));
  }
  return columns;
}

// ---- atomic write
// ---------------------------------------------------------------------------

void write_file_atomic(const std::string& path, const std::string& contents) {
  const std::string tmp = temp_path_for(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  KVC_CHECK(fd >= 0, "cannot write ", path, ": ", std::strerror(errno));
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      KVC_FAIL("cannot write ", path, ": ", std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    KVC_FAIL("cannot write ", path, ": ", std::strerror(err));
  }
  publish_file(tmp, path, "cannot write " + path);
}

}  // namespace kvc::train
