// The shared flags of the subcommands and their checks.
#include "cli/cli_options.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <type_traits>
#include <utility>

#include "kernels/precision.h"
#include "nn/compressor.h"
#include "train/trainer.h"

namespace kvc::cli {

RunSettings shape_preset(const std::string& name) {
  RunSettings s;  // small
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

namespace {

// The kinds of a list and what is wrong with it, if anything.
std::pair<std::vector<std::string>, std::string> split_kind_list(const std::string& list) {
  const std::vector<std::string> known = compressor_kinds();
  if (list == "all") return {known, ""};
  std::vector<std::string> kinds;
  std::stringstream ss(list);
  std::string kind;
  while (std::getline(ss, kind, ',')) {
    if (std::find(known.begin(), known.end(), kind) == known.end()) {
      std::string names;
      for (const std::string& k : known) names += (names.empty() ? "" : ", ") + k;
      return {{}, "unknown kind '" + kind + "' (expected all or a list of " + names + ")"};
    }
    if (std::find(kinds.begin(), kinds.end(), kind) != kinds.end()) {
      return {{}, "'" + kind + "' is listed twice"};
    }
    kinds.push_back(kind);
  }
  if (kinds.empty()) return {{}, "'" + list + "' names no kind"};
  return {kinds, ""};
}

}  // namespace

std::string kind_list_error(const std::string& list) { return split_kind_list(list).second; }

std::vector<std::string> parse_kind_list(const std::string& flag, const std::string& list) {
  auto [kinds, error] = split_kind_list(list);
  KVC_USAGE_CHECK(error.empty(), flag, ": ", error);
  return kinds;
}

std::vector<std::string> selected_kinds(const RunSettings& r) {
  return parse_kind_list("--compressor", r.compressor);
}

CompressorOptions compressor_options(const std::string& kind, const RunSettings& r, Device device) {
  CompressorOptions o = train::compressor_options(r, device);
  o.kind = kind;
  return o;
}

void add_setting_flags(CLI::App* cmd, RunSettings* r, train::SettingGroup group, bool allow_all) {
  for (const train::Setting& s : train::settings_table()) {
    if (s.group == group) add_setting_flag(cmd, r, s, allow_all);
  }
}

void add_setting_flag(CLI::App* cmd, RunSettings* r, const train::Setting& s, bool allow_all) {
  std::string help = s.help;
  if (s.range == train::SettingRange::kind) {
    std::string list = allow_all ? "all" : "";
    for (const std::string& k : compressor_kinds()) list += (list.empty() ? "" : "|") + k;
    help += ": " + list + (allow_all ? ", or a comma-separated list (conv,mlp)" : "");
  } else if (s.range == train::SettingRange::choice) {
    std::string list;
    for (const std::string& c : s.choices) list += (list.empty() ? "" : "|") + c;
    help += " (" + list + ")";
  }
  CLI::Validator check(
      [&s, allow_all](std::string& v) -> std::string {
        if (allow_all && s.range == train::SettingRange::kind) return kind_list_error(v);
        return train::check_setting_text(s, v);
      },
      "", std::string(s.name));
  std::visit(
      [&](auto member) {
        if constexpr (std::is_same_v<std::decay_t<decltype(r->*member)>, bool>) {
          cmd->add_flag(train::setting_flag(s), r->*member, help);
        } else {
          CLI::Option* o = cmd->add_option(train::setting_flag(s), r->*member, help);
          // An unset default (0) is not a value the flag takes: the help says what stands in.
          if (s.range != train::SettingRange::positive_or_default) o->capture_default_str();
          o->check(check);
        }
      },
      s.member);
}

void refuse_flag(CLI::App* cmd, const std::string& flag, const std::string& why) {
  cmd->remove_option(cmd->get_option(flag));
  const std::string message = flag + " does not apply to " + cmd->get_name() + ": " + why;
  cmd->add_option(flag, "")
      ->group("")  // not in --help
      ->each([message](const std::string&) { throw UsageError(message); });
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
  cmd->add_option(
         "--precision", *precision,
         "fp32|tf32|bf16: operands of matrix products and attention on CUDA tensor cores "
         "(fp32: FP32 accuracy, TF32 off; tf32, bf16: rounded operands, FP32 accumulation, "
         "float32 weights, optimizer state and checkpoints)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "tf32", "bf16"}));
}

void add_progress_flag(CLI::App* cmd, std::string* progress) {
  cmd->add_option("--progress", *progress,
                  "auto: an updating line on a terminal, log lines otherwise; tty|log|none")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "tty", "log", "none"}));
}

train::ProgressMode progress_mode(const std::string& flag) {
  return flag == "tty"    ? train::ProgressMode::tty
         : flag == "log"  ? train::ProgressMode::log
         : flag == "none" ? train::ProgressMode::none
                          : train::ProgressMode::automatic;
}

void add_config_file_flag(CLI::App* cmd, std::string* path) {
  cmd->add_option("--config-file", *path,
                  "read flags from this TOML file (\"steps = 2000\", one per line; flags on the "
                  "command line override it); every run writes OUT/config.toml in this form")
      ->check(CLI::ExistingFile);
}

namespace {

// The option a config key names: "dim-head" or "dim_head" for --dim-head.
CLI::Option* option_for_key(CLI::App* cmd, const std::string& key) {
  std::string flag = "--" + key;
  std::replace(flag.begin(), flag.end(), '_', '-');
  CLI::Option* op = cmd->get_option_no_throw(flag);
  const bool usable = op != nullptr && flag != "--help" && flag != "--config-file";
  return usable ? op : nullptr;
}

}  // namespace

void apply_config_file(CLI::App* cmd, const std::string& path) {
  const std::string where = "--config-file " + path;
  std::vector<CLI::ConfigItem> items;
  try {
    items = CLI::ConfigTOML().from_file(path);
  } catch (const CLI::ParseError& e) {
    throw UsageError(where + ": " + e.what());
  }
  for (const CLI::ConfigItem& item : items) {
    KVC_USAGE_CHECK(item.parents.empty(), where, ": section [", item.parents.front(),
                    "] is not read; write the keys at the top of the file");
    CLI::Option* op = option_for_key(cmd, item.name);
    KVC_USAGE_CHECK(op != nullptr, where, ": unknown key '", item.name, "': ", cmd->get_name(),
                    " has no flag --", item.name);
    if (op->count() > 0) continue;  // the command line wins
    try {
      op->add_result(item.inputs);
      op->run_callback();
    } catch (const CLI::ParseError& e) {
      throw UsageError(where + ": key '" + item.name + "': " + e.what());
    }
  }
}

std::string options_toml(const CLI::App* cmd, const std::vector<std::string>& skip) {
  std::string out;
  for (const CLI::Option* op : cmd->get_options()) {
    const std::string name = op->get_single_name();
    if (name.empty() || std::find(skip.begin(), skip.end(), name) != skip.end()) continue;
    if (name == "help" || name == "config-file") continue;
    std::string value;
    if (op->get_expected_min() == 0) {  // a flag (all of them default to false)
      value = op->count() > 0 && op->as<bool>() ? "true" : "false";
    } else {
      value = op->count() > 0 ? op->results().back() : op->get_default_str();
      if (op->get_type_name().rfind("TEXT", 0) == 0 || value.empty()) {
        value = train::toml_string(value);
      }
    }
    out += name + " = " + value + "\n";
  }
  return out;
}

void validate_shape(const RunSettings& r) {
  KVC_USAGE_CHECK(r.seq >= r.block, "--seq ", r.seq, " is shorter than one block (--block ",
                  r.block, "): there is nothing to compress");
  KVC_USAGE_CHECK(r.stride <= r.block, "--stride ", r.stride, " is larger than --block ", r.block,
                  ": tokens between the blocks would never be seen");
  // Sizes whose products overflow would wrap into small or negative tensors.
  checked_mul(r.block, r.dim_head, "--block * --dim-head");
  numel_of({r.batch, r.heads, r.seq, r.dim_head});
  numel_of({r.batch, r.heads, r.query_heads, r.queries, r.dim_head});
  KVC_USAGE_CHECK(r.dropout >= 0 && r.dropout < 1, "--dropout ", r.dropout, " is not in [0, 1)");
  for (const std::string& kind : selected_kinds(r)) {
    const KindOptionsUsed uses = compressor_kind(kind).uses;
    if (uses.reduction) {
      KVC_USAGE_CHECK(r.dim_head % r.reduction == 0, "--dim-head ", r.dim_head,
                      " is not divisible by --reduction ", r.reduction, " (", kind, ")");
    }
    const double hidden = std::floor(static_cast<double>(r.block * r.dim_head) * r.expand);
    KVC_USAGE_CHECK(!uses.expand || hidden >= 1, "--expand ", r.expand, " gives a hidden width of ",
                    hidden, " for n*d = ", r.block * r.dim_head, " (it must be at least 1)");
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
