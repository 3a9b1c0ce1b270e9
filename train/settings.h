// The settings of a run, each declared once in settings_table(): CLI flags, checkpoint
// attributes (written and read), validation and the printed summary all come from the table.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "data/batch.h"

namespace kvc::train {

// Every setting of a training run. The data shape (batch, heads, dim_head, seq, queries) is
// the KVShape base; the defaults are SPEC section 9's `small`.
struct RunSettings : KVShape {
  // The model.
  std::string compressor = "conv";
  int64_t block = 8;
  double expand = 1.0, dropout = 0.0;
  int64_t reduction = 2;
  // NSA's compressed branch: windows every `stride` tokens (0: the block size, disjoint blocks),
  // causal attention, the k of the selection recall at eval (query_heads is KVShape's).
  int64_t stride = 0;
  bool causal = false;
  int64_t topk = 16;
  // The task and the data: "" or "synthetic" for the generator, else an HDF5 KV file (whose h,
  // seq and d then replace heads, seq and dim_head).
  std::string task = "distill";
  std::string data;
  // The optimization. weight_decay > 0 selects AdamW (decoupled, torch.optim.AdamW); 0 is Adam.
  int64_t steps = 500;
  double lr = 1e-3, weight_decay = 0.0;
  int64_t warmup = 20;
  double clip = 1.0;  // max global grad norm; 0 turns clipping off
  uint64_t seed = 0;
  // The loop's rhythm (not stored: a resumed run takes them from its own flags).
  int64_t eval_every = 50, save_every = 100, log_every = 50;
  int64_t eval_batches = 4;  // fixed held-out batches per evaluation
  // Stop (with a checkpoint) once this step is reached, as an interrupt would; 0: never.
  int64_t stop_at = 0;
};

// Which flags a command takes: the data shape, the compressor, the rest of a training run.
enum class SettingGroup : uint8_t { shape, model, train };
// The values a setting admits.
// positive_or_default: a flag must be positive; 0 is the unset default (the struct's).
enum class SettingRange : uint8_t {
  any,
  positive,
  positive_or_default,
  non_negative,
  unit_interval,
  choice,
  kind
};
// In the checkpoint: a root attribute every file has, one older files may lack, or none.
enum class Stored : uint8_t { required, optional, no };

// A bool setting is a flag without a value on the command line (--causal).
using SettingMember =
    std::variant<int64_t RunSettings::*, double RunSettings::*, uint64_t RunSettings::*,
                 std::string RunSettings::*, bool RunSettings::*>;

struct Setting {
  const char* name;  // RunSettings member and summary name; the flag is --name with '-' for '_'
  const char* attribute;  // the checkpoint's root attribute (nullptr when not stored)
  SettingMember member;
  SettingGroup group;
  SettingRange range;
  Stored stored;
  const char* help;
  std::vector<std::string> choices = {};  // SettingRange::choice (::kind: a registered kind)
  const char* fallback = nullptr;  // Stored::optional: the value an older file implies (text)
};

// The table, in flag order.
const std::vector<Setting>& settings_table();
// The row named `name` (throws kvc::Error when there is none).
const Setting& setting(const std::string& name);

// "--dim-head" for dim_head.
std::string setting_flag(const Setting& s);
// The value as text ("0.001", "conv", "18446744073709551615").
std::string setting_text(const RunSettings& r, const Setting& s);
// to.<setting> = from.<setting>.
void copy_setting(RunSettings& to, const RunSettings& from, const Setting& s);
// Parses `text` into the setting; throws kvc::Error naming the setting and the text.
void set_setting(RunSettings& r, const Setting& s, const std::string& text);
// Empty when `text` is a valid value of the setting, else why not ("0 is not positive").
std::string check_setting_text(const Setting& s, const std::string& text);

// Every range of the table (throws kvc::Error naming the flag and the value), then seq >= block
// and stride <= block.
void validate_settings(const RunSettings& r);

// Every setting of the table as a TOML line "dim-head = 32" (the flag's name; text quoted, a
// double written as a float: "expand = 1.0"), in table order: what `train --config-file` reads.
std::string settings_toml(const RunSettings& r);
// `text` as a TOML string: '...' (literal, as CLI11 reads it back), "..." when it holds a '.
std::string toml_string(const std::string& text);

// "compressor conv, heads 2, ..." over the settings of `group` that are set (an unset stride and
// an empty data path are left out); with_kind false leaves out the compressor kind.
std::string settings_summary(const RunSettings& r, SettingGroup group, bool with_kind = true);

}  // namespace kvc::train
