// The pieces the SVG pictures (loss.svg, compare.svg) are drawn with, without a plotting library:
// pixel frames and axes, decade and step ticks, legends, polylines, thinning of long series.
#pragma once

#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace kvc::train::plot {

constexpr double kWidth = 960;
constexpr double kLeft = 84, kRight = 84;  // room for the y labels on both sides
constexpr double kCharWidth = 7.0;         // a generous average for 12 px sans-serif

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

struct LegendItem {
  std::string label;
  std::string color;
  std::string dash;  // stroke-dasharray, "" for solid
  double width = 2;
};

std::string num(double v);  // "%.2f", the precision of every coordinate
std::string tick_label(double v, const char* fmt);
// A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about `target` ticks over span.
double nice_step(double span, int target);
// At most 2000 points, averaging equal-width runs: the eye cannot tell the difference, and a
// browser draws 100k-point polylines slowly.
std::vector<Point> thinned(const std::vector<Point>& pts);
// Whole decades [floor, ceil] around the (log10) y values of the series, at least one.
std::pair<double, double> decades(const std::vector<const std::vector<Point>*>& series);
// The step range of the series' x values, at least one step wide ({0, 1} when there are none).
Axis step_axis(const std::vector<const std::vector<Point>*>& series);
// A whole picture: the svg element `width` x `height` on a white background around `body`.
std::string svg_document(const std::string& body, double width, double height);

class SvgWriter {
 public:
  std::ostringstream o;

  void line(double x1, double y1, double x2, double y2, const std::string& stroke,
            const std::string& extra = "");
  void text(double x, double y, const std::string& s, const std::string& extra = "");
  void polyline(const std::vector<Point>& pts, const Axis& xs, const Axis& ys, const char* cls,
                const char* color, double width, const std::string& extra = "");
  void frame(const Frame& f, const char* cls);
  // Legend items left to right from (x, y), wrapping at `width`; returns the height used.
  double legend(double x, double y, double width, const std::vector<LegendItem>& items);
  // Decade ticks and labels ("1e-3") of a log axis on the left or right side of `f`, with faint
  // grid lines when `grid`.
  void log_axis(const Frame& f, const Axis& ys, bool right, const std::string& color, bool grid);
  // Step ticks under (or, with no labels, inside the bottom of) `f`, with faint grid lines.
  void x_axis(const Frame& f, const Axis& xs, bool labels);
  // A vertical marker line through `f` at step x.
  void marker(const Frame& f, const Axis& xs, double x, const char* cls, const char* color);
  // Dots of radius r at the points.
  void dots(const std::vector<Point>& pts, const Axis& xs, const Axis& ys, const char* color,
            double r);
};

}  // namespace kvc::train::plot
