// KV files (SPEC section 5): validation, checked row reads, and the atomic writer of gen-data.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/batch.h"
#include "data/h5file.h"

namespace kvc {

// What a valid KV file holds: `k`, `v` (count, heads, seq, dim_head) and optionally
// `q` (count, heads * G, queries, dim_head), each float16, float32 or float64 on disk, and with q
// optionally `q_pos` (count, queries) integers: each query's position in [0, seq).
struct KVFileInfo {
  std::string path;
  int64_t count = 0;
  int64_t heads = 0;
  int64_t seq = 0;
  int64_t dim_head = 0;
  int64_t queries = 0;                 // 0 when the file has no `q`
  int64_t query_heads = 1;             // G: `q` holds heads * G query heads
  bool has_positions = false;          // `q_pos` (count, queries), integers in [0, seq)
  std::string k_type, v_type, q_type;  // on-disk element types ("float16", ...)
  bool has_queries() const { return queries > 0; }
};

// Validates an open KV file; every problem is a one-line kvc::Error naming the file, the dataset
// and the shapes or types involved.
KVFileInfo inspect_kv_file(const H5File& file);
// Opens and validates `path` ("no such file" and unreadable files included).
KVFileInfo inspect_kv_file(const std::string& path);

// Rows [start, start + count) of dataset `name` ("k", "v" or "q") as `dtype` on `device`, read as
// one hyperslab (only those bytes leave the disk). Throws naming the file, the dataset and the
// sequence index when a value is NaN or infinite.
Tensor read_kv_rows(const H5File& file, const std::string& name, int64_t start, int64_t count,
                    DType dtype = DType::f32, Device device = Device::cpu());

// Streams a KV file to disk: float32 `k`, `v`, `q` datasets of `count` sequences, filled in order
// by append(). Writes go to a temporary file in the same folder; commit() renames it over `path`,
// so a crash, a kill or an exception never leaves a partial file at `path`. Destroying an
// uncommitted writer removes the temporary file.
class KVFileWriter {
 public:
  // q holds heads * query_heads heads when queries > 0; `positions` adds q_pos (count, queries),
  // int64, from each batch's q_pos.
  KVFileWriter(const std::string& path, int64_t count, int64_t heads, int64_t seq, int64_t dim_head,
               int64_t queries, int64_t query_heads = 1, bool positions = false);
  ~KVFileWriter();
  KVFileWriter(const KVFileWriter&) = delete;
  KVFileWriter& operator=(const KVFileWriter&) = delete;

  // Appends the first `rows` sequences of `batch` (all when rows < 0); any device and dtype.
  void append(const Batch& batch, int64_t rows = -1);
  // A root attribute (generator, seed, ...) recorded with the data.
  void set_attr(const std::string& name, const std::string& value);
  void set_attr(const std::string& name, int64_t value);
  // Requires every sequence written; flushes, closes and renames into place.
  void commit();
  int64_t written() const { return written_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  std::string path_;
  std::string temp_path_;
  H5File file_;
  int64_t count_, heads_, seq_, dim_head_, queries_, query_heads_;
  bool positions_;
  int64_t written_ = 0;
  bool committed_ = false;
};

// Writes one KV file from whole tensors: k, v (N, h, seq, d), q (N, h*G, nq, d); atomic as above.
void write_kv_file(const std::string& path, const Tensor& k, const Tensor& v, const Tensor& q);
// The same from batches of one shape, concatenated along the batch axis (with q_pos when the
// batches carry it).
void write_kv_file(const std::string& path, const std::vector<Batch>& batches);

// gen-data: `count` sequences of the synthetic generator (seed, train split, shape.batch
// sequences per generated batch; q of heads * query_heads heads and their q_pos) written to
// `path`, generated on `device`. `on_progress`, when given, is called with the number of
// sequences written after each batch.
void generate_kv_file(const std::string& path, const KVShape& shape, int64_t count, uint64_t seed,
                      Device device = Device::cpu(),
                      const std::function<void(int64_t)>& on_progress = {});

}  // namespace kvc
