// Batch {k, v, q}, the KV shape of a data source, the train/eval split and the source interface.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/error.h"
#include "core/tensor.h"

namespace kvc {

struct Batch {
  Tensor k;  // (b, h, seq, d)
  Tensor v;  // (b, h, seq, d)
  Tensor q;  // (b, h*G, nq, d), G query heads per KV head
  // (b, nq): each query's position in [0, seq), whole numbers in q's dtype and device
  // (causal distillation); undefined when the source has none.
  Tensor q_pos;
};

// Defaults are SPEC section 9's `small` configuration.
struct KVShape {
  int64_t batch = 2;
  int64_t heads = 2;
  int64_t dim_head = 32;
  int64_t seq = 256;
  int64_t queries = 32;
  int64_t query_heads = 1;  // G: queries are (b, heads * G, nq, d)
};

// A process's part of a global batch in data-parallel training: part `index` of `count` holds
// rows [index * batch, (index + 1) * batch) of the global batch of count * batch rows that one
// process with batch count * batch would draw, random draws included.
struct Shard {
  int64_t index = 0;
  int64_t count = 1;
};

// Train and eval draw from different random streams (synthetic) or sequences (files).
enum class Split : uint8_t { train, eval };
inline const char* split_name(Split s) { return s == Split::train ? "train" : "eval"; }

// What the trainer reads batches from: a deterministic stream of batches indexed from 0.
// next() returns batch_at(position()) and advances; a resume calls set_position() with the
// saved position and continues the same stream.
class KVSource {
 public:
  virtual ~KVSource() = default;
  virtual Batch next() = 0;
  virtual Batch batch_at(uint64_t index) = 0;
  virtual uint64_t position() const = 0;
  virtual void set_position(uint64_t position) = 0;
  // batch = batch size of every batch (a file's eval split may end with a smaller one).
  virtual KVShape shape() const = 0;
  // Distinct batches before the stream repeats or reshuffles; 0 for an endless generator.
  virtual uint64_t batches_per_epoch() const = 0;
  virtual std::string describe() const = 0;  // one line for logs: kind, path or seed, split

  // The source's state for a checkpoint, as the stream "data_position" of `streams`: the
  // position alone decides what comes next (a file's epoch and shuffle order follow from it and
  // the seed).
  void state_dict(std::map<std::string, std::vector<uint64_t>>& streams) const {
    streams["data_position"] = {position()};
  }
  // Continues from a state_dict's position; throws when `streams` lacks a one-value
  // "data_position".
  void load_state_dict(const std::map<std::string, std::vector<uint64_t>>& streams) {
    const auto it = streams.find("data_position");
    KVC_CHECK(it != streams.end() && it->second.size() == 1, "data: the state lacks ",
              "/rng/data_position (one position)");
    set_position(it->second[0]);
  }
};

}  // namespace kvc
