// Leaderboard rows from each kind's metrics, and the files `compare` writes.
#include "train/leaderboard.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "base/error.h"
#include "train/progress.h"  // format_loss
#include "train/svg_plot.h"

namespace kvc::train {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Ten distinguishable colours (matplotlib's tab10); kinds past the tenth reuse them dashed.
const char* const kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
constexpr size_t kColors = sizeof(kPalette) / sizeof(kPalette[0]);

const std::vector<double>& column(const CsvColumns& m, const char* name, const std::string& kind) {
  const auto it = m.find(name);
  KVC_CHECK(it != m.end(), "compare: the metrics of ", kind, " have no '", name, "' column");
  return it->second;
}

double median(std::vector<double> v) {
  if (v.empty()) return kNaN;
  const size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid), v.end());
  return v[mid];
}

// "%.4g", or `missing` for NaN.
std::string value_text(double v, const char* fmt, const char* missing) {
  if (!std::isfinite(v)) return missing;
  char buf[48];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

// The lowest point after step 0 (what best.h5 holds), or null.
const plot::Point* best_point(const std::vector<plot::Point>& series) {
  const plot::Point* best = nullptr;
  for (const plot::Point& p : series) {
    if (p.x > 0 && (!best || p.y < best->y)) best = &p;
  }
  return best;
}

}  // namespace

LeaderboardRow leaderboard_row(const std::string& kind, int64_t parameters, double wall_seconds,
                               const CsvColumns& metrics) {
  const std::vector<double>& step = column(metrics, "step", kind);
  const std::vector<double>& eval = column(metrics, "eval_loss", kind);
  const std::vector<double>& elapsed = column(metrics, "elapsed_s", kind);
  const auto recall = metrics.find("recall_at_k");
  LeaderboardRow r;
  r.kind = kind;
  r.parameters = parameters;
  r.wall_seconds = wall_seconds;
  std::vector<double> gaps;
  for (size_t i = 0; i < step.size(); ++i) {
    if (i > 0 && step[i] == step[i - 1] + 1 && elapsed[i] > elapsed[i - 1]) {
      gaps.push_back(elapsed[i] - elapsed[i - 1]);
    }
    if (!std::isfinite(eval[i])) continue;
    r.final_eval = eval[i];
    if (step[i] > 0 && !(eval[i] >= r.best_eval)) {
      r.best_eval = eval[i];
      r.best_step = static_cast<int64_t>(step[i]);
      r.recall_at_best = recall == metrics.end() ? kNaN : recall->second[i];
    }
  }
  r.ms_per_step = 1e3 * median(gaps);
  return r;
}

EvalCurve eval_curve(const std::string& kind, const CsvColumns& metrics) {
  const std::vector<double>& step = column(metrics, "step", kind);
  const std::vector<double>& eval = column(metrics, "eval_loss", kind);
  EvalCurve c{kind, {}};
  for (size_t i = 0; i < step.size(); ++i) {
    if (std::isfinite(eval[i])) c.points.emplace_back(static_cast<int64_t>(step[i]), eval[i]);
  }
  return c;
}

std::vector<LeaderboardRow> ranked(std::vector<LeaderboardRow> rows) {
  std::stable_sort(rows.begin(), rows.end(), [](const LeaderboardRow& a, const LeaderboardRow& b) {
    const bool fa = std::isfinite(a.best_eval), fb = std::isfinite(b.best_eval);
    return fa != fb ? fa : fa && a.best_eval < b.best_eval;
  });
  return rows;
}

std::string leaderboard_csv(const std::vector<LeaderboardRow>& rows) {
  std::string out =
      "kind,parameters,best_eval_loss,best_step,final_eval_loss,recall_at_k,ms_per_step,wall_s\n";
  for (const LeaderboardRow& r : rows) {
    out += r.kind + "," + std::to_string(r.parameters) + "," + value_text(r.best_eval, "%.9g", "") +
           "," + (r.best_step >= 0 ? std::to_string(r.best_step) : "") + "," +
           value_text(r.final_eval, "%.9g", "") + "," + value_text(r.recall_at_best, "%.6g", "") +
           "," + value_text(r.ms_per_step, "%.6g", "") + "," +
           value_text(r.wall_seconds, "%.3f", "") + "\n";
  }
  return out;
}

std::string leaderboard_markdown(const std::vector<LeaderboardRow>& rows, const std::string& note) {
  std::string out = "# Compressor leaderboard\n\n" + note +
                    "\n\n| rank | kind | parameters | best eval loss (step) | final eval loss | "
                    "recall@k at best | ms/step | wall s |\n"
                    "|---:|---|---:|---:|---:|---:|---:|---:|\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const LeaderboardRow& r = rows[i];
    const std::string best = std::isfinite(r.best_eval) ? format_loss(r.best_eval) + " (" +
                                                              std::to_string(r.best_step) + ")"
                                                        : std::string("n/a");
    out += "| " + std::to_string(i + 1) + " | " + r.kind + " | " + std::to_string(r.parameters) +
           " | " + best + " | " +
           (std::isfinite(r.final_eval) ? format_loss(r.final_eval) : std::string("n/a")) + " | " +
           value_text(r.recall_at_best, "%.3f", "n/a") + " | " +
           value_text(r.ms_per_step, "%.2f", "n/a") + " | " +
           value_text(r.wall_seconds, "%.1f", "n/a") + " |\n";
  }
  return out;
}

std::string compare_svg(const std::vector<EvalCurve>& curves, const std::string& title) {
  using namespace plot;
  std::vector<std::vector<Point>> series;  // (step, log10 eval loss)
  for (const EvalCurve& c : curves) {
    std::vector<Point> pts;
    for (const auto& [step, loss] : c.points) {
      if (std::isfinite(loss) && loss > 0)
        pts.push_back({static_cast<double>(step), std::log10(loss)});
    }
    series.push_back(std::move(pts));
  }
  std::vector<const std::vector<Point>*> all;
  for (const auto& s : series) all.push_back(&s);
  // The legend lists the kinds best first (colours stay in run order), so it reads as a ranking.
  std::vector<size_t> order(curves.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto best_y = [&](size_t i) {
    const Point* best = best_point(series[i]);
    return best ? best->y : std::numeric_limits<double>::infinity();
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return best_y(a) < best_y(b); });
  std::vector<LegendItem> items;
  for (size_t i : order) {
    const Point* best = best_point(series[i]);
    const std::string label =
        curves[i].kind + (best ? " (best " + format_loss(std::pow(10.0, best->y)) + ")" : "");
    items.push_back({label, kPalette[i % kColors], i < kColors ? "" : "6,3", 2.5});
  }

  SvgWriter svg;
  svg.text(kWidth / 2, 24, title, " text-anchor=\"middle\" font-size=\"15\"");
  const double pw = kWidth - kLeft - kRight;
  const double legend_h = svg.legend(kLeft, 36, pw, items);
  const Frame f{kLeft, 36 + legend_h + 8, pw, 420};
  const Axis xs = step_axis(all);
  const auto [d0, d1] = decades(all);
  const Axis ys{d0, d1, f.bottom(), f.y};
  svg.log_axis(f, ys, /*right=*/false, "black", /*grid=*/true);
  svg.x_axis(f, xs, /*labels=*/true);
  svg.text(18, f.y + f.h / 2, "eval loss (log scale)",
           " transform=\"rotate(-90 18 " + num(f.y + f.h / 2) + ")\" text-anchor=\"middle\"");
  svg.text(f.x + f.w / 2, f.bottom() + 40, "step", " text-anchor=\"middle\"");
  for (size_t i = 0; i < curves.size(); ++i) {
    const char* color = kPalette[i % kColors];
    const std::string cls = "eval-" + curves[i].kind;
    const std::string dash = i < kColors ? "" : " stroke-dasharray=\"6,3\"";
    svg.polyline(thinned(series[i]), xs, ys, cls.c_str(), color, 2, dash);
    if (series[i].size() <= 200) svg.dots(series[i], xs, ys, color, 2.5);
    if (const Point* best = best_point(series[i])) {
      svg.o << "<circle class=\"best\" cx=\"" << num(xs(best->x)) << "\" cy=\"" << num(ys(best->y))
            << "\" r=\"6\" fill=\"none\" stroke=\"" << color << "\" stroke-width=\"2\"/>\n";
    }
  }
  svg.frame(f, "frame-compare");
  return svg_document(svg.o.str(), kWidth, std::ceil(f.bottom() + 52));
}

void write_leaderboard(const std::string& dir, const std::vector<LeaderboardRow>& rows,
                       const std::vector<EvalCurve>& curves, const std::string& note) {
  const std::vector<LeaderboardRow> order = ranked(rows);
  write_file_atomic(dir + "/leaderboard.csv", leaderboard_csv(order));
  write_file_atomic(dir + "/leaderboard.md", leaderboard_markdown(order, note));
  write_file_atomic(dir + "/compare.svg", compare_svg(curves, "eval loss per compressor kind"));
}

}  // namespace kvc::train
