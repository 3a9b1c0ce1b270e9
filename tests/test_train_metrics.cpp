// Tests of train/metrics (CSV, SVG loss curve), train/progress and
// train/signals.
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <limits>
#include <map>
#include <memory>
#include <regex>
#include <sstream>

#include "test_train_util.h"
#include "test_util.h"
#include "train/loss_plot.h"
#include "train/metrics.h"
#include "train/progress.h"
#include "train/signals.h"

namespace kvc {
namespace {

using train::MetricsHistory;
using train::MetricsRow;

MetricsHistory sample_history() {
  MetricsHistory h;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int s = 1; s <= 100; ++s) {
    // Exactly 1e-1 at step 1 down to 1e-3 at step 100 (log-linear).
    const double loss = std::pow(10.0, -1.0 - 2.0 * (s - 1) / 99.0);
    const double eval = s % 25 == 0 ? loss * 1.5 : nan;
    h.append({s, loss, eval, 1e-3 * s / 100.0, 0.5, 0.01 * s});
  }
  return h;
}

TEST_CASE("metrics: CSV has the header and parses back to the same values") {
  test::TempDir dir("metrics_csv");
  const MetricsHistory h = sample_history();
  train::write_metrics_csv(dir / "metrics.csv", h);
  const std::string text = test::read_text(dir / "metrics.csv");
  CHECK(text.rfind("step,loss,eval_loss,lr,grad_norm,elapsed_s,recall_at_k\n", 0) == 0);
  CHECK(test::count_lines(text) == 101);
  // Row 2 by hand: step 2, no eval loss (an empty field).
  std::istringstream in(text);
  std::string line;
  std::getline(in, line);
  std::getline(in, line);
  std::getline(in, line);
  CHECK(line.rfind("2,", 0) == 0);
  CHECK(line.find(",,") != std::string::npos);

  const MetricsHistory r = train::read_metrics_csv(dir / "metrics.csv");
  REQUIRE(r.size() == h.size());
  for (size_t i = 0; i < h.size(); ++i) {
    const MetricsRow& a = h.rows()[i];
    const MetricsRow& b = r.rows()[i];
    CHECK(a.step == b.step);
    CHECK(std::fabs(a.loss - b.loss) <= 1e-8 * a.loss);  // 9 significant digits
    CHECK(std::isnan(a.eval_loss) == std::isnan(b.eval_loss));
    if (!std::isnan(a.eval_loss)) CHECK(std::fabs(a.eval_loss - b.eval_loss) <= 1e-8 * a.eval_loss);
    CHECK(std::fabs(a.lr - b.lr) <= 1e-8 * a.lr);
  }
  test::write_text(dir / "bad.csv", "step,loss,eval_loss,lr,grad_norm,elapsed_s\n1,abc,,1,1,1\n");
  CHECK_THROWS_WITH_AS(train::read_metrics_csv(dir / "bad.csv"), doctest::Contains("line 2"),
                       Error);
}

TEST_CASE("metrics: truncate_after and set_eval_loss") {
  MetricsHistory h = sample_history();
  h.truncate_after(40);
  CHECK(h.size() == 40);
  CHECK(h.rows().back().step == 40);
  h.set_eval_loss(40, 0.75);
  CHECK(h.rows().back().eval_loss == 0.75);
  CHECK(h.size() == 40);
}

// Attribute `name` of an SVG element as a string. (Plain string search: libstdc++'s std::regex
// recurses once per character and overflows the stack on a long `points` list under ASan.)
std::string attr(const std::string& element, const std::string& name) {
  const std::string key = " " + name + "=\"";
  const size_t at = element.find(key);
  if (at == std::string::npos) return std::string();
  const size_t from = at + key.size();
  return element.substr(from, element.find('"', from) - from);
}

// A small XML well-formedness check: tags balance and nest, attributes are
// quoted.
bool well_formed(const std::string& s, std::string* why) {
  std::vector<std::string> stack;
  size_t i = 0;
  while ((i = s.find('<', i)) != std::string::npos) {
    const size_t j = s.find('>', i);
    if (j == std::string::npos) return *why = "unterminated tag", false;
    const std::string tag = s.substr(i + 1, j - i - 1);
    i = j + 1;
    if (tag.empty()) return *why = "empty tag", false;
    if (tag[0] == '?' || tag[0] == '!') continue;
    if (tag[0] == '/') {
      if (stack.empty() || stack.back() != tag.substr(1))
        return *why = "mismatched </" + tag, false;
      stack.pop_back();
      continue;
    }
    const std::string name = tag.substr(0, tag.find_first_of(" \n/"));
    if (std::count(tag.begin(), tag.end(), '"') % 2 != 0)
      return *why = "odd quotes in " + name, false;
    if (tag.back() != '/') stack.push_back(name);
  }
  if (!stack.empty()) return *why = "unclosed <" + stack.back(), false;
  return true;
}

// The elements of `svg` that match `pattern` (a regex over one element).
std::vector<std::string> elements(const std::string& svg, const std::string& pattern) {
  std::vector<std::string> out;
  const std::regex re(pattern);
  for (std::sregex_iterator it(svg.begin(), svg.end(), re), end; it != end; ++it) {
    out.push_back(it->str());
  }
  return out;
}

std::vector<std::pair<double, double>> polyline_points(const std::string& element) {
  std::vector<std::pair<double, double>> pts;
  std::istringstream ps(attr(element, "points"));
  std::string p;
  while (ps >> p) {
    const size_t comma = p.find(',');
    pts.emplace_back(std::stod(p.substr(0, comma)), std::stod(p.substr(comma + 1)));
  }
  return pts;
}

// The polyline of class `cls` (exactly one; found without std::regex, see attr()).
std::string series_of(const std::string& svg, const std::string& cls) {
  const std::string head = "<polyline class=\"" + cls + "\"";
  const size_t at = svg.find(head);
  REQUIRE(at != std::string::npos);
  CHECK(svg.find(head, at + 1) == std::string::npos);
  return svg.substr(at, svg.find('>', at) + 1 - at);
}

struct Box {
  double x, y, w, h;
};
Box frame_of(const std::string& svg, const std::string& cls) {
  const std::vector<std::string> found = elements(svg, "<rect class=\"" + cls + "\"[^>]*>");
  REQUIRE(found.size() == 1);
  return {std::stod(attr(found[0], "x")), std::stod(attr(found[0], "y")),
          std::stod(attr(found[0], "width")), std::stod(attr(found[0], "height"))};
}

TEST_CASE("metrics: loss.svg has a loss panel and an LR/grad-norm panel, markers and legends") {
  MetricsHistory h = sample_history();
  h.set_eval_loss(100, 1.0);  // a late spike: the best evaluation is step 75's
  h.mark_resume(50);
  const std::string svg = train::loss_curve_svg(h, "conv <distill> & co");
  CHECK(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0) == 0);
  std::string why;
  CHECK_MESSAGE(well_formed(svg, &why), why);
  CHECK(svg.find("conv &lt;distill&gt; &amp; co") != std::string::npos);
  for (const char* label :
       {">step<", "loss (log scale)", ">train loss<", ">train loss, smoothed<", ">eval loss<",
        ">learning rate (left axis)<", ">gradient norm (right axis)<", ">resumed at step 50<",
        ">best checkpoint: step 75, eval "}) {
    CHECK_MESSAGE(svg.find(label) != std::string::npos, label);
  }

  // Two panels, the loss one on top.
  const Box loss = frame_of(svg, "frame-loss"), lr = frame_of(svg, "frame-lr");
  CHECK(loss.y + loss.h < lr.y);
  CHECK(loss.x == lr.x);
  CHECK(loss.w == lr.w);

  // Every series lies inside its own panel.
  auto inside = [](const std::vector<std::pair<double, double>>& pts, const Box& b) {
    for (const auto& [x, y] : pts) {
      if (x < b.x - 0.01 || x > b.x + b.w + 0.01 || y < b.y - 0.01 || y > b.y + b.h + 0.01) {
        return false;
      }
    }
    return !pts.empty();
  };
  for (const char* cls : {"train-raw", "train-smoothed", "eval"}) {
    CHECK_MESSAGE(inside(polyline_points(series_of(svg, cls)), loss), cls);
  }
  for (const char* cls : {"lr", "grad-norm"}) {
    CHECK_MESSAGE(inside(polyline_points(series_of(svg, cls)), lr), cls);
  }

  // The step axis as labelled: two tick labels give pixels per step; markers sit at their step.
  std::map<double, double> tick_x;  // step -> x
  for (const std::string& t :
       elements(svg, "<text x=\"[0-9.]+\" y=\"[0-9.]+\" class=\"xtick-label\"[^>]*>[0-9]+<")) {
    tick_x[std::stod(t.substr(t.rfind('>') + 1))] = std::stod(attr(t, "x"));
  }
  REQUIRE(tick_x.size() >= 2);
  const auto [s0, px0] = *tick_x.begin();
  const auto [s1, px1] = *tick_x.rbegin();
  auto x_of = [&, s0 = s0, px0 = px0, s1 = s1, px1 = px1](double step) {
    return px0 + (step - s0) * (px1 - px0) / (s1 - s0);
  };
  const std::vector<std::string> best = elements(svg, "<line[^>]* class=\"best\"[^>]*>");
  REQUIRE(best.size() == 2);  // one per panel
  for (const std::string& b : best)
    CHECK(std::stod(attr(b, "x1")) == doctest::Approx(x_of(75)).epsilon(1e-3));
  const std::vector<std::string> resume = elements(svg, "<line[^>]* class=\"resume\"[^>]*>");
  REQUIRE(resume.size() == 2);
  for (const std::string& r : resume)
    CHECK(std::stod(attr(r, "x1")) == doctest::Approx(x_of(50)).epsilon(1e-3));

  // The best ring sits on step 75's eval loss: between the decades that bracket it.
  std::map<int, double> decade_y;
  for (const std::string& t : elements(
           svg,
           "<text x=\"[0-9.]+\" y=\"[0-9.]+\" text-anchor=\"end\" fill=\"black\">1e-?[0-9]+<")) {
    decade_y[std::stoi(t.substr(t.rfind(">1e") + 3))] = std::stod(attr(t, "y")) - 4;
  }
  REQUIRE(decade_y.count(-2));
  REQUIRE(decade_y.count(-3));
  const double eval75 = h.rows()[74].eval_loss;
  const double expect_y = decade_y[-3] + (std::log10(eval75) + 3) * (decade_y[-2] - decade_y[-3]);
  const std::vector<std::string> ring = elements(svg, "<circle class=\"best\"[^>]*>");
  REQUIRE(ring.size() == 1);
  CHECK(std::stod(attr(ring[0], "cy")) == doctest::Approx(expect_y).epsilon(1e-3));
  CHECK(std::stod(attr(ring[0], "cx")) == doctest::Approx(x_of(75)).epsilon(1e-3));

  // The legends sit above their frames, never over data.
  const std::vector<std::string> legends = elements(svg, "<g class=\"legend\">[\\s\\S]*?</g>");
  REQUIRE(legends.size() == 2);
  for (const std::string& y : elements(legends[0], " y[12]?=\"[0-9.]+\"")) {
    CHECK(std::stod(y.substr(y.find('"') + 1)) < loss.y);
  }
  for (const std::string& y : elements(legends[1], " y[12]?=\"[0-9.]+\"")) {
    const double v = std::stod(y.substr(y.find('"') + 1));
    CHECK(v > loss.y + loss.h);
    CHECK(v < lr.y);
  }

  // An empty history still makes a valid picture.
  const std::string empty = train::loss_curve_svg(MetricsHistory{}, "empty");
  CHECK_MESSAGE(well_formed(empty, &why), why);
  CHECK(empty.rfind("<svg", 0) == 0);
}

TEST_CASE("metrics: the smoothed train curve follows the trend of the raw one, without lag") {
  MetricsHistory h;
  constexpr int kSteps = 400;
  for (int s = 1; s <= kSteps; ++s) {
    // A falling loss with a factor-2 zigzag on top: in log10 a straight line plus +-log10(2).
    h.append({s, 0.1 * std::exp(-s / 200.0) * (s % 2 ? 2.0 : 0.5), NAN, 1e-3, 1.0, 0.0});
  }
  const std::string svg = train::loss_curve_svg(h, "noisy");
  const auto raw = polyline_points(series_of(svg, "train-raw"));
  const auto smooth = polyline_points(series_of(svg, "train-smoothed"));
  REQUIRE(raw.size() == kSteps);
  REQUIRE(smooth.size() == kSteps);
  // Pixels of a loss value, from the decade labels of the loss axis.
  std::map<int, double> decade_y;
  for (const std::string& t : elements(
           svg,
           "<text x=\"[0-9.]+\" y=\"[0-9.]+\" text-anchor=\"end\" fill=\"black\">1e-?[0-9]+<")) {
    decade_y[std::stoi(t.substr(t.rfind(">1e") + 3))] = std::stod(attr(t, "y")) - 4;
  }
  REQUIRE(decade_y.size() >= 2);
  const auto [d0, y0] = *decade_y.begin();
  const auto [d1, y1] = *std::next(decade_y.begin());
  auto y_of_log10 = [&, d0 = d0, y0 = y0, d1 = d1, y1 = y1](double l) {
    return y0 + (l - d0) * (y1 - y0) / (d1 - d0);
  };
  // The curve is the trend line itself: a centred window does not lag, and over 2 * half + 1
  // points the zigzag leaves log10(2) / (2 * half + 1); the window narrows near the ends.
  for (int s = 2; s <= kSteps - 1; ++s) {
    const double trend = std::log10(0.1 * std::exp(-s / 200.0));
    const double half = std::min({4, s - 1, kSteps - s});  // the window's half-width (k = 4)
    const double residue = std::log10(2.0) / (2 * half + 1);
    INFO("step ", s);
    CHECK(std::fabs(smooth[s - 1].second - y_of_log10(trend)) <=
          std::fabs(y_of_log10(residue) - y_of_log10(0)) + 0.02);
  }
  double raw_var = 0, smooth_var = 0;
  for (size_t i = 1; i < raw.size(); ++i) {
    raw_var += std::fabs(raw[i].second - raw[i - 1].second);
    smooth_var += std::fabs(smooth[i].second - smooth[i - 1].second);
  }
  CHECK(smooth_var < raw_var / 5);
}

TEST_CASE("progress: durations format as a person reads them") {
  CHECK(train::format_duration(0) == "0s");
  CHECK(train::format_duration(42.4) == "42s");
  CHECK(train::format_duration(187) == "3m07s");
  CHECK(train::format_duration(7500) == "2h05m");
  CHECK(train::format_duration(NAN) == "?");
}

TEST_CASE("progress: item progress logs the count, the percentage and an ETA, and not when done") {
  std::ostringstream log;
  const std::shared_ptr<spdlog::logger> before = spdlog::default_logger();
  auto logger = std::make_shared<spdlog::logger>(
      "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  logger->set_pattern("%v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::info);
  train::ItemProgress progress("gen-data: sequences written", 10, /*interval_s=*/0.0);
  progress.update(3);
  const std::string first = log.str();
  progress.update(10);  // the caller's own final line says it is done
  const std::string after = log.str();
  spdlog::set_default_logger(before);
  CHECK(first.find("gen-data: sequences written: 3/10 (30%)") != std::string::npos);
  CHECK(first.find("ETA") != std::string::npos);
  CHECK(after == first);
}

TEST_CASE("signals: SIGINT and SIGTERM set the flag instead of ending the process") {
  train::clear_interrupt();
  train::install_interrupt_handlers();
  CHECK_FALSE(train::interrupt_requested());
  std::raise(SIGINT);
  CHECK(train::interrupt_requested());
  CHECK(train::interrupt_signal() == SIGINT);
  train::clear_interrupt();
  std::raise(SIGTERM);
  CHECK(train::interrupt_signal() == SIGTERM);
  train::clear_interrupt();
  train::restore_default_handlers();
  CHECK_FALSE(train::interrupt_requested());
}

}  // namespace
}  // namespace kvc
