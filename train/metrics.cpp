// Metrics history, CSV read/write, and the SVG loss curve (no plotting library
// needed).
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

void MetricsHistory::truncate_after(int64_t step) {
  rows_.erase(std::remove_if(rows_.begin(), rows_.end(),
                             [&](const MetricsRow& r) { return r.step > step; }),
              rows_.end());
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

MetricsHistory MetricsHistory::from_columns(const std::vector<int64_t>& step,
                                            const std::vector<double>& loss,
                                            const std::vector<double>& eval_loss,
                                            const std::vector<double>& lr,
                                            const std::vector<double>& grad_norm,
                                            const std::vector<double>& elapsed) {
  const size_t n = step.size();
  KVC_CHECK(loss.size() == n && eval_loss.size() == n && lr.size() == n && grad_norm.size() == n &&
                elapsed.size() == n,
            "metrics: columns of different lengths (step ", n, ", loss ", loss.size(),
            ", eval_loss ", eval_loss.size(), ", lr ", lr.size(), ", grad_norm ", grad_norm.size(),
            ", elapsed ", elapsed.size(), ")");
  MetricsHistory h;
  h.rows_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    h.rows_.push_back({step[i], loss[i], eval_loss[i], lr[i], grad_norm[i], elapsed[i]});
  }
  return h;
}

// ---- CSV
// ------------------------------------------------------------------------------------

const char* metrics_csv_header() { return "step,loss,eval_loss,lr,grad_norm,elapsed"; }

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
  for (double v : {r.loss, r.eval_loss, r.lr, r.grad_norm, r.elapsed}) s += "," + fmt_double(v);
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
  KVC_CHECK(static_cast<bool>(std::getline(in, line)) && line == metrics_csv_header(),
            "metrics: ", path, " does not start with the header '", metrics_csv_header(), "'");
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
    KVC_CHECK(f.size() == 6, "metrics: ", path, " line ", line_no, " has ", f.size(),
              " fields, expected 6");
    MetricsRow r;
    const double step = parse_field(f[0], path, line_no);
    KVC_CHECK(std::isfinite(step), "metrics: ", path, " line ", line_no, ": empty step");
    r.step = static_cast<int64_t>(step);
    r.loss = parse_field(f[1], path, line_no);
    r.eval_loss = parse_field(f[2], path, line_no);
    r.lr = parse_field(f[3], path, line_no);
    r.grad_norm = parse_field(f[4], path, line_no);
    r.elapsed = parse_field(f[5], path, line_no);
    h.append(r);
  }
  return h;
}

// ---- SVG
// ------------------------------------------------------------------------------------

namespace {

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string num(double v, int precision = 2) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.*f", precision, v);
  return buf;
}

// A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about `target`
// ticks over span.
double nice_step(double span, int target) {
  if (span <= 0) return 1;
  const double raw = span / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  const double nice = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
  return std::max(1.0,
                  nice * mag);  // steps are integers: never tick between them
}

std::string tick_label(double v) {
  char buf[32];
  if (std::fabs(v) >= 1e6) {
    std::snprintf(buf, sizeof(buf), "%.3g", v);
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  }
  return buf;
}

struct Point {
  double x, y;
};

// Points with a finite positive y, reduced to at most `max_points` by averaging
// log(y) over equal-width runs: a browser draws 100k-point polylines slowly and
// the eye cannot tell.
std::vector<Point> series(const std::vector<MetricsRow>& rows, double MetricsRow::*field,
                          size_t max_points) {
  std::vector<Point> pts;
  for (const MetricsRow& r : rows) {
    const double y = r.*field;
    if (std::isfinite(y) && y > 0) pts.push_back({static_cast<double>(r.step), std::log10(y)});
  }
  if (pts.size() <= max_points) return pts;
  std::vector<Point> out;
  const double per = static_cast<double>(pts.size()) / static_cast<double>(max_points);
  for (size_t b = 0; b < max_points; ++b) {
    const size_t lo = static_cast<size_t>(b * per);
    const size_t hi = std::min(pts.size(), static_cast<size_t>((b + 1) * per));
    if (lo >= hi) continue;
    double sx = 0, sy = 0;
    for (size_t i = lo; i < hi; ++i) {
      sx += pts[i].x;
      sy += pts[i].y;
    }
    out.push_back({sx / (hi - lo), sy / (hi - lo)});
  }
  return out;
}

}  // namespace

std::string loss_curve_svg(const MetricsHistory& history, const std::string& title) {
  constexpr double kW = 760, kH = 460;
  constexpr double kLeft = 80, kRight = 24, kTop = 44, kBottom = 64;
  const double pw = kW - kLeft - kRight, ph = kH - kTop - kBottom;

  const std::vector<Point> train = series(history.rows(), &MetricsRow::loss, 2000);
  const std::vector<Point> eval = series(history.rows(), &MetricsRow::eval_loss, 2000);

  // Data range (log10 y). Empty histories still get a valid frame.
  double x0 = 0, x1 = 1, y0 = 0, y1 = 0;
  bool any = false;
  for (const auto* s : {&train, &eval}) {
    for (const Point& p : *s) {
      if (!any) {
        x0 = x1 = p.x;
        y0 = y1 = p.y;
        any = true;
      }
      x0 = std::min(x0, p.x);
      x1 = std::max(x1, p.x);
      y0 = std::min(y0, p.y);
      y1 = std::max(y1, p.y);
    }
  }
  if (!any) {
    y0 = -3;
    y1 = 0;
  }
  if (x1 <= x0) x1 = x0 + 1;
  // Whole decades on the y axis, at least one.
  double d0 = std::floor(y0), d1 = std::ceil(y1);
  if (d1 <= d0) d1 = d0 + 1;

  auto sx = [&](double x) { return kLeft + (x - x0) / (x1 - x0) * pw; };
  auto sy = [&](double ly) { return kTop + (d1 - ly) / (d1 - d0) * ph; };

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kW << "\" height=\"" << kH
    << "\" viewBox=\"0 0 " << kW << ' ' << kH
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect x=\"0\" y=\"0\" width=\"" << kW << "\" height=\"" << kH << "\" fill=\"white\"/>\n";
  o << "<text x=\"" << num(kW / 2) << "\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">"
    << xml_escape(title) << "</text>\n";

  // Y grid and ticks: every decade, thinned so at most ~10 labels show; minor
  // ticks at 2..9.
  const int decades = static_cast<int>(d1 - d0);
  const int every = std::max(1, (decades + 9) / 10);
  o << "<g stroke=\"#e6e6e6\" stroke-width=\"1\">\n";
  for (int k = 0; k <= decades; k += every) {
    const double y = sy(d0 + k);
    o << "<line x1=\"" << num(kLeft) << "\" y1=\"" << num(y) << "\" x2=\"" << num(kLeft + pw)
      << "\" y2=\"" << num(y) << "\"/>\n";
  }
  o << "</g>\n<g stroke=\"black\" stroke-width=\"1\">\n";
  for (int k = 0; k <= decades; ++k) {
    const double y = sy(d0 + k);
    o << "<line x1=\"" << num(kLeft - 6) << "\" y1=\"" << num(y) << "\" x2=\"" << num(kLeft)
      << "\" y2=\"" << num(y) << "\"/>\n";
    if (k < decades && decades <= 12) {
      for (int m = 2; m <= 9; ++m) {
        const double ym = sy(d0 + k + std::log10(static_cast<double>(m)));
        o << "<line x1=\"" << num(kLeft - 3) << "\" y1=\"" << num(ym) << "\" x2=\"" << num(kLeft)
          << "\" y2=\"" << num(ym) << "\"/>\n";
      }
    }
  }
  o << "</g>\n<g text-anchor=\"end\">\n";
  for (int k = 0; k <= decades; k += every) {
    o << "<text x=\"" << num(kLeft - 9) << "\" y=\"" << num(sy(d0 + k) + 4) << "\">1e"
      << static_cast<int>(d0 + k) << "</text>\n";
  }
  o << "</g>\n";

  // X ticks at nice integer steps.
  const double xs = nice_step(x1 - x0, 8);
  o << "<g text-anchor=\"middle\">\n";
  for (double t = std::ceil(x0 / xs) * xs; t <= x1 + 1e-9; t += xs) {
    const double x = sx(t);
    o << "<line x1=\"" << num(x) << "\" y1=\"" << num(kTop + ph) << "\" x2=\"" << num(x)
      << "\" y2=\"" << num(kTop + ph + 6) << "\" stroke=\"black\"/>\n";
    o << "<text x=\"" << num(x) << "\" y=\"" << num(kTop + ph + 20) << "\">" << tick_label(t)
      << "</text>\n";
  }
  o << "</g>\n";

  // Frame (axes) and axis labels.
  o << "<rect x=\"" << num(kLeft) << "\" y=\"" << num(kTop) << "\" width=\"" << num(pw)
    << "\" height=\"" << num(ph) << "\" fill=\"none\" stroke=\"black\"/>\n";
  o << "<text x=\"" << num(kLeft + pw / 2) << "\" y=\"" << num(kH - 18)
    << "\" text-anchor=\"middle\">step</text>\n";
  o << "<text transform=\"translate(18," << num(kTop + ph / 2)
    << ") rotate(-90)\" text-anchor=\"middle\">loss (log scale)</text>\n";

  // The series. A lone point still shows as a marker.
  auto polyline = [&](const std::vector<Point>& pts, const char* color, const char* cls,
                      bool markers) {
    o << "<polyline class=\"" << cls << "\" fill=\"none\" stroke=\"" << color
      << "\" stroke-width=\"1.5\" points=\"";
    for (size_t i = 0; i < pts.size(); ++i) {
      o << (i ? " " : "") << num(sx(pts[i].x)) << ',' << num(sy(pts[i].y));
    }
    o << "\"/>\n";
    if (markers || pts.size() == 1) {
      for (const Point& p : pts) {
        o << "<circle cx=\"" << num(sx(p.x)) << "\" cy=\"" << num(sy(p.y)) << "\" r=\"2.5\" fill=\""
          << color << "\"/>\n";
      }
    }
  };
  polyline(train, "#1f77b4", "train", false);
  polyline(eval, "#ff7f0e", "eval", eval.size() <= 200);

  // Legend, top right inside the plot.
  const double lx = kLeft + pw - 130, ly = kTop + 10;
  o << "<rect x=\"" << num(lx) << "\" y=\"" << num(ly) << "\" width=\"120\" height=\"44\" "
    << "fill=\"white\" stroke=\"#999999\"/>\n";
  o << "<line x1=\"" << num(lx + 8) << "\" y1=\"" << num(ly + 14) << "\" x2=\"" << num(lx + 32)
    << "\" y2=\"" << num(ly + 14) << "\" stroke=\"#1f77b4\" stroke-width=\"2\"/>\n";
  o << "<text x=\"" << num(lx + 38) << "\" y=\"" << num(ly + 18) << "\">train loss</text>\n";
  o << "<line x1=\"" << num(lx + 8) << "\" y1=\"" << num(ly + 32) << "\" x2=\"" << num(lx + 32)
    << "\" y2=\"" << num(ly + 32) << "\" stroke=\"#ff7f0e\" stroke-width=\"2\"/>\n";
  o << "<text x=\"" << num(lx + 38) << "\" y=\"" << num(ly + 36) << "\">eval loss</text>\n";
  o << "</svg>\n";
  return o.str();
}

void write_loss_svg(const std::string& path, const MetricsHistory& history,
                    const std::string& title) {
  write_file_atomic(path, loss_curve_svg(history, title));
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
