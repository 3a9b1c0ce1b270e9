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
  CHECK(text.rfind("step,loss,eval_loss,lr,grad_norm,elapsed\n", 0) == 0);
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
  test::write_text(dir / "bad.csv", "step,loss,eval_loss,lr,grad_norm,elapsed\n1,abc,,1,1,1\n");
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

// Attribute `name` of an SVG element as a string.
std::string attr(const std::string& element, const std::string& name) {
  const std::regex re(" " + name + "=\"([^\"]*)\"");
  std::smatch m;
  return std::regex_search(element, m, re) ? m[1].str() : std::string();
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

TEST_CASE("metrics: the SVG loss curve is standalone, log-scaled, with both series") {
  const MetricsHistory h = sample_history();
  const std::string svg = train::loss_curve_svg(h, "conv <distill> & co");
  CHECK(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0) == 0);
  std::string why;
  CHECK_MESSAGE(well_formed(svg, &why), why);
  CHECK(svg.find("conv &lt;distill&gt; &amp; co") != std::string::npos);
  CHECK(svg.find(">step<") != std::string::npos);
  CHECK(svg.find("loss (log scale)") != std::string::npos);
  CHECK(svg.find(">train loss<") != std::string::npos);
  CHECK(svg.find(">eval loss<") != std::string::npos);

  // Decade labels 1e-3 .. 1e-1 and where they sit (label y is tick y + 4).
  std::map<int, double> decade_y;
  const std::regex label_re("<text x=\"[0-9.]+\" y=\"([0-9.]+)\">1e(-?[0-9]+)</text>");
  for (std::sregex_iterator it(svg.begin(), svg.end(), label_re), end; it != end; ++it) {
    decade_y[std::stoi((*it)[2])] = std::stod((*it)[1]) - 4;
  }
  REQUIRE(decade_y.count(-1));
  REQUIRE(decade_y.count(-2));
  REQUIRE(decade_y.count(-3));
  // Log scale: the decades are equally spaced.
  CHECK(std::fabs((decade_y[-2] - decade_y[-1]) - (decade_y[-3] - decade_y[-2])) < 0.02);

  // One polyline per series; the train line runs from 1e-1 (first) to 1e-3
  // (last).
  const std::regex poly_re("<polyline[^>]*>");
  std::vector<std::string> polys;
  for (std::sregex_iterator it(svg.begin(), svg.end(), poly_re), end; it != end; ++it) {
    polys.push_back(it->str());
  }
  REQUIRE(polys.size() == 2);
  CHECK(attr(polys[0], "class") == "train");
  CHECK(attr(polys[1], "class") == "eval");
  std::vector<std::pair<double, double>> pts;
  std::istringstream ps(attr(polys[0], "points"));
  std::string p;
  while (ps >> p) {
    const size_t comma = p.find(',');
    pts.emplace_back(std::stod(p.substr(0, comma)), std::stod(p.substr(comma + 1)));
  }
  REQUIRE(pts.size() == 100);
  CHECK(std::fabs(pts.front().second - decade_y[-1]) < 0.02);
  CHECK(std::fabs(pts.back().second - decade_y[-3]) < 0.02);
  // Halfway in log space (step 50.5 would be 1e-2): step 50 is just above the
  // 1e-2 line.
  CHECK(pts[49].second < decade_y[-2]);
  CHECK(pts[50].second > decade_y[-2]);
  CHECK(pts.front().first < pts.back().first);
  // The eval series: 4 points, markers drawn.
  std::istringstream es(attr(polys[1], "points"));
  int n_eval = 0;
  while (es >> p) ++n_eval;
  CHECK(n_eval == 4);

  // An empty history still makes a valid picture.
  const std::string empty = train::loss_curve_svg(MetricsHistory{}, "empty");
  CHECK_MESSAGE(well_formed(empty, &why), why);
  CHECK(empty.rfind("<svg", 0) == 0);
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
