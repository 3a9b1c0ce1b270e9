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

namespace kvc::train {

namespace {

constexpr double kWidth = 960;
constexpr double kLeft = 84, kRight = 84;  // room for the y labels on both sides
constexpr double kCharWidth = 7.0;         // a generous average for 12 px sans-serif
constexpr size_t kMaxPoints = 2000;        // a browser draws 100k-point polylines slowly

const char* const kRawColor = "#9ecae1";
const char* const kSmoothColor = "#1f77b4";
const char* const kEvalColor = "#ff7f0e";
const char* const kBestColor = "#2ca02c";
const char* const kResumeColor = "#7f7f7f";
const char* const kLrColor = "#d62728";
const char* const kGradColor = "#9467bd";

struct Point {
  double x, y;
};

struct Frame {
  double x, y, w, h;
  double bottom() const { return y + h; }
  double right() const { return x + w; }
};

// Maps data to pixels: x by step (shared), y linear over [y0, y1] (log10 values for log axes).
struct Axis {
  double lo, hi;
  double px_lo, px_hi;  // pixel positions of lo and hi
  double operator()(double v) const { return px_lo + (v - lo) / (hi - lo) * (px_hi - px_lo); }
};

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '&') {
      out += "&amp;";
    } else if (c == '<') {
      out += "&lt;";
    } else if (c == '>') {
      out += "&gt;";
    } else if (c == '"') {
      out += "&quot;";
    } else {
      out += c;
    }
  }
  return out;
}

std::string num(double v) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.2f", v);
  return buf;
}

std::string tick_label(double v, const char* fmt) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

// A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about `target` ticks over span.
double nice_step(double span, int target) {
  if (span <= 0) return 1;
  const double raw = span / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

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

// At most kMaxPoints, averaging equal-width runs: the eye cannot tell the difference.
std::vector<Point> thinned(const std::vector<Point>& pts) {
  if (pts.size() <= kMaxPoints) return pts;
  std::vector<Point> out;
  const double per = static_cast<double>(pts.size()) / static_cast<double>(kMaxPoints);
  for (size_t b = 0; b < kMaxPoints; ++b) {
    const size_t lo = static_cast<size_t>(static_cast<double>(b) * per);
    const size_t hi = std::min(pts.size(), static_cast<size_t>(static_cast<double>(b + 1) * per));
    if (lo >= hi) continue;
    double sx = 0, sy = 0;
    for (size_t i = lo; i < hi; ++i) {
      sx += pts[i].x;
      sy += pts[i].y;
    }
    out.push_back({sx / static_cast<double>(hi - lo), sy / static_cast<double>(hi - lo)});
  }
  return out;
}

// Whole decades [floor, ceil] around the log10 values of the series, at least one.
std::pair<double, double> decades(const std::vector<const std::vector<Point>*>& series) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto* s : series) {
    for (const Point& p : *s) {
      lo = std::min(lo, p.y);
      hi = std::max(hi, p.y);
    }
  }
  if (!(lo <= hi)) return {-3, 0};
  double d0 = std::floor(lo), d1 = std::ceil(hi);
  if (d1 <= d0) d1 = d0 + 1;
  return {d0, d1};
}

struct LegendItem {
  std::string label;
  std::string color;
  std::string dash;  // stroke-dasharray, "" for solid
  double width = 2;
};

class SvgWriter {
 public:
  std::ostringstream o;

  void line(double x1, double y1, double x2, double y2, const std::string& stroke,
            const std::string& extra = "") {
    o << "<line x1=\"" << num(x1) << "\" y1=\"" << num(y1) << "\" x2=\"" << num(x2) << "\" y2=\""
      << num(y2) << "\" stroke=\"" << stroke << "\"" << extra << "/>\n";
  }
  void text(double x, double y, const std::string& s, const std::string& extra = "") {
    o << "<text x=\"" << num(x) << "\" y=\"" << num(y) << "\"" << extra << ">" << xml_escape(s)
      << "</text>\n";
  }
  void polyline(const std::vector<Point>& pts, const Axis& xs, const Axis& ys, const char* cls,
                const char* color, double width, const std::string& extra = "") {
    o << "<polyline class=\"" << cls << "\" fill=\"none\" stroke=\"" << color
      << "\" stroke-width=\"" << width << "\" stroke-linejoin=\"round\"" << extra << " points=\"";
    for (size_t i = 0; i < pts.size(); ++i) {
      o << (i ? " " : "") << num(xs(pts[i].x)) << ',' << num(ys(pts[i].y));
    }
    o << "\"/>\n";
  }
  void frame(const Frame& f, const char* cls) {
    o << "<rect class=\"" << cls << "\" x=\"" << num(f.x) << "\" y=\"" << num(f.y) << "\" width=\""
      << num(f.w) << "\" height=\"" << num(f.h) << "\" fill=\"none\" stroke=\"black\"/>\n";
  }

  // Legend items left to right from (x, y), wrapping at `width`; returns the height used.
  double legend(double x, double y, double width, const std::vector<LegendItem>& items) {
    constexpr double kRow = 18, kSymbol = 26, kGap = 18;
    double cx = x, cy = y + kRow / 2;
    o << "<g class=\"legend\">\n";
    for (const LegendItem& it : items) {
      const double w = kSymbol + 6 + kCharWidth * static_cast<double>(it.label.size());
      if (cx > x && cx + w > x + width) {
        cx = x;
        cy += kRow;
      }
      const std::string dash = it.dash.empty() ? "" : " stroke-dasharray=\"" + it.dash + "\"";
      line(cx, cy, cx + kSymbol, cy, it.color, " stroke-width=\"" + num(it.width) + "\"" + dash);
      text(cx + kSymbol + 6, cy + 4, it.label);
      cx += w + kGap;
    }
    o << "</g>\n";
    return cy + kRow / 2 - y;
  }

  // Decade ticks and labels ("1e-3") of a log axis on the left or right side of `f`, with faint
  // grid lines when `grid`.
  void log_axis(const Frame& f, const Axis& ys, bool right, const std::string& color, bool grid) {
    const int decades = static_cast<int>(std::lround(ys.hi - ys.lo));
    const int every = std::max(1, (decades + 7) / 8);
    const double edge = right ? f.right() : f.x, out = right ? 1 : -1;
    for (int k = 0; k <= decades; ++k) {
      const double y = ys(ys.lo + k);
      if (grid && k % every == 0) line(f.x, y, f.right(), y, "#e6e6e6");
      line(edge, y, edge + 6 * out, y, "black");
      if (k % every == 0) {
        text(edge + 9 * out, y + 4, "1e" + std::to_string(static_cast<int>(ys.lo) + k),
             std::string(" text-anchor=\"") + (right ? "start" : "end") + "\" fill=\"" + color +
                 "\"");
      }
      for (int m = 2; k < decades && decades <= 8 && m <= 9; ++m) {
        const double ym = ys(ys.lo + k + std::log10(static_cast<double>(m)));
        line(edge, ym, edge + 3 * out, ym, "black");
      }
    }
  }

  // Step ticks under (or, with no labels, inside the bottom of) `f`, with faint grid lines.
  void x_axis(const Frame& f, const Axis& xs, bool labels) {
    const double step = std::max(1.0, nice_step(xs.hi - xs.lo, 8));
    for (double t = std::ceil(xs.lo / step) * step; t <= xs.hi + 1e-9; t += step) {
      const double x = xs(t);
      line(x, f.y, x, f.bottom(), "#f0f0f0");
      line(x, f.bottom(), x, f.bottom() + 6, "black", " class=\"xtick\"");
      if (labels) {
        text(x, f.bottom() + 20, tick_label(t, std::fabs(t) >= 1e6 ? "%.3g" : "%.0f"),
             " class=\"xtick-label\" text-anchor=\"middle\"");
      }
    }
  }

  // A vertical marker line through `f` at step x.
  void marker(const Frame& f, const Axis& xs, double x, const char* cls, const char* color) {
    line(xs(x), f.y, xs(x), f.bottom(), color,
         std::string(" class=\"") + cls + "\" stroke-width=\"1.5\" stroke-dasharray=\"5,4\"");
  }
};

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
    for (const Point& p : eval) {
      svg.o << "<circle cx=\"" << num(l.xs(p.x)) << "\" cy=\"" << num(ys(p.y))
            << "\" r=\"2.5\" fill=\"" << kEvalColor << "\"/>\n";
    }
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
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << height
    << "\" viewBox=\"0 0 " << kWidth << ' ' << height
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect x=\"0\" y=\"0\" width=\"" << kWidth << "\" height=\"" << height
    << "\" fill=\"white\"/>\n";
  o << body.o.str() << "</svg>\n";
  return o.str();
}

void write_loss_svg(const std::string& path, const MetricsHistory& history,
                    const std::string& title) {
  write_file_atomic(path, loss_curve_svg(history, title));
}

}  // namespace kvc::train
