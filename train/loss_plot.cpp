// loss.svg: two panels (losses; learning rate and gradient norm) over a shared step axis.
#include "train/loss_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>
#include <vector>

#include "train/metrics.h"
#include "train/progress.h"  // format_loss
#include "train/svg_plot.h"

namespace kvc::train {

namespace {

using namespace plot;

const char* const kRawColor = "#9ecae1";
const char* const kSmoothColor = "#1f77b4";
const char* const kEvalColor = "#ff7f0e";
const char* const kBestColor = "#2ca02c";
const char* const kResumeColor = "#7f7f7f";
const char* const kLrColor = "#d62728";
const char* const kGradColor = "#9467bd";

// (step, value) for the rows whose value is finite (and positive when `log`, then log10 of it).
std::vector<Point> points(const std::vector<MetricsRow>& rows, double MetricsRow::*field,
                          bool log) {
  std::vector<Point> pts;
  for (const MetricsRow& r : rows) {
    const double v = r.*field;
    if (!std::isfinite(v) || (log && v <= 0)) continue;
    pts.push_back({static_cast<double>(r.step), log ? std::log10(v) : v});
  }
  return pts;
}

// The centred moving average of the y values over 2k+1 points, k about 1/100 of the run (at least
// 2); near the ends the window shrinks to stay centred. Centred, the curve does not lag behind a
// falling loss the way a running average would.
std::vector<Point> smoothed(const std::vector<Point>& pts) {
  const size_t n = pts.size();
  const size_t k = std::max<size_t>(2, n / 100);
  std::vector<double> prefix(n + 1, 0.0);
  for (size_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + pts[i].y;
  std::vector<Point> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t half = std::min({k, i, n - 1 - i});
    const double sum = prefix[i + half + 1] - prefix[i - half];
    out.push_back({pts[i].x, sum / static_cast<double>(2 * half + 1)});
  }
  return out;
}

// The row with the lowest eval loss after step 0 (what best.h5 holds), or null.
const MetricsRow* best_row(const std::vector<MetricsRow>& rows) {
  const MetricsRow* best = nullptr;
  for (const MetricsRow& r : rows) {
    if (r.step > 0 && std::isfinite(r.eval_loss) && (!best || r.eval_loss < best->eval_loss)) {
      best = &r;
    }
  }
  return best;
}

struct Layout {
  Axis xs;
  const MetricsRow* best;
  std::vector<int64_t> resumes;
};

// The top panel from `top`; returns where it ends.
double loss_panel(SvgWriter& svg, const MetricsHistory& h, const Layout& l, double top) {
  const std::vector<Point> raw = points(h.rows(), &MetricsRow::loss, true);
  const std::vector<Point> eval = points(h.rows(), &MetricsRow::eval_loss, true);
  std::vector<LegendItem> items{{"train loss", kRawColor, "", 2},
                                {"train loss, smoothed", kSmoothColor, "", 2.5},
                                {"eval loss", kEvalColor, "", 2}};
  if (l.best) {
    items.push_back({"best checkpoint: step " + std::to_string(l.best->step) + ", eval " +
                         format_loss(l.best->eval_loss),
                     kBestColor, "5,4", 1.5});
  }
  for (int64_t r : l.resumes) {
    items.push_back({"resumed at step " + std::to_string(r), kResumeColor, "5,4", 1.5});
  }
  const double pw = kWidth - kLeft - kRight;
  const double legend_h = svg.legend(kLeft, top, pw, items);
  const Frame f{kLeft, top + legend_h + 8, pw, 330};
  const auto [d0, d1] = decades({&raw, &eval});
  const Axis ys{d0, d1, f.bottom(), f.y};

  svg.o << "<g class=\"panel\">\n";
  svg.log_axis(f, ys, /*right=*/false, "black", /*grid=*/true);
  svg.x_axis(f, l.xs, /*labels=*/false);
  svg.text(18, f.y + f.h / 2, "loss (log scale)",
           " transform=\"rotate(-90 18 " + num(f.y + f.h / 2) + ")\" text-anchor=\"middle\"");
  svg.polyline(thinned(raw), l.xs, ys, "train-raw", kRawColor, 1);
  svg.polyline(thinned(smoothed(raw)), l.xs, ys, "train-smoothed", kSmoothColor, 2.2);
  svg.polyline(thinned(eval), l.xs, ys, "eval", kEvalColor, 1.5);
  if (eval.size() <= 200 || eval.size() == 1) {
    svg.dots(eval, l.xs, ys, kEvalColor, 2.5);
  }
  for (int64_t r : l.resumes) svg.marker(f, l.xs, static_cast<double>(r), "resume", kResumeColor);
  if (l.best) {
    const double x = static_cast<double>(l.best->step);
    svg.marker(f, l.xs, x, "best", kBestColor);
    svg.o << "<circle class=\"best\" cx=\"" << num(l.xs(x)) << "\" cy=\""
          << num(ys(std::log10(l.best->eval_loss))) << "\" r=\"6\" fill=\"none\" stroke=\""
          << kBestColor << "\" stroke-width=\"2\"/>\n";
  }
  svg.frame(f, "frame-loss");
  svg.o << "</g>\n";
  return f.bottom();
}

// The bottom panel from `top`: learning rate (linear, left) and gradient norm (log, right).
double lr_panel(SvgWriter& svg, const MetricsHistory& h, const Layout& l, double top) {
  const std::vector<Point> lr = points(h.rows(), &MetricsRow::lr, false);
  const std::vector<Point> grad = points(h.rows(), &MetricsRow::grad_norm, true);
  const double pw = kWidth - kLeft - kRight;
  const double legend_h = svg.legend(kLeft, top, pw,
                                     {{"learning rate (left axis)", kLrColor, "", 2},
                                      {"gradient norm (right axis)", kGradColor, "", 2}});
  const Frame f{kLeft, top + legend_h + 8, pw, 140};
  double lr_max = 0;
  for (const Point& p : lr) lr_max = std::max(lr_max, p.y);
  if (!(lr_max > 0)) lr_max = 1e-3;
  const double lr_step = nice_step(lr_max, 4);
  const Axis lr_y{0, std::ceil(lr_max / lr_step) * lr_step, f.bottom(), f.y};
  const auto [g0, g1] = decades({&grad});
  const Axis grad_y{g0, g1, f.bottom(), f.y};

  svg.o << "<g class=\"panel\">\n";
  for (double t = 0; t <= lr_y.hi * (1 + 1e-9); t += lr_step) {
    svg.line(f.x, lr_y(t), f.right(), lr_y(t), "#e6e6e6");
    svg.line(f.x - 6, lr_y(t), f.x, lr_y(t), "black");
    svg.text(f.x - 9, lr_y(t) + 4, tick_label(t, "%.3g"),
             std::string(" text-anchor=\"end\" fill=\"") + kLrColor + "\"");
  }
  svg.log_axis(f, grad_y, /*right=*/true, kGradColor, /*grid=*/false);
  svg.x_axis(f, l.xs, /*labels=*/true);
  svg.polyline(thinned(grad), l.xs, grad_y, "grad-norm", kGradColor, 1, " stroke-opacity=\"0.8\"");
  svg.polyline(thinned(lr), l.xs, lr_y, "lr", kLrColor, 2);
  for (int64_t r : l.resumes) svg.marker(f, l.xs, static_cast<double>(r), "resume", kResumeColor);
  if (l.best) svg.marker(f, l.xs, static_cast<double>(l.best->step), "best", kBestColor);
  svg.frame(f, "frame-lr");
  svg.text(f.x + f.w / 2, f.bottom() + 40, "step", " text-anchor=\"middle\"");
  svg.o << "</g>\n";
  return f.bottom() + 40;
}

}  // namespace

std::string loss_curve_svg(const MetricsHistory& history, const std::string& title) {
  double x0 = 0, x1 = 1;
  if (!history.empty()) {
    x0 = x1 = static_cast<double>(history.rows().front().step);
    for (const MetricsRow& r : history.rows()) {
      x0 = std::min(x0, static_cast<double>(r.step));
      x1 = std::max(x1, static_cast<double>(r.step));
    }
  }
  if (x1 <= x0) x1 = x0 + 1;
  Layout l{{x0, x1, kLeft, kWidth - kRight}, best_row(history.rows()), history.resume_steps()};

  SvgWriter body;
  body.text(kWidth / 2, 24, title, " text-anchor=\"middle\" font-size=\"15\"");
  const double loss_bottom = loss_panel(body, history, l, 36);
  const double height = std::ceil(lr_panel(body, history, l, loss_bottom + 14) + 12);
  return svg_document(body.o.str(), kWidth, height);
}

void write_loss_svg(const std::string& path, const MetricsHistory& history,
                    const std::string& title) {
  write_file_atomic(path, loss_curve_svg(history, title));
}

}  // namespace kvc::train
