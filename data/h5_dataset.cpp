// H5KVDataset: split, per-epoch shuffle, hyperslab reads, NaN checks and queries from keys.
#include "data/h5_dataset.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <numeric>

#include "base/philox.h"
#include "data/streams.h"

namespace kvc {

namespace {

namespace ds = data_streams;
enum Draw : uint64_t { kQueryPos = 5, kQueryNoise = 6 };

}  // namespace

H5KVDataset::H5KVDataset(const std::string& path, int64_t batch, uint64_t seed, Device device,
                         DType dtype, Split split, int64_t queries, int64_t query_heads,
                         Shard shard)
    : batch_(batch),
      seed_(seed),
      key_(ds::key(seed)),
      device_(device),
      dtype_(dtype),
      split_(split),
      queries_(queries),
      query_heads_(query_heads),
      shard_(shard) {
  KVC_CHECK(batch >= 1, "h5 dataset '", path, "': batch ", batch, " must be >= 1");
  KVC_CHECK(shard.count >= 1 && shard.index >= 0 && shard.index < shard.count &&
                (shard.count == 1 || split == Split::train),
            "h5 dataset '", path, "': shard ", shard.index, " of ", shard.count, " of the ",
            split_name(split), " split does not exist");
  std::error_code ec;
  KVC_CHECK(std::filesystem::exists(path, ec), "h5 dataset '", path, "': no such file");
  file_ = H5File::open(path, H5Mode::read);
  info_ = inspect_kv_file(file_);
  KVC_CHECK(info_.count >= 2, "h5 dataset '", path, "': ", info_.count,
            " sequence(s); need at least 2 (one is held out for eval)");
  if (info_.has_queries()) {
    queries_ = info_.queries;
    query_heads_ = info_.query_heads;
  } else {
    KVC_CHECK(query_heads >= 1, "h5 dataset '", path, "': query heads ", query_heads,
              " must be >= 1");
    KVC_CHECK(queries >= 1, "h5 dataset '", path, "': queries ", queries,
              " must be >= 1 (the file has no 'q', so queries are drawn from the keys)");
  }
  if (split == Split::train) {
    const int64_t global = batch * shard.count;
    KVC_CHECK(train_count() >= global, "h5 dataset '", path, "': the train split has ",
              train_count(), " sequence(s) (of ", info_.count, "), fewer than batch ", batch,
              shard.count > 1 ? str(" x ", shard.count, " processes") : "");
    batches_per_epoch_ = static_cast<uint64_t>(train_count() / global);
  } else {
    const int64_t eb = std::min(batch, eval_count());
    batches_per_epoch_ = static_cast<uint64_t>((eval_count() + eb - 1) / eb);
  }
}

KVShape H5KVDataset::shape() const {
  KVShape s;
  s.batch = split_ == Split::train ? batch_ : std::min(batch_, eval_count());
  s.heads = info_.heads;
  s.dim_head = info_.dim_head;
  s.seq = info_.seq;
  s.queries = queries_;
  s.query_heads = query_heads_;
  return s;
}

std::string H5KVDataset::describe() const {
  return str("h5 '", info_.path, "' (", info_.count, " sequences: ", train_count(), " train, ",
             eval_count(), " eval; ", split_name(split_), " split, batch ", shape().batch,
             ", heads ", info_.heads, ", seq ", info_.seq, ", dim_head ", info_.dim_head,
             ", queries ", queries_, info_.has_queries() ? " from the file" : " from the keys",
             ", seed ", seed_,
             shard_.count > 1 ? str(", part ", shard_.index + 1, " of ", shard_.count) : "", ")");
}

const std::vector<int64_t>& H5KVDataset::permutation(uint64_t epoch) {
  if (!perm_.empty() && perm_epoch_ == epoch) return perm_;
  const int64_t n = train_count();
  perm_.resize(static_cast<size_t>(n));
  std::iota(perm_.begin(), perm_.end(), int64_t{0});
  const uint64_t off = ds::offset(ds::kShuffle, epoch, 0);
  // Fisher-Yates with 64 random bits per swap: the modulo bias is below 2^-30 for any n that fits
  // on a disk.
  for (int64_t i = n - 1; i > 0; --i) {
    const uint64_t hi = philox::bits(key_, off, 2 * static_cast<uint64_t>(i));
    const uint64_t lo = philox::bits(key_, off, 2 * static_cast<uint64_t>(i) + 1);
    const int64_t j = static_cast<int64_t>(((hi << 32) | lo) % static_cast<uint64_t>(i + 1));
    std::swap(perm_[static_cast<size_t>(i)], perm_[static_cast<size_t>(j)]);
  }
  perm_epoch_ = epoch;
  return perm_;
}

std::vector<int64_t> H5KVDataset::rows_of(uint64_t index) {
  const uint64_t within = index % batches_per_epoch_;
  std::vector<int64_t> rows;
  if (split_ == Split::train) {
    const std::vector<int64_t>& perm = permutation(index / batches_per_epoch_);
    const int64_t first = static_cast<int64_t>(within) * batch_ * shard_.count +
                          shard_.index * batch_;  // this shard's place in the global batch
    for (int64_t s = 0; s < batch_; ++s) rows.push_back(perm[static_cast<size_t>(first + s)]);
  } else {
    const int64_t eb = std::min(batch_, eval_count());
    const int64_t begin = train_count() + static_cast<int64_t>(within) * eb;
    const int64_t end = std::min(begin + eb, info_.count);
    for (int64_t r = begin; r < end; ++r) rows.push_back(r);
  }
  return rows;
}

Tensor H5KVDataset::read_rows(const std::string& name, const std::vector<int64_t>& rows) const {
  Shape shape = file_.shape(name);
  shape[0] = static_cast<int64_t>(rows.size());
  Tensor out = Tensor::empty(shape, TensorOptions{}.with_dtype(dtype_));
  const size_t row_bytes = out.nbytes() / rows.size();
  char* dst = static_cast<char*>(out.raw_data());
  // Consecutive rows (the eval split, or neighbours after a shuffle) come in one hyperslab.
  for (size_t i = 0; i < rows.size();) {
    size_t j = i + 1;
    while (j < rows.size() && rows[j] == rows[j - 1] + 1) ++j;
    const Tensor run = read_kv_rows(file_, name, rows[i], static_cast<int64_t>(j - i), dtype_);
    std::memcpy(dst + i * row_bytes, run.raw_data(), run.nbytes());
    i = j;
  }
  return out;
}

Tensor H5KVDataset::read_positions(const std::vector<int64_t>& rows) const {
  const Tensor pos = read_rows("q_pos", rows);
  const std::vector<double> p = pos.to_vector();
  for (size_t i = 0; i < p.size(); ++i) {
    KVC_CHECK(p[i] >= 0 && p[i] < static_cast<double>(info_.seq), "kv file '", info_.path,
              "': q_pos of sequence ", rows[i / static_cast<size_t>(queries_)], " holds ", p[i],
              ", outside [0, seq ", info_.seq, ")");
  }
  return pos;
}

Batch H5KVDataset::queries_from_keys(const Tensor& k, uint64_t index) const {
  const int64_t b = k.size(0), h = k.size(1), n = k.size(2), d = k.size(3), nq = queries_;
  const int64_t g = query_heads_, hq = h * g;
  const TensorOptions host = TensorOptions{}.with_dtype(dtype_);
  const ds::Family family = ds::family_of(split_);
  const int64_t first_row = shard_.index * batch_;  // keys the draws by the global batch's rows
  Tensor q = Tensor::randn({b, hq, nq, d}, key_, ds::offset(family, index, kQueryNoise), 0.0, 1.0,
                           host, static_cast<uint64_t>(first_row * hq * nq * d));
  Tensor q_pos = Tensor::empty({b, nq}, host);
  const uint64_t pos_off = ds::offset(family, index, kQueryPos);
  KVC_DISPATCH_FLOAT(dtype_, "h5 dataset", [&] {
    const scalar_t* kp = k.data<scalar_t>();
    scalar_t* qp = q.data<scalar_t>();
    scalar_t* pp = q_pos.data<scalar_t>();
    for (int64_t s = 0; s < b; ++s) {
      std::vector<int64_t> pos(static_cast<size_t>(nq));
      for (int64_t j = 0; j < nq; ++j) {
        const double u =
            philox::uniform(key_, pos_off, static_cast<uint64_t>((first_row + s) * nq + j));
        pos[static_cast<size_t>(j)] = std::min<int64_t>(n - 1, static_cast<int64_t>(u * n));
        pp[s * nq + j] = static_cast<scalar_t>(pos[static_cast<size_t>(j)]);
      }
      for (int64_t hh = 0; hh < hq; ++hh) {
        const scalar_t* kh = kp + (s * h + hh / g) * n * d;
        double sq = 0;
        for (int64_t i = 0; i < n * d; ++i) sq += static_cast<double>(kh[i]) * kh[i];
        const double noise = kQueryNoise * std::sqrt(sq / static_cast<double>(n * d));
        scalar_t* qh = qp + (s * hq + hh) * nq * d;
        for (int64_t j = 0; j < nq; ++j) {
          const scalar_t* krow = kh + pos[static_cast<size_t>(j)] * d;
          for (int64_t c = 0; c < d; ++c) {
            qh[j * d + c] = static_cast<scalar_t>(krow[c] + noise * qh[j * d + c]);
          }
        }
      }
    }
  });
  Batch out;
  out.q = q;
  out.q_pos = q_pos;
  return out;
}

Batch H5KVDataset::batch_at(uint64_t index) {
  const std::vector<int64_t> rows = rows_of(index);
  Batch out;
  out.k = read_rows("k", rows);
  out.v = read_rows("v", rows);
  if (info_.has_queries()) {
    out.q = read_rows("q", rows);
    if (info_.has_positions) out.q_pos = read_positions(rows);
  } else {
    const Batch drawn = queries_from_keys(out.k, index);
    out.q = drawn.q;
    out.q_pos = drawn.q_pos;
  }
  if (!device_.is_cpu()) {
    out.k = out.k.to(device_);
    out.v = out.v.to(device_);
    out.q = out.q.to(device_);
    if (out.q_pos.defined()) out.q_pos = out.q_pos.to(device_);
  }
  return out;
}

Batch H5KVDataset::next() {
  Batch b = batch_at(position_);
  ++position_;
  return b;
}

}  // namespace kvc
