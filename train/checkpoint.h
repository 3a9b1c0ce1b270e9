// Checkpoint files (SPEC section 6): atomic HDF5 writes and validated reads.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "optim/adam.h"
#include "train/metrics.h"
#include "train/settings.h"

namespace kvc::train {

inline constexpr const char* kCheckpointFormat = "kvcompress-checkpoint";
inline constexpr int64_t kCheckpointFormatVersion = 1;

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Root attributes: the run's stored settings (the settings table says which, under which
// attribute name; absent optional ones in older files take the table's fallback), the step and
// provenance. `steps` is the run's planned length (the LR schedule), `lr` the schedule's peak
// (attribute base_lr; /optim's lr is the last one used).
struct CheckpointMeta : RunSettings {
  int64_t step = 0;
  std::string created;             // ISO 8601, UTC; filled by save_checkpoint when empty
  std::string kvcompress_version;  // filled by save_checkpoint when empty
  // Where a resume changed the run's length (attributes "lr_replan_step", "lr_replan_lr"; step 0:
  // never): the LR schedule blends from that LR into the new plan (optim/lr_replan.h).
  int64_t lr_replan_step = 0;
  double lr_replan_lr = 0.0;
};

// /optim: the optimizer's state_dict.
using OptimState = AdamState;

// /rng: named streams of 64-bit counters: "data_position" (the training data source's state) and
// "dropout" (the pair's dropout counters, when it has dropout layers).
using RngStreams = std::map<std::string, std::vector<uint64_t>>;

// The union of the components' state_dicts: the run's record (meta), the pair's parameters, the
// optimizer, the random streams and the metrics history.
struct Checkpoint {
  CheckpointMeta meta;
  NamedTensors params;  // float32, keys with dots as in the PyTorch state_dict
  bool has_optim = false;
  OptimState optim;
  RngStreams rng;  // unsigned values are stored bit for bit as int64
  MetricsHistory metrics;
};

// Writes `ck` to `path` atomically: a temp file in the same folder
// (".<name>.tmp-<pid>"), H5Fflush, close, fsync, rename() over `path`, fsync of
// the folder. A crash at any moment leaves either the old file or the new one.
// Throws kvc::Error naming the path on failure and removes the temp file.
void save_checkpoint(const std::string& path, const Checkpoint& ck);

// Reads and validates a checkpoint: the file must exist, be HDF5, carry format
// "kvcompress-checkpoint" with a format_version this build reads, and have
// every attribute and group SPEC section 6 names. Tensors land on the CPU in
// float32, all finite. `with_optim` reads /optim when the file has it (a
// weights-only file loads with has_optim false); false skips it (inference).
// Errors are one line
// naming the file and what is wrong.
Checkpoint load_checkpoint(const std::string& path, bool with_optim = true);

// Reads only the root attributes (validated as above); cheap.
CheckpointMeta read_checkpoint_meta(const std::string& path);

// The current time as ISO 8601 UTC ("2025-03-01T12:34:56Z").
std::string iso8601_now();

}  // namespace kvc::train
