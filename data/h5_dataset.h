// H5KVDataset: batches of KV sequences read on demand from an HDF5 file (SPEC section 5).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/batch.h"
#include "data/h5file.h"
#include "data/kv_file.h"

namespace kvc {

// Sequences [0, train_count) are the train split, the last max(1, count / 20) (5%, at least one)
// the eval split. Train batches follow a per-epoch permutation of the train split drawn from
// `seed` (Philox Fisher-Yates): batch index i is in epoch i / batches_per_epoch(), and each epoch
// uses floor(train_count / batch) full batches (the remainder differs per epoch). Eval batches
// walk the eval split in file order, min(batch, eval_count) sequences each, the last one possibly
// smaller. Only the rows of a batch are read (hyperslabs), so a file larger than memory works.
// Without a `q` dataset, queries are keys at `queries` random positions per sequence (shared by
// the heads) plus noise of std 0.1 * the RMS of that sequence's keys in that head, drawn from
// (seed, split, batch index); with G query heads per KV head, each query head g copies the keys
// of head g / G with its own noise. The drawn positions are the batch's q_pos. A shard (train
// split only) reads its rows of the global batch of count * batch sequences, and draws their
// queries keyed by their place in it, so N shards read what one dataset with N times the batch
// reads, and every sequence once per epoch.
class H5KVDataset : public KVSource {
 public:
  static constexpr double kQueryNoise = 0.1;

  H5KVDataset(const std::string& path, int64_t batch, uint64_t seed, Device device = Device::cpu(),
              DType dtype = DType::f32, Split split = Split::train, int64_t queries = 32,
              int64_t query_heads = 1, Shard shard = {});

  Batch next() override;
  Batch batch_at(uint64_t index) override;
  uint64_t position() const override { return position_; }
  void set_position(uint64_t position) override { position_ = position; }
  KVShape shape() const override;
  uint64_t batches_per_epoch() const override { return batches_per_epoch_; }
  std::string describe() const override;

  const KVFileInfo& info() const { return info_; }
  const std::string& path() const { return info_.path; }
  int64_t count() const { return info_.count; }  // N: sequences in the file, both splits
  int64_t heads() const { return info_.heads; }
  int64_t dim_head() const { return info_.dim_head; }
  int64_t seq() const { return info_.seq; }
  int64_t queries() const { return queries_; }  // the file's nq, else the constructor's
  bool file_has_queries() const { return info_.has_queries(); }
  static int64_t eval_count_for(int64_t count) { return count / 20 > 1 ? count / 20 : 1; }
  int64_t train_count() const { return info_.count - eval_count_for(info_.count); }
  int64_t eval_count() const { return eval_count_for(info_.count); }
  Split split() const { return split_; }

  // The file rows (sequence indices in [0, count)) that batch `index` holds, in batch order.
  std::vector<int64_t> rows_of(uint64_t index);
  // The train split's order in `epoch`: a permutation of [0, train_count()).
  const std::vector<int64_t>& permutation(uint64_t epoch);

 private:
  Tensor read_rows(const std::string& name, const std::vector<int64_t>& rows) const;
  // k (b, h, seq, d) on host -> q (b, h*G, nq, d) and its positions (b, nq).
  Batch queries_from_keys(const Tensor& k, uint64_t index) const;
  // q_pos rows as dtype_, checked to lie in [0, seq).
  Tensor read_positions(const std::vector<int64_t>& rows) const;

  H5File file_;
  KVFileInfo info_;
  int64_t batch_;
  uint64_t seed_;
  uint64_t key_;
  Device device_;
  DType dtype_;
  Split split_;
  int64_t queries_;
  int64_t query_heads_;  // G: the file's when it has q
  Shard shard_;
  uint64_t batches_per_epoch_ = 0;
  uint64_t position_ = 0;
  uint64_t perm_epoch_ = 0;
  std::vector<int64_t> perm_;  // permutation of epoch perm_epoch_ (empty until first use)
};

}  // namespace kvc
