// Small things a user of the command line meets: flags that do not apply are refused, usage
// errors point to the subcommand's --help, numbers read alike in every report, older
// metrics.csv files still read.
#include <cctype>
#include <filesystem>
#include <sstream>

#include "base/error.h"
#include "test_train_util.h"
#include "train/metrics.h"

namespace kvc {
namespace {

using test::RunResult;
using test::TempDir;

TEST_CASE("gen-data: shape flags that do not shape the file are refused") {
  TempDir dir("ux_gen_data");
  // A KV file holds whole sequences: the block size and the batch belong to train and infer.
  test::expect_error(
      test::run_kvcompress("gen-data --out " + dir / "a.h5" + " --block 4", dir.path), 2,
      {"--block", "gen-data"});
  test::expect_error(
      test::run_kvcompress("gen-data --out " + dir / "a.h5" + " --batch 4", dir.path), 2,
      {"--batch", "gen-data"});
  CHECK(!std::filesystem::exists(dir / "a.h5"));
  const RunResult help = test::run_kvcompress("gen-data --help", dir.path);
  CHECK(help.out.find("--block") == std::string::npos);
  CHECK(help.out.find("--batch") == std::string::npos);
  CHECK(help.out.find("--seq") != std::string::npos);
}

TEST_CASE("cli: a usage error ends by pointing to the subcommand's --help") {
  TempDir dir("ux_usage_help");
  const std::vector<std::pair<std::string, std::string>> cases{
      {"train --steps 0", "train"},
      {"train --no-such-flag", "train"},
      {"train --seq 4 --block 8", "train"},  // found after parsing (a UsageError)
      {"bench --config huge", "bench"},
      {"eval", "eval"},  // --checkpoint missing
      {"gen-data --out x.h5 --block 4", "gen-data"},
      {"inspect", "inspect"},
      {"frobnicate", ""},  // no subcommand: the top-level help
  };
  for (const auto& [args, sub] : cases) {
    const RunResult r = test::run_kvcompress(args + " --out " + dir / "never", dir.path);
    INFO(args, ": ", r.err);
    const std::string help = "kvcompress " + (sub.empty() ? "" : sub + " ") + "--help";
    test::expect_error(r, 2, {});
    CHECK(r.err.find("(see '" + help + "')\n") != std::string::npos);
  }
}

// The numbers after `label` in `text` (every occurrence), as printed.
std::vector<std::string> numbers_after(const std::string& text, const std::string& label) {
  std::vector<std::string> out;
  for (size_t at = text.find(label); at != std::string::npos; at = text.find(label, at + 1)) {
    size_t start = text.find_first_not_of(' ', at + label.size());
    size_t end = text.find_first_of(" \n,)", start);
    out.push_back(text.substr(start, end - start));
  }
  return out;
}

// "1.2345e-02": `digits` decimals, a signed two-digit exponent.
bool scientific(const std::string& s, size_t digits) {
  if (s.size() != digits + 6 || !std::isdigit(static_cast<unsigned char>(s[0])) || s[1] != '.') {
    return false;
  }
  for (size_t i = 2; i < 2 + digits; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  const std::string e = s.substr(2 + digits);
  return e[0] == 'e' && (e[1] == '-' || e[1] == '+') && std::isdigit(e[2]) && std::isdigit(e[3]);
}

TEST_CASE("cli: train, eval and inspect print losses, learning rates and norms alike") {
  TempDir dir("ux_numbers");
  const RunResult train = test::run_kvcompress(
      "train --device cpu --progress log --steps 40 --eval-every 20 --log-every 20 --out " +
          dir / "run",
      dir.path);
  INFO(train.err);
  REQUIRE(train.exit_code == 0);
  const RunResult eval =
      test::run_kvcompress("eval --device cpu --checkpoint " + dir / "run/checkpoint.h5", dir.path);
  const RunResult inspect = test::run_kvcompress("inspect " + dir / "run/checkpoint.h5", dir.path);
  REQUIRE(eval.exit_code == 0);
  REQUIRE(inspect.exit_code == 0);
  // The measurements: the step lines and the reports (settings print as given: "lr 0.001").
  std::string all = eval.out;
  std::istringstream lines(train.out + train.err + inspect.out);
  for (std::string line; std::getline(lines, line);) {
    for (const char* measured : {"] step ", "] done:", "last ", "optimizer "}) {
      if (line.find(measured) != std::string::npos) all += line + "\n";
    }
  }
  INFO(all);
  // Losses with 5 significant digits, learning rates and gradient norms with 4.
  size_t losses = 0, rates = 0;
  for (const char* label : {"eval loss", " loss", "untrained", "smoothed"}) {
    for (const std::string& n : numbers_after(all, label)) {
      INFO(label, " ", n);
      if (n == "->" || n == "at" || !std::isdigit(static_cast<unsigned char>(n[0]))) continue;
      CHECK(scientific(n, 4));
      ++losses;
    }
  }
  for (const char* label : {" lr", "grad_norm"}) {
    for (const std::string& n : numbers_after(all, label)) {
      INFO(label, " ", n);
      CHECK(scientific(n, 3));
      ++rates;
    }
  }
  CHECK(losses >= 8);
  CHECK(rates >= 4);
  // The eval loss of the last step reads the same in the log, in eval and in inspect.
  const std::vector<std::string> logged =
      numbers_after(train.out + train.err, "step 40: eval loss");
  REQUIRE(logged.size() == 1);
  CHECK(numbers_after(eval.out, "eval loss").at(0) == logged[0]);
  CHECK(numbers_after(inspect.out, "last eval loss").at(0) == logged[0]);
}

TEST_CASE("metrics: a metrics.csv whose last column is the older 'elapsed' still reads") {
  TempDir dir("ux_metrics_header");
  test::write_text(dir / "old.csv",
                   "step,loss,eval_loss,lr,grad_norm,elapsed\n0,,0.5,,,0.25\n1,0.4,,0.001,2,1.5\n");
  const train::MetricsHistory h = train::read_metrics_csv(dir / "old.csv");
  REQUIRE(h.size() == 2);
  CHECK(h.rows()[1].elapsed == 1.5);
  CHECK(h.rows()[0].eval_loss == 0.5);
  test::write_text(dir / "other.csv", "step,loss,eval_loss,lr,grad_norm,seconds\n");
  CHECK_THROWS_AS(train::read_metrics_csv(dir / "other.csv"), Error);
}

}  // namespace
}  // namespace kvc
