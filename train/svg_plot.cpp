// SVG drawing pieces shared by loss.svg and compare.svg.
#include "train/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace kvc::train::plot {

namespace {

constexpr size_t kMaxPoints = 2000;

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

}  // namespace

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

double nice_step(double span, int target) {
  if (span <= 0) return 1;
  const double raw = span / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

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

Axis step_axis(const std::vector<const std::vector<Point>*>& series) {
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0;
  for (const auto* s : series) {
    for (const Point& p : *s) {
      x0 = std::min(x0, p.x);
      x1 = std::max(x1, p.x);
    }
  }
  if (!(x0 <= x1)) x0 = 0, x1 = 1;
  if (x1 <= x0) x1 = x0 + 1;
  return {x0, x1, kLeft, kWidth - kRight};
}

std::string svg_document(const std::string& body, double width, double height) {
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" viewBox=\"0 0 " << width << ' ' << height
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect x=\"0\" y=\"0\" width=\"" << width << "\" height=\"" << height
    << "\" fill=\"white\"/>\n";
  o << body << "</svg>\n";
  return o.str();
}

void SvgWriter::line(double x1, double y1, double x2, double y2, const std::string& stroke,
                     const std::string& extra) {
  o << "<line x1=\"" << num(x1) << "\" y1=\"" << num(y1) << "\" x2=\"" << num(x2) << "\" y2=\""
    << num(y2) << "\" stroke=\"" << stroke << "\"" << extra << "/>\n";
}

void SvgWriter::text(double x, double y, const std::string& s, const std::string& extra) {
  o << "<text x=\"" << num(x) << "\" y=\"" << num(y) << "\"" << extra << ">" << xml_escape(s)
    << "</text>\n";
}

void SvgWriter::polyline(const std::vector<Point>& pts, const Axis& xs, const Axis& ys,
                         const char* cls, const char* color, double width,
                         const std::string& extra) {
  o << "<polyline class=\"" << cls << "\" fill=\"none\" stroke=\"" << color << "\" stroke-width=\""
    << width << "\" stroke-linejoin=\"round\"" << extra << " points=\"";
  for (size_t i = 0; i < pts.size(); ++i) {
    o << (i ? " " : "") << num(xs(pts[i].x)) << ',' << num(ys(pts[i].y));
  }
  o << "\"/>\n";
}

void SvgWriter::frame(const Frame& f, const char* cls) {
  o << "<rect class=\"" << cls << "\" x=\"" << num(f.x) << "\" y=\"" << num(f.y) << "\" width=\""
    << num(f.w) << "\" height=\"" << num(f.h) << "\" fill=\"none\" stroke=\"black\"/>\n";
}

double SvgWriter::legend(double x, double y, double width, const std::vector<LegendItem>& items) {
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

void SvgWriter::log_axis(const Frame& f, const Axis& ys, bool right, const std::string& color,
                         bool grid) {
  const int decades = static_cast<int>(std::lround(ys.hi - ys.lo));
  const int every = std::max(1, (decades + 7) / 8);
  const double edge = right ? f.right() : f.x, out = right ? 1 : -1;
  for (int k = 0; k <= decades; ++k) {
    const double y = ys(ys.lo + k);
    if (grid && k % every == 0) line(f.x, y, f.right(), y, "#e6e6e6");
    line(edge, y, edge + 6 * out, y, "black");
    if (k % every == 0) {
      text(
          edge + 9 * out, y + 4, "1e" + std::to_string(static_cast<int>(ys.lo) + k),
          std::string(" text-anchor=\"") + (right ? "start" : "end") + "\" fill=\"" + color + "\"");
    }
    for (int m = 2; k < decades && decades <= 8 && m <= 9; ++m) {
      const double ym = ys(ys.lo + k + std::log10(static_cast<double>(m)));
      line(edge, ym, edge + 3 * out, ym, "black");
    }
  }
}

void SvgWriter::x_axis(const Frame& f, const Axis& xs, bool labels) {
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

void SvgWriter::marker(const Frame& f, const Axis& xs, double x, const char* cls,
                       const char* color) {
  line(xs(x), f.y, xs(x), f.bottom(), color,
       std::string(" class=\"") + cls + "\" stroke-width=\"1.5\" stroke-dasharray=\"5,4\"");
}

void SvgWriter::dots(const std::vector<Point>& pts, const Axis& xs, const Axis& ys,
                     const char* color, double r) {
  for (const Point& p : pts) {
    o << "<circle cx=\"" << num(xs(p.x)) << "\" cy=\"" << num(ys(p.y)) << "\" r=\"" << r
      << "\" fill=\"" << color << "\"/>\n";
  }
}

}  // namespace kvc::train::plot
