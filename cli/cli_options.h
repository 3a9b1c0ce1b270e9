// Flags shared by the subcommands (shape, compressor, device, precision) and
// the command table.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "base/error.h"
#include "nn/compressor.h"
#include "train/settings.h"
#include "train/trainer.h"

namespace kvc::cli {

// A bad flag value or combination found after parsing (d % r != 0, seq shorter
// than a block): main reports it like a CLI11 parse error, with exit code 2.
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& msg) : Error(msg) {}
};

#define KVC_USAGE_CHECK(cond, ...)                                      \
  do {                                                                  \
    if (!(cond)) throw ::kvc::cli::UsageError(::kvc::str(__VA_ARGS__)); \
  } while (0)

using train::RunSettings;

// The presets small, nsa, long (docs/cli.md, bench): the shape settings of a preset (the rest
// default). Throws UsageError for another name.
RunSettings shape_preset(const std::string& name);
const std::vector<std::string>& shape_preset_names();

// Validators with one-line messages that name the value ("0 is not positive").
CLI::Validator positive();       // > 0
CLI::Validator non_negative();   // >= 0
CLI::Validator unit_interval();  // [0, 1)

// "all" (every registered kind) or a comma-separated list of registered kinds, each once, in the
// order listed. kind_list_error says what is wrong with a list ("" if nothing); parse_kind_list
// throws it as a UsageError that names `flag`.
std::string kind_list_error(const std::string& list);
std::vector<std::string> parse_kind_list(const std::string& flag, const std::string& list);
// The kinds a command runs for --compressor: parse_kind_list of it.
std::vector<std::string> selected_kinds(const RunSettings& r);
// The options of `kind` with the rest of r's model and shape settings, on `device`.
CompressorOptions compressor_options(const std::string& kind, const RunSettings& r, Device device);

// One flag per setting of `group` in the settings table (name, help, default, range check).
// `allow_all` admits "all" (every kind) and comma-separated lists of kinds for --compressor.
void add_setting_flags(CLI::App* cmd, RunSettings* r, train::SettingGroup group,
                       bool allow_all = false);
// The flag of one setting, as add_setting_flags makes it.
void add_setting_flag(CLI::App* cmd, RunSettings* r, const train::Setting& s,
                      bool allow_all = false);
// Replaces `flag` of `cmd` with a hidden one that, when given, is a usage error: "--block does not
// apply to gen-data: <why>" (a flag that would be accepted and ignored misleads).
void refuse_flag(CLI::App* cmd, const std::string& flag, const std::string& why);
// --device auto|cpu|cuda (cuda:0 too; another index is refused: one GPU for now).
void add_device_flag(CLI::App* cmd, std::string* device);
// --precision fp32|tf32|bf16.
void add_precision_flag(CLI::App* cmd, std::string* precision);
// --progress auto|tty|log|none, and its mode for the trainer.
void add_progress_flag(CLI::App* cmd, std::string* progress);
train::ProgressMode progress_mode(const std::string& flag);

// --config-file FILE.toml: flags of `cmd` as TOML keys ("dim-head = 64" or "dim_head = 64").
void add_config_file_flag(CLI::App* cmd, std::string* path);
// Gives every key of the TOML file `path` to the flag of `cmd` it names, unless the command line
// gave that flag (the command line wins), with the flag's own checks (CLI11's TOML reader).
// Throws UsageError naming the file and the key for an unknown key, a section or a bad value.
void apply_config_file(CLI::App* cmd, const std::string& path);
// TOML lines "name = value" for the options of `cmd` not named in `skip`: the value given on the
// command line (or from a config file), else the default; flags as true/false.
std::string options_toml(const CLI::App* cmd, const std::vector<std::string>& skip);

// Combinations CLI11 validators cannot see: seq >= block, and for the kinds that use them
// (the registry says which) d % r == 0, H = floor(n d expand) >= 1, dropout in [0, 1). Throws
// UsageError naming the flags and values.
void validate_shape(const RunSettings& r);
// With --data the file decides h, seq and d (and nq and G when it holds q): a flag of `cmd` given
// explicitly that disagrees with the file is a usage error rather than ignored.
void check_data_flags(const CLI::App* cmd, const RunSettings& r);

// auto -> cuda when a GPU is usable, else cpu. "cuda" without a GPU throws
// kvc::Error naming the reason (exit 1: the command line was fine, the machine
// lacks the device).
Device resolve_device(const std::string& flag);
// Sets the CUDA math precision (kernels/precision.h). On the CPU, tf32 is
// accepted and has no effect (logged); bf16 is a usage error (no bfloat16 path).
void apply_precision(const std::string& precision, Device device);

// One subcommand: its CLI11 node and what runs when it was chosen (returns the
// exit code).
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

Command add_train_command(CLI::App& app);
Command add_gradcheck_command(CLI::App& app);
Command add_eval_command(CLI::App& app);
Command add_infer_command(CLI::App& app);
Command add_bench_command(CLI::App& app);
Command add_inspect_command(CLI::App& app);
Command add_gen_data_command(CLI::App& app);
Command add_compare_command(CLI::App& app);
Command add_export_command(CLI::App& app);

// Exit codes (docs/cli.md).
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitInterrupted = 130;

}  // namespace kvc::cli
