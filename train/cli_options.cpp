// The shared flags of the subcommands and their checks.
#include "train/cli_options.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "kernels/precision.h"
#include "nn/compressor.h"

namespace kvc::cli {

ShapeFlags shape_preset(const std::string& name) {
  if (name == "small") return ShapeFlags{};
  if (name == "nsa") return ShapeFlags{4, 8, 8192, 16, 64, 512};
  if (name == "long") return ShapeFlags{1, 8, 131072, 32, 128, 1024};
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
        // CLI11 would clamp an integer beyond 64 bits to the largest one without a word.
        errno = 0;
        if (v.find_first_not_of("+-0123456789") == std::string::npos &&
            (std::strtoll(v.c_str(), nullptr, 10), errno == ERANGE)) {
          return v + " is out of range (at most 9223372036854775807)";
        }
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

std::vector<std::string> compressor_kind_names() { return compressor_kinds(); }

std::vector<std::string> selected_kinds(const ModelFlags& m) {
  return m.compressor == "all" ? compressor_kind_names() : std::vector<std::string>{m.compressor};
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
  std::vector<std::string> kinds = compressor_kind_names();
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
        if (v == "auto" || v == "cpu" || v == "cuda") return "";
        if (v.rfind("cuda:", 0) == 0 && v.size() > 5 &&
            v.find_first_not_of("0123456789", 5) == std::string::npos) {
          return "";
        }
        return "'" + v + "' is not a device (expected auto, cpu, cuda or cuda:N)";
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
  if (m.compressor == "efficient_conv" || m.compressor == "all") {
    KVC_USAGE_CHECK(s.dim_head % m.reduction == 0, "--dim-head ", s.dim_head,
                    " is not divisible by --reduction ", m.reduction, " (efficient_conv)");
  }
  // Sizes whose products overflow would wrap into small or negative tensors.
  const int64_t block_width = checked_mul(s.block, s.dim_head, "--block * --dim-head");
  numel_of({s.batch, s.heads, s.seq, s.dim_head});
  numel_of({s.batch, s.heads, s.queries, s.dim_head});
  const double hidden = std::floor(static_cast<double>(block_width) * m.expand);
  KVC_USAGE_CHECK(hidden >= 1, "--expand ", m.expand, " gives a hidden width of ", hidden,
                  " for n*d = ", block_width, " (it must be at least 1)");
  KVC_USAGE_CHECK(m.dropout >= 0 && m.dropout < 1, "--dropout ", m.dropout, " is not in [0, 1)");
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
