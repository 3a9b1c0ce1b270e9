// How the data sources key their Philox streams: a seed-derived key apart from init and dropout,
// and offsets that separate the maps, the splits, the batches and the draws within a batch.
#pragma once

#include <cstdint>

#include "base/error.h"
#include "data/batch.h"

namespace kvc::data_streams {

// splitmix64's finalizer over seed ^ "kvc-data": nearby seeds get unrelated keys, and a data
// stream never coincides with an init or dropout stream of the same seed.
inline uint64_t key(uint64_t seed) {
  uint64_t x = seed ^ 0x6b76632d64617461ull;
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Offset bits 60..63: the family; bits 3..59: the batch (or epoch) index; bits 0..2: the draw.
enum Family : uint64_t { kShared = 0, kTrain = 1, kEval = 2, kShuffle = 3 };
constexpr uint64_t kMaxIndex = (1ull << 57) - 1;

inline uint64_t offset(Family family, uint64_t index, uint64_t draw) {
  KVC_CHECK(index <= kMaxIndex, "data: batch index ", index, " is beyond ", kMaxIndex);
  return (static_cast<uint64_t>(family) << 60) | (index << 3) | (draw & 7u);
}

inline Family family_of(Split split) { return split == Split::train ? kTrain : kEval; }

}  // namespace kvc::data_streams
