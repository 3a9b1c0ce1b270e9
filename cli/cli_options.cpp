// The shared flags of the subcommands and their checks.
#include "cli/cli_options.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdlib>

#include "kernels/precision.h"
#include "nn/compressor.h"

namespace kvc::cli {

ShapeFlags shape_preset(const std::string& name) {
  ShapeFlags s;  // small
  if (name == "small") return s;
  if (name == "nsa") {
    s.batch = 4, s.heads = 8, s.seq = 8192, s.block = 16, s.dim_head = 64, s.queries = 512;
    return s;
  }
  if (name == "long") {
    s.batch = 1, s.heads = 8, s.seq = 131072, s.block = 32, s.dim_head = 128, s.queries = 1024;
    return s;
  }
  throw UsageError(str("unknown configuration '", name, "' (expected small, nsa or long)"));
}

const std::vector<std::string>& shape_preset_names() {
  static const std::vector<std::string> names{"small", "nsa", "long"};
  return names;
}

namespace {

CLI::Validator number_check(const char* desc, bool (*ok)(double), const char* expected) {
  return CLI::Validator(
      [ok, expected](std::string& v) -> std::string {
        char* end = nullptr;
        const double x = std::strtod(v.c_str(), &end);
        if (v.empty() || *end != '\0' || !std::isfinite(x)) return "'" + v + "' is not a number";
        if (!ok(x)) return v + " is not " + expected;
        return "";
      },
      desc);
}

}  // namespace

CLI::Validator positive() {
  return number_check(
      "POSITIVE", [](double x) { return x > 0; }, "positive");
}
CLI::Validator non_negative() {
  return number_check(
      "NONNEGATIVE", [](double x) { return x >= 0; }, "zero or more");
}
CLI::Validator unit_interval() {
  return number_check(
      "IN [0,1)", [](double x) { return x >= 0 && x < 1; }, "in [0, 1)");
}

std::vector<std::string> selected_kinds(const ModelFlags& m) {
  return m.compressor == "all" ? compressor_kinds() : std::vector<std::string>{m.compressor};
}

CompressorOptions compressor_options(const std::string& kind, const ShapeFlags& s,
                                     const ModelFlags& m, uint64_t seed, Device device) {
  CompressorOptions o;
  o.kind = kind;
  o.heads = s.heads;
  o.dim_head = s.dim_head;
  o.block = s.block;
  o.expand = m.expand;
  o.dropout = m.dropout;
  o.reduction = m.reduction;
  o.seed = seed;
  o.device = device;
  return o;
}

void add_shape_flags(CLI::App* cmd, ShapeFlags* s) {
  cmd->add_option("--heads", s->heads, "KV heads h")->capture_default_str()->check(positive());
  cmd->add_option("--dim-head", s->dim_head, "head dimension d")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--block", s->block, "tokens per compressed block n")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--seq", s->seq, "sequence length (tokens)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--batch", s->batch, "sequences per batch b")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--queries", s->queries, "queries per sequence nq (distill task)")
      ->capture_default_str()
      ->check(positive());
}

void add_model_flags(CLI::App* cmd, ModelFlags* m, bool allow_all) {
  std::vector<std::string> kinds = compressor_kinds();
  if (allow_all) kinds.insert(kinds.begin(), "all");
  std::string list;
  for (const std::string& k : kinds) list += (list.empty() ? "" : "|") + k;
  cmd->add_option("--compressor", m->compressor, "compressor kind: " + list)
      ->capture_default_str()
      ->check(CLI::IsMember(kinds));
  cmd->add_option("--expand", m->expand, "hidden width factor of the MLP kinds (H = n*d*expand)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--dropout", m->dropout, "dropout probability (enhanced_mlp)")
      ->capture_default_str()
      ->check(unit_interval());
  cmd->add_option("--reduction", m->reduction, "channel reduction r (efficient_conv)")
      ->capture_default_str()
      ->check(positive());
}

void add_device_flag(CLI::App* cmd, std::string* device) {
  CLI::Validator check(
      [](std::string& v) -> std::string {
        if (v == "auto") return "";
        try {
          parse_device(v);
          return "";
        } catch (const Error& e) {  // "device: <why>"; CLI11 names the flag itself
          const std::string why = e.what();
          return why.rfind("device: ", 0) == 0 ? why.substr(8) : why;
        }
      },
      "auto|cpu|cuda", "device");
  cmd->add_option("--device", *device, "auto|cpu|cuda (auto: the GPU when there is one)")
      ->capture_default_str()
      ->check(check);
}

void add_precision_flag(CLI::App* cmd, std::string* precision) {
  cmd->add_option("--precision", *precision,
                  "fp32|tf32|bf16: operands of matrix products and attention on CUDA tensor cores "
                  "(fp32: exact FP32 math; tf32, bf16: rounded operands, FP32 accumulation, "
                  "float32 weights, optimizer state and checkpoints)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "tf32", "bf16"}));
}

void validate_shape(const ShapeFlags& s, const ModelFlags& m) {
  KVC_USAGE_CHECK(s.seq >= s.block, "--seq ", s.seq, " is shorter than one block (--block ",
                  s.block, "): there is nothing to compress");
  KVC_USAGE_CHECK(m.dropout >= 0 && m.dropout < 1, "--dropout ", m.dropout, " is not in [0, 1)");
  for (const std::string& kind : selected_kinds(m)) {
    const KindOptionsUsed uses = compressor_kind(kind).uses;
    if (uses.reduction) {
      KVC_USAGE_CHECK(s.dim_head % m.reduction == 0, "--dim-head ", s.dim_head,
                      " is not divisible by --reduction ", m.reduction, " (", kind, ")");
    }
    const double hidden = std::floor(static_cast<double>(s.block * s.dim_head) * m.expand);
    KVC_USAGE_CHECK(!uses.expand || hidden >= 1, "--expand ", m.expand, " gives a hidden width of ",
                    hidden, " for n*d = ", s.block * s.dim_head, " (it must be at least 1)");
  }
}

Device resolve_device(const std::string& flag) {
  if (flag == "auto") return cuda_available() ? Device::cuda(0) : Device::cpu();
  const Device d = parse_device(flag);
  if (d.is_cuda()) {
    const std::string why = cuda_unavailable_reason();
    KVC_CHECK(why.empty(), "--device ", flag, ": no usable GPU (", why, ")");
  }
  return d;
}

void apply_precision(const std::string& precision, Device device) {
  kernels::MathPrecision p = kernels::MathPrecision::fp32;
  if (precision == "tf32") p = kernels::MathPrecision::tf32;
  if (precision == "bf16") p = kernels::MathPrecision::bf16;
  if (device.is_cuda()) {
    KVC_CUDA_ONLY(kernels::cuda::set_math_precision(p));
  } else if (p == kernels::MathPrecision::bf16) {
    // The CPU has no bfloat16 path: refusing beats silently training in another precision.
    KVC_USAGE_CHECK(false, "--precision bf16 needs a CUDA device (--device ", device.name(),
                    "): the CPU computes in float32; use --precision fp32 there");
  } else if (p == kernels::MathPrecision::tf32) {
    spdlog::info("--precision tf32 has no effect on the CPU: float32 math stays full precision");
  }
}

}  // namespace kvc::cli
