// The settings table and what is derived from it: text, parsing, range checks, the summary.
#include "train/settings.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <type_traits>

#include "base/error.h"
#include "nn/compressor.h"

namespace kvc::train {

namespace {

using G = SettingGroup;
using R = SettingRange;
using S = Stored;

}  // namespace

const std::vector<Setting>& settings_table() {
  using RS = RunSettings;
  // clang-format off
  static const std::vector<Setting> table = {
    {"compressor", "compressor", &RS::compressor, G::model, R::kind, S::required, "compressor kind"},
    {"expand", "expand", &RS::expand, G::model, R::positive, S::required,
     "hidden width factor of the MLP kinds (H = n*d*expand)"},
    {"dropout", "dropout", &RS::dropout, G::model, R::unit_interval, S::required,
     "dropout probability (enhanced_mlp)"},
    {"reduction", "reduction", &RS::reduction, G::model, R::positive, S::required,
     "channel reduction r (efficient_conv)"},
    {"heads", "heads", &RS::heads, G::shape, R::positive, S::required, "KV heads h"},
    {"dim_head", "dim_head", &RS::dim_head, G::shape, R::positive, S::required,
     "head dimension d"},
    {"block", "block", &RS::block, G::shape, R::positive, S::required,
     "tokens per compressed block n"},
    {"seq", "seq", &RS::seq, G::shape, R::positive, S::optional, "sequence length (tokens)"},
    {"batch", "batch", &RS::batch, G::shape, R::positive, S::optional, "sequences per batch b"},
    {"queries", "queries", &RS::queries, G::shape, R::positive, S::optional,
     "queries per sequence nq (distill task)"},
    {"stride", "stride", &RS::stride, G::shape, R::positive_or_default, S::optional,
     "tokens between the starts of compressed blocks, 1..block (default: the block size; "
     "smaller strides overlap the blocks as NSA does)", {}, "0"},
    {"query_heads", "query_heads", &RS::query_heads, G::shape, R::positive, S::optional,
     "query heads per KV head G (GQA): queries are (b, h*G, nq, d)", {}, "1"},
    {"causal", "causal", &RS::causal, G::train, R::any, S::optional,
     "causal distillation: a query at position t sees keys 0..t and the blocks ending by t",
     {}, "0"},
    {"topk", "topk", &RS::topk, G::train, R::positive, S::optional,
     "k of the selection recall@k reported at every eval (capped at the blocks)", {}, "16"},
    {"task", "task", &RS::task, G::train, R::choice, S::required,
     "distill: match full attention with compressed K/V; teacher: match a frozen noisy pair",
     {"distill", "teacher"}},
    {"data", "data", &RS::data, G::train, R::any, S::optional,
     "KV HDF5 file (k, v (N, h, seq, d), optional q); empty: synthetic data from --seed", {},
     "synthetic"},
    {"steps", "steps", &RS::steps, G::train, R::positive, S::optional,
     "optimizer steps in total; with --resume, a new length re-plans the cosine to end there, "
     "reached from the current learning rate over --warmup steps"},
    // an older file's fallback for steps is its own step (checkpoint.cpp)
    {"lr", "base_lr", &RS::lr, G::train, R::positive, S::optional,
     "peak learning rate (linear warmup, then cosine to 0)"},
    {"weight_decay", nullptr, &RS::weight_decay, G::train, R::non_negative, S::no,
     "decoupled weight decay: > 0 trains with AdamW (torch.optim.AdamW), 0 with Adam"},
    {"warmup", "warmup", &RS::warmup, G::train, R::non_negative, S::optional,
     "linear warmup steps", {}, "0"},
    {"clip", "clip", &RS::clip, G::train, R::non_negative, S::optional,
     "max global gradient norm; 0 turns clipping off", {}, "0"},
    {"seed", "seed", &RS::seed, G::train, R::any, S::required,
     "seed of the initial weights, dropout and synthetic data"},
    {"eval_every", nullptr, &RS::eval_every, G::train, R::non_negative, S::no,
     "evaluate on the held-out batches every N steps (0: at the end only)"},
    {"save_every", nullptr, &RS::save_every, G::train, R::non_negative, S::no,
     "write OUT/checkpoint.h5 every N steps (0: at the end only)"},
    {"log_every", nullptr, &RS::log_every, G::train, R::positive, S::no,
     "log a line every N steps when not on a terminal"},
    {"eval_batches", nullptr, &RS::eval_batches, G::train, R::positive, S::no,
     "held-out batches per evaluation"},
    {"stop_at", nullptr, &RS::stop_at, G::train, R::non_negative, S::no,
     "stop with a checkpoint at this step, as Ctrl-C would (0: run to --steps)"},
  };
  // clang-format on
  return table;
}

const Setting& setting(const std::string& name) {
  for (const Setting& s : settings_table()) {
    if (name == s.name) return s;
  }
  KVC_FAIL("settings: no setting named '", name, "'");
}

std::string setting_flag(const Setting& s) {
  std::string flag = std::string("--") + s.name;
  for (char& c : flag) c = c == '_' ? '-' : c;
  return flag;
}

std::string setting_text(const RunSettings& r, const Setting& s) {
  return std::visit(
      [&](auto member) {
        using T = std::decay_t<decltype(r.*member)>;
        std::ostringstream os;
        if constexpr (std::is_same_v<T, bool>) {
          os << (r.*member ? "true" : "false");
        } else if constexpr (std::is_same_v<T, double>) {
          // The shortest text that reads back as the same double ("0.1", not 0.1000...01).
          for (int digits = 6; digits <= 17; ++digits) {
            os.str("");
            os.precision(digits);
            os << r.*member;
            if (std::strtod(os.str().c_str(), nullptr) == r.*member) break;
          }
        } else {
          os << r.*member;
        }
        return os.str();
      },
      s.member);
}

std::string check_setting_text(const Setting& s, const std::string& text) {
  const bool is_text = std::holds_alternative<std::string RunSettings::*>(s.member);
  if (s.range == R::kind) {
    for (const std::string& k : compressor_kinds()) {
      if (k == text) return "";
    }
    return "'" + text + "' is not a compressor kind";
  }
  if (s.range == R::choice) {
    for (const std::string& c : s.choices) {
      if (c == text) return "";
    }
    return "'" + text + "' is not one of the choices";
  }
  if (is_text) return "";
  if (std::holds_alternative<bool RunSettings::*>(s.member)) {
    return text == "true" || text == "false" || text == "1" || text == "0"
               ? ""
               : "'" + text + "' is not true or false";
  }
  char* end = nullptr;
  errno = 0;
  const double x = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(x)) return "'" + text + "' is not a number";
  const bool integral = !std::holds_alternative<double RunSettings::*>(s.member);
  if (integral && x != std::floor(x)) return "'" + text + "' is not a whole number";
  if (integral && std::fabs(x) > 9.2e18) {
    return "'" + text + "' is out of range (at most 2^63 - 1)";
  }
  if (std::holds_alternative<uint64_t RunSettings::*>(s.member) && x < 0) {
    return text + " is negative";
  }
  switch (s.range) {
    case R::positive:
    case R::positive_or_default:
      return x > 0 ? "" : text + " is not positive";
    case R::non_negative:
      return x >= 0 ? "" : text + " is not zero or more";
    case R::unit_interval:
      return x >= 0 && x < 1 ? "" : text + " is not in [0, 1)";
    default:
      return "";
  }
}

void copy_setting(RunSettings& to, const RunSettings& from, const Setting& s) {
  std::visit([&](auto member) { to.*member = from.*member; }, s.member);
}

void set_setting(RunSettings& r, const Setting& s, const std::string& text) {
  std::visit(
      [&](auto member) {
        using T = std::decay_t<decltype(r.*member)>;
        if constexpr (std::is_same_v<T, std::string>) {
          r.*member = text;
        } else if constexpr (std::is_same_v<T, bool>) {
          KVC_CHECK(text == "true" || text == "false" || text == "1" || text == "0",
                    "settings: ", setting_flag(s), " '", text, "' is not true or false");
          r.*member = text == "true" || text == "1";
        } else {
          std::istringstream in(text);
          T value{};
          in >> value;
          KVC_CHECK(!in.fail() && in.eof(), "settings: ", setting_flag(s), " '", text,
                    "' is not a ", std::is_same_v<T, double> ? "number" : "whole number");
          r.*member = value;
        }
      },
      s.member);
}

namespace {
// A positive_or_default setting left at 0: the default (the block, for the stride) stands in.
bool is_unset(const Setting& s, const std::string& text) {
  return s.range == R::positive_or_default && text == "0";
}
}  // namespace

void validate_settings(const RunSettings& r) {
  for (const Setting& s : settings_table()) {
    const std::string text = setting_text(r, s);
    if (is_unset(s, text)) continue;
    const std::string why = check_setting_text(s, text);
    KVC_CHECK(why.empty(), "train: ", setting_flag(s), " ", text, ": ", why);
  }
  KVC_CHECK(r.seq >= r.block, "train: seq ", r.seq, " is shorter than one block (", r.block, ")");
  KVC_CHECK(r.stride <= r.block, "train: --stride ", r.stride, " is larger than the block (",
            r.block, "): tokens between blocks would be skipped");
}

std::string toml_string(const std::string& text) {
  const char quote = text.find('\'') == std::string::npos ? '\'' : '"';
  return quote + text + quote;
}

std::string settings_toml(const RunSettings& r) {
  std::string out;
  for (const Setting& s : settings_table()) {
    std::string value = setting_text(r, s);
    // Unset (0): the default stands in for it, and a flag or key must be positive.
    if (is_unset(s, value)) continue;
    if (std::holds_alternative<std::string RunSettings::*>(s.member)) {
      value = toml_string(value);
    } else if (std::holds_alternative<double RunSettings::*>(s.member) &&
               value.find_first_of(".e") == std::string::npos) {
      value += ".0";  // TOML reads "1" as an integer; the setting is a float
    }
    out += setting_flag(s).substr(2) + " = " + value + "\n";
  }
  return out;
}

std::string settings_summary(const RunSettings& r, SettingGroup group, bool with_kind) {
  std::string out;
  for (const Setting& s : settings_table()) {
    if (s.group != group || (!with_kind && s.range == R::kind)) continue;
    const std::string text = setting_text(r, s);
    // Unset (a stride of 0: the block) and empty (no data file: synthetic) say nothing.
    if (text.empty() || is_unset(s, text)) continue;
    out += (out.empty() ? "" : ", ") + std::string(s.name) + " " + text;
  }
  return out;
}

}  // namespace kvc::train
