// `kvcompress gradcheck`: float64 finite-difference checks of every compressor
// and the pair.
#include <algorithm>
#include <cstdio>
#include <memory>

#include "cli/cli_options.h"
#include "core/gradcheck.h"
#include "core/ops.h"
#include "nn/compressor_pair.h"

namespace kvc::cli {

namespace {

struct GradcheckArgs {
  RunSettings run = tiny();  // the model and shape flags, and the seed
  std::string device = "cpu";
  double eps = 1e-6;

  // A tiny shape by default: two evaluations per element.
  static RunSettings tiny() {
    RunSettings r;
    r.compressor = "all";
    r.batch = 2, r.heads = 2, r.seq = 7, r.block = 3, r.dim_head = 4, r.queries = 3;
    return r;
  }
};

struct Row {
  std::string layer;
  GradcheckResult r;
};

std::vector<Row> check_kind(const std::string& kind, const GradcheckArgs& a, Device device) {
  std::vector<Row> rows;
  const RunSettings& s = a.run;
  CompressorOptions o = compressor_options(kind, s, device);
  o.dtype = DType::f64;
  GradcheckOptions go;
  go.eps = a.eps;
  const TensorOptions t64 = f64().with_device(device);
  const int64_t w = o.windows(s.seq);  // the pair's blocks

  // The layer alone: its input x and every parameter. A layer with dropout
  // stays in training mode (the masks are part of what is checked) with its
  // counters reset before each call, so every evaluation draws the same masks.
  {
    std::shared_ptr<Compressor> layer = make_compressor(o);
    Tensor x = Tensor::randn({s.batch, s.heads, w, s.block, s.dim_head}, a.run.seed + 11, 0, 0.0,
                             1.0, t64);
    const std::vector<uint64_t> counters = layer->rng_counters();
    std::vector<std::pair<std::string, Tensor>> inputs{{"input", x}};
    for (auto& kv : layer->named_parameters()) inputs.push_back(kv);
    for (const GradcheckResult& r : gradcheck(
             [&] {
               layer->set_rng_counters(counters);
               return (*layer)(x);
             },
             inputs, go)) {
      rows.push_back({kind, r});
    }
  }
  // The pair. compress(): K and V (its inputs) and every parameter. The distill
  // loss: every parameter (its target attention(Q, K, V) is data, computed
  // without gradient on purpose, so K, V and Q are checked through compress()
  // instead of through the loss).
  {
    CompressorPair pair(o);
    Tensor k =
        Tensor::randn({s.batch, s.heads, s.seq, s.dim_head}, a.run.seed + 12, 0, 0.0, 1.0, t64);
    Tensor v =
        Tensor::randn({s.batch, s.heads, s.seq, s.dim_head}, a.run.seed + 13, 0, 0.0, 1.0, t64);
    Tensor q = Tensor::randn({s.batch, s.heads * s.query_heads, s.queries, s.dim_head},
                             a.run.seed + 14, 0, 0.0, 1.0, t64);
    // Positions start at zero; move them off it so their gradient path sees
    // general values.
    for (auto& kv : pair.named_parameters()) {
      if (kv.first.find("intrablock_positions") != std::string::npos) {
        kv.second.copy_from(Tensor::randn(kv.second.shape(), a.run.seed + 15, 0, 0.0, 0.1, t64));
      }
    }
    const std::vector<uint64_t> counters = pair.rng_counters();
    std::vector<std::pair<std::string, Tensor>> inputs{{"k", k}, {"v", v}};
    for (auto& kv : pair.named_parameters()) inputs.push_back(kv);
    // Both outputs at once: (2, b, h, w, d) through one reshape-free sum of two
    // projections.
    for (const GradcheckResult& r : gradcheck(
             [&] {
               pair.set_rng_counters(counters);
               const auto out = pair.compress(k, v);
               return add(out.first, scale(out.second, 0.5));
             },
             inputs, go)) {
      rows.push_back({"pair(" + kind + ") compress", r});
    }
    std::vector<std::pair<std::string, Tensor>> params = pair.named_parameters();
    for (const GradcheckResult& r : gradcheck(
             [&] {
               pair.set_rng_counters(counters);
               return pair.distill_loss(q, k, v);
             },
             params, go)) {
      rows.push_back({"pair(" + kind + ") distill", r});
    }
  }
  return rows;
}

int run_gradcheck(const GradcheckArgs& a) {
  validate_shape(a.run);
  const Device device = resolve_device(a.device);
  const std::vector<std::string> kinds = selected_kinds(a.run);
  std::printf(
      "gradcheck: float64 central differences (eps %g) on %s, b %lld h "
      "%lld seq %lld "
      "n %lld d %lld nq %lld\n",
      a.eps, device.name().c_str(), static_cast<long long>(a.run.batch),
      static_cast<long long>(a.run.heads), static_cast<long long>(a.run.seq),
      static_cast<long long>(a.run.block), static_cast<long long>(a.run.dim_head),
      static_cast<long long>(a.run.queries));
  // All rows first: the name columns are as wide as the longest name, so the numbers line up.
  std::vector<Row> rows;
  for (const std::string& kind : kinds) {
    for (Row& row : check_kind(kind, a, device)) rows.push_back(std::move(row));
  }
  int layer_w = 5, tensor_w = 6;  // "layer", "tensor"
  for (const Row& row : rows) {
    layer_w = std::max(layer_w, static_cast<int>(row.layer.size()));
    tensor_w = std::max(tensor_w, static_cast<int>(row.r.tensor.size()));
  }
  std::printf("%-*s  %-*s  %14s %14s  %s\n", layer_w, "layer", tensor_w, "tensor", "max abs err",
              "max rel err", "pass");
  int failed = 0;
  const int total = static_cast<int>(rows.size());
  std::string first_failure;
  for (const Row& row : rows) {
    std::printf("%-*s  %-*s  %14.3e %14.3e  %s\n", layer_w, row.layer.c_str(), tensor_w,
                row.r.tensor.c_str(), row.r.max_abs_error, row.r.max_rel_error,
                row.r.passed ? "ok" : "FAIL");
    if (!row.r.passed) {
      ++failed;
      if (first_failure.empty()) {
        first_failure =
            str(row.layer, " ", row.r.tensor, " (element ", row.r.worst_index, ": analytic ",
                row.r.worst_analytic, ", numeric ", row.r.worst_numeric, ")");
      }
    }
  }
  std::fflush(stdout);
  KVC_CHECK(failed == 0, "gradcheck: ", failed, " of ", total, " checks failed, first ",
            first_failure);
  std::printf("all %d checks passed\n", total);
  return kExitOk;
}

}  // namespace

Command add_gradcheck_command(CLI::App& app) {
  auto a = std::make_shared<GradcheckArgs>();
  CLI::App* cmd = app.add_subcommand("gradcheck",
                                     "finite-difference check (float64) of "
                                     "every layer's input and parameters and "
                                     "of the pair's distill loss");
  add_setting_flags(cmd, &a->run, train::SettingGroup::model, /*allow_all=*/true);
  add_setting_flags(cmd, &a->run, train::SettingGroup::shape);
  add_device_flag(cmd, &a->device);
  cmd->add_option("--seed", a->run.seed, "seed of the weights and inputs")->capture_default_str();
  cmd->add_option("--eps", a->eps, "central-difference step")
      ->capture_default_str()
      ->check(positive());
  return {cmd, [a] { return run_gradcheck(*a); }};
}

}  // namespace kvc::cli
