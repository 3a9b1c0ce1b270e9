// Tests of `kvcompress compare` (train/leaderboard) and `kvcompress export` (train/safetensors).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <regex>
#include <sstream>

#include "test_train_util.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/leaderboard.h"
#include "train/metrics.h"
#include "train/safetensors.h"

namespace kvc {
namespace {

using train::CsvColumns;
using train::LeaderboardRow;

// metrics.csv of a 6-step run: evaluations at steps 0 (untrained), 2, 4 and 6; steps 3 and 5
// follow an evaluation and took longer. `recall` adds the recall_at_k column.
std::string metrics_csv(bool recall) {
  std::string s = std::string("step,loss,eval_loss,lr,grad_norm,elapsed_s") +
                  (recall ? ",recall_at_k\n" : "\n");
  const char* rows[] = {"0,,0.9,,,0",           "1,0.8,,0.1,1,0.010",    "2,0.7,0.5,0.1,1,0.020",
                        "3,0.6,,0.1,1,0.530",   "4,0.5,0.3,0.1,1,0.540", "5,0.4,,0.1,1,1.050",
                        "6,0.3,0.4,0.1,1,1.060"};
  const char* recalls[] = {",", ",", ",0.25", ",", ",0.75", ",", ",0.5"};
  for (int i = 0; i < 7; ++i) s += std::string(rows[i]) + (recall ? recalls[i] : "") + "\n";
  return s;
}

CsvColumns columns_of(const std::string& csv) {
  test::TempDir dir("lb_csv");
  test::write_text(dir / "metrics.csv", csv);
  return train::read_csv_columns(dir / "metrics.csv");
}

TEST_CASE("compare: a leaderboard row from metrics with and without the recall column") {
  for (bool recall : {true, false}) {
    INFO("recall column: ", recall);
    const LeaderboardRow r =
        train::leaderboard_row("conv", 123, 4.5, columns_of(metrics_csv(recall)));
    CHECK(r.kind == "conv");
    CHECK(r.parameters == 123);
    CHECK(r.best_eval == 0.3);  // step 4; the untrained 0.9 and the later 0.4 are not the best
    CHECK(r.best_step == 4);
    CHECK(r.final_eval == 0.4);
    // The steps were 10 ms apart except the three after an evaluation (510 ms): the median.
    CHECK(r.ms_per_step == doctest::Approx(10.0).epsilon(1e-9));
    CHECK(r.wall_seconds == 4.5);
    if (recall) {
      CHECK(r.recall_at_best == 0.75);
    } else {
      CHECK(std::isnan(r.recall_at_best));
    }
  }
}

TEST_CASE("compare: the leaderboard files rank by best eval loss and mark missing values") {
  LeaderboardRow a, b, c;
  a.kind = "mlp", a.parameters = 10, a.best_eval = 0.2, a.best_step = 5, a.final_eval = 0.25;
  a.recall_at_best = 0.5, a.ms_per_step = 2, a.wall_seconds = 1.5;
  b.kind = "conv", b.parameters = 20, b.best_eval = 0.1, b.best_step = 7, b.final_eval = 0.1;
  b.ms_per_step = 3, b.wall_seconds = 2;
  c.kind = "attention_pool", c.parameters = 30;  // no evaluation ran
  const std::vector<LeaderboardRow> rows = train::ranked({a, c, b});
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].kind == "conv");
  CHECK(rows[1].kind == "mlp");
  CHECK(rows[2].kind == "attention_pool");
  const std::string csv = train::leaderboard_csv(rows);
  CHECK(csv ==
        "kind,parameters,best_eval_loss,best_step,final_eval_loss,recall_at_k,ms_per_step,wall_s\n"
        "conv,20,0.1,7,0.1,,3,2.000\n"
        "mlp,10,0.2,5,0.25,0.5,2,1.500\n"
        "attention_pool,30,,,,,,0.000\n");
  const std::string md = train::leaderboard_markdown(rows, "settings");
  CHECK(md.find("| 1 | conv | 20 | 1.0000e-01 (7) | 1.0000e-01 | n/a | 3.00 | 2.0 |") !=
        std::string::npos);
  CHECK(md.find("| 2 | mlp | 10 | 2.0000e-01 (5) | 2.5000e-01 | 0.500 | 2.00 | 1.5 |") !=
        std::string::npos);
  CHECK(md.find("| 3 | attention_pool | 30 | n/a | n/a | n/a | n/a | 0.0 |") != std::string::npos);
}

// The y pixel of every point of the polyline with class `cls`.
std::vector<double> polyline_ys(const std::string& svg, const std::string& cls) {
  const std::regex re("class=\"" + cls + "\"[^>]* points=\"([^\"]*)\"");
  std::smatch m;
  REQUIRE(std::regex_search(svg, m, re));
  std::vector<double> ys;
  std::stringstream ss(m[1].str());
  std::string pt;
  while (ss >> pt) ys.push_back(std::stod(pt.substr(pt.find(',') + 1)));
  return ys;
}

TEST_CASE("compare: compare.svg draws every kind's eval curve on one log axis") {
  std::vector<train::EvalCurve> curves{{"mlp", {{0, 1.0}, {10, 0.5}, {20, 0.2}}},
                                       {"conv", {{0, 1.0}, {10, 0.1}, {20, 0.01}}}};
  const std::string svg = train::compare_svg(curves, "title");
  CHECK(svg.find("class=\"frame-compare\"") != std::string::npos);
  const std::vector<double> conv = polyline_ys(svg, "eval-conv");
  const std::vector<double> mlp = polyline_ys(svg, "eval-mlp");
  REQUIRE(conv.size() == 3);
  REQUIRE(mlp.size() == 3);
  // Log scale: equal ratios are equal pixel steps, and both curves share the axis.
  CHECK(conv[1] - conv[0] == doctest::Approx(conv[2] - conv[1]).epsilon(1e-3));
  CHECK(mlp[0] == doctest::Approx(conv[0]));
  CHECK((mlp[1] - mlp[0]) / (conv[1] - conv[0]) == doctest::Approx(-std::log10(0.5)).epsilon(1e-3));
  // One best ring per kind, and the legend names each kind with its best loss.
  const std::regex ring("class=\"best\"");
  CHECK(std::distance(std::sregex_iterator(svg.begin(), svg.end(), ring), std::sregex_iterator()) ==
        2);
  // Best first in the legend, whatever the run order.
  const size_t conv_label = svg.find(">conv (best 1.0000e-02)<");
  const size_t mlp_label = svg.find(">mlp (best 2.0000e-01)<");
  REQUIRE(conv_label != std::string::npos);
  REQUIRE(mlp_label != std::string::npos);
  CHECK(conv_label < mlp_label);
}

TEST_CASE("compare: trains each kind into its folder and writes the leaderboard from their runs") {
  test::TempDir dir("compare");
  const test::RunResult r = test::run_kvcompress(
      "compare --compressors conv,mlp --steps 8 --eval-every 4 --seq 32 --progress none "
      "--device cpu --out " +
          dir / "cmp",
      dir.path);
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("kind 1/2: conv") != std::string::npos);
  CHECK(r.out.find("kind 2/2: mlp") != std::string::npos);
  const std::string csv = test::read_text(dir / "cmp/leaderboard.csv");
  for (const char* kind : {"conv", "mlp"}) {
    INFO(kind);
    const std::string run = dir / "cmp/" + kind;
    const train::Checkpoint ck = train::load_checkpoint(run + "/checkpoint.h5", false);
    int64_t params = 0;
    for (const auto& [key, t] : ck.params) params += t.numel();
    double best = std::numeric_limits<double>::infinity();
    for (const train::MetricsRow& row : ck.metrics.rows()) {
      if (row.step > 0 && std::isfinite(row.eval_loss)) best = std::min(best, row.eval_loss);
    }
    // The kind's line: its name, the checkpoint's parameter count, the run's best eval loss.
    const std::regex line("\\n" + std::string(kind) + "," + std::to_string(params) + ",([^,]*),");
    std::smatch m;
    REQUIRE(std::regex_search(csv, m, line));
    CHECK(std::stod(m[1].str()) == doctest::Approx(best).epsilon(1e-7));
    CHECK(test::read_text(dir / "cmp/compare.svg").find("eval-" + std::string(kind)) !=
          std::string::npos);
  }
  CHECK(test::count_lines(csv) == 3);
  CHECK(test::read_text(dir / "cmp/leaderboard.md").find("| 2 |") != std::string::npos);
}

TEST_CASE("compare: bad --compressors lists are usage errors naming the kind") {
  test::TempDir dir("compare_bad");
  test::expect_error(test::run_kvcompress("compare --compressors conv,nope --out x", dir.path), 2,
                     {"--compressors", "nope", "conv"});
  test::expect_error(test::run_kvcompress("compare --compressors mlp,mlp --out x", dir.path), 2,
                     {"--compressors", "mlp", "twice"});
  test::expect_error(test::run_kvcompress("compare --compressor conv --out x", dir.path), 2,
                     {"--compressor"});
}

uint64_t le64(const std::string& bytes) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i)
    v = (v << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  return v;
}

TEST_CASE("export: the safetensors layout of two small tensors, byte for byte") {
  const Tensor a = Tensor::from_vector({1.0, -2.0}, {2});
  const Tensor b = Tensor::from_vector({0.5, 0.25, 3.0, 4.0, 5.0, 6.0}, {2, 3});
  // Given in reverse key order: the file lays them out sorted, as its header lists them.
  const std::string file = train::safetensors_bytes({{"z.bias", a}, {"a.weight", b}}, {{"k", "v"}});
  const std::string json =
      "{\"__metadata__\":{\"k\":\"v\"},"
      "\"a.weight\":{\"data_offsets\":[0,24],\"dtype\":\"F32\",\"shape\":[2,3]},"
      "\"z.bias\":{\"data_offsets\":[24,32],\"dtype\":\"F32\",\"shape\":[2]}}";
  const uint64_t n = le64(file);
  CHECK(n % 8 == 0);
  REQUIRE(n >= json.size());
  CHECK(file.substr(8, json.size()) == json);
  CHECK(file.substr(8 + json.size(), n - json.size()) == std::string(n - json.size(), ' '));
  REQUIRE(file.size() == 8 + n + 32);
  // IEEE 754 single precision, little-endian: 0.5 is 0x3f000000, -2 is 0xc0000000.
  CHECK(file.substr(8 + n, 4) == std::string("\x00\x00\x00\x3f", 4));
  CHECK(file.substr(8 + n + 28, 4) == std::string("\x00\x00\x00\xc0", 4));
  test::check_error([&] { train::safetensors_bytes({{"__metadata__", a}}, {}); }, {"__metadata__"});
  test::check_error([&] { train::safetensors_bytes({{"x", a}, {"x", b}}, {}); }, {"'x'", "twice"});
}

TEST_CASE("export: writes the checkpoint's params, refuses to overwrite without --overwrite") {
  test::TempDir dir("export");
  test::RunResult r = test::run_kvcompress(
      "train --steps 2 --seq 32 --progress none --device cpu --eval-every 0 --out " + dir / "run",
      dir.path);
  REQUIRE(r.exit_code == 0);
  const std::string ck = dir / "run/checkpoint.h5", out = dir / "w.safetensors";
  r = test::run_kvcompress("export " + ck + " --out " + out, dir.path);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const size_t params = train::load_checkpoint(ck, false).params.size();
  CHECK(r.out.find("wrote " + std::to_string(params) + " tensors") != std::string::npos);
  const std::string first = test::read_text(out);
  test::expect_error(test::run_kvcompress("export " + ck + " --out " + out, dir.path), 1,
                     {out, "exists", "--overwrite"});
  CHECK(test::read_text(out) == first);
  r = test::run_kvcompress("export " + ck + " --out " + out + " --overwrite", dir.path);
  CHECK(r.exit_code == 0);
  test::expect_error(test::run_kvcompress("export " + dir / "none.h5 --out x.st", dir.path), 1,
                     {"none.h5"});
}

// The file reads back with json + numpy alone and loads into the PyTorch modules strictly.
TEST_CASE("export: PyTorch loads the safetensors file strictly (check_safetensors.py)") {
  test::TempDir dir("export_torch");
  const std::string python = test::python_or_skip("torch, h5py", dir.path, "export interop");
  if (python.empty()) return;
  for (const char* kind : {"conv", "enhanced_mlp"}) {
    INFO(kind);
    const std::string run = dir / kind;
    test::RunResult r = test::run_kvcompress(
        std::string("train --compressor ") + kind +
            " --steps 3 --seq 32 --dropout 0.1 --progress none --device cpu --eval-every 0 --out " +
            run,
        dir.path);
    REQUIRE(r.exit_code == 0);
    r = test::run_kvcompress("export " + run + "/checkpoint.h5 --out " + run + "/w.safetensors",
                             dir.path);
    REQUIRE(r.exit_code == 0);
    r = test::run_shell(python + " " + std::string(KVC_SOURCE_DIR) +
                            "/tests/check_safetensors.py " + run + "/checkpoint.h5 " + run +
                            "/w.safetensors",
                        dir.path);
    INFO(r.out, r.err);
    CHECK(r.exit_code == 0);
    CHECK(r.out.find("ok:") != std::string::npos);
  }
}

// tools/extract_kv.py on a tiny random Llama built from a config (tests/extract_kv_check.py
// checks the file against the model's own attention output), then training on the file.
TEST_CASE("extract_kv: real-model KV trains with --data (tiny random Llama)") {
  test::TempDir dir("extract_kv");
  const std::string python = test::python_or_skip("torch, h5py", dir.path, "extract_kv test");
  if (python.empty()) return;
  test::RunResult r = test::run_shell(
      python + " " + std::string(KVC_SOURCE_DIR) + "/tests/extract_kv_check.py " + dir.path,
      dir.path);
  if (r.exit_code == 3) {
    std::printf("KVC_SKIP: extract_kv test skipped: %s", r.out.c_str());
    std::fflush(stdout);
    return;
  }
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  r = test::run_kvcompress("train --data " + dir / "kv_first.h5" +
                               " --steps 3 --eval-every 0 --progress none --device cpu --out " +
                               dir / "run",
                           dir.path);
  INFO(r.err);
  CHECK(r.exit_code == 0);
  // Every query head (GQA) trains where train knows --query-heads.
  if (test::run_kvcompress("train --help", dir.path).out.find("--query-heads") !=
      std::string::npos) {
    r = test::run_kvcompress("train --data " + dir / "kv_all.h5" +
                                 " --query-heads 2 --steps 3 --eval-every 0 --progress none "
                                 "--device cpu --out " +
                                 dir / "run_gqa",
                             dir.path);
    INFO(r.err);
    CHECK(r.exit_code == 0);
  }
}

}  // namespace
}  // namespace kvc
