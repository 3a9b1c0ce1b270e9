// KV file validation, checked hyperslab reads and the atomic streaming writer.
#include "data/kv_file.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "data/atomic_file.h"
#include "data/file_checks.h"
#include "data/synthetic.h"

namespace kvc {

namespace {

namespace fs = std::filesystem;

bool is_float_type(const std::string& t) {
  return t == "float16" || t == "float32" || t == "float64";
}

// Checks one of k, v, q: present, a dataset, a float type, four axes. Returns its shape.
Shape check_dataset(const H5File& f, const std::string& name, const char* layout) {
  KVC_CHECK(f.has(name), "kv file '", f.path(), "': no dataset '", name, "' (expected ", layout,
            ")");
  KVC_CHECK(f.is_dataset(name), "kv file '", f.path(), "': '", name,
            "' is a group, not a dataset (expected ", layout, ")");
  const std::string type = f.type_name(name);
  KVC_CHECK(is_float_type(type), "kv file '", f.path(), "': dataset '", name, "' holds ", type,
            ", expected float32 or float16");
  const Shape s = f.shape(name);
  KVC_CHECK(s.size() == 4, "kv file '", f.path(), "': dataset '", name, "' has shape ", s,
            ", expected ", layout);
  for (int64_t x : s) {
    KVC_CHECK(x >= 1, "kv file '", f.path(), "': dataset '", name, "' has an empty axis, shape ",
              s);
  }
  f.check_stored(name);  // the rows it claims are in the file: batches are sized from them
  return s;
}

// The first `rows` rows of t (a prefix shares t's storage and offset).
Tensor prefix_rows(const Tensor& t, int64_t rows) {
  if (rows == t.size(0)) return t;
  auto impl = std::make_shared<TensorImpl>(*t.detach().impl());
  impl->shape[0] = rows;
  return Tensor(std::move(impl));
}

}  // namespace

KVFileInfo inspect_kv_file(const H5File& f) {
  KVFileInfo info;
  info.path = f.path();
  const Shape k = check_dataset(f, "k", "(N, h, seq, d)");
  const Shape v = check_dataset(f, "v", "(N, h, seq, d) like k");
  KVC_CHECK(v == k, "kv file '", f.path(), "': dataset 'v' has shape ", v, " but 'k' has ", k);
  info.count = k[0];
  info.heads = k[1];
  info.seq = k[2];
  info.dim_head = k[3];
  info.k_type = f.type_name("k");
  info.v_type = f.type_name("v");
  if (f.has("q")) {
    const Shape q = check_dataset(f, "q", "(N, h, nq, d)");
    KVC_CHECK(q[0] == k[0] && q[1] % k[1] == 0 && q[3] == k[3], "kv file '", f.path(),
              "': dataset 'q' has shape ", q, " but 'k' has ", k,
              " (q must be (N, h*G, nq, d) with k's N, h and d)");
    info.queries = q[2];
    info.query_heads = q[1] / k[1];
    info.q_type = f.type_name("q");
  }
  if (f.has("q_pos")) {
    const std::string type = f.is_dataset("q_pos") ? f.type_name("q_pos") : "a group";
    KVC_CHECK(info.has_queries(), "kv file '", f.path(), "': 'q_pos' without a 'q' dataset");
    KVC_CHECK(type.rfind("int", 0) == 0 || type.rfind("uint", 0) == 0, "kv file '", f.path(),
              "': dataset 'q_pos' holds ", type, ", expected integers (int64)");
    const Shape p = f.shape("q_pos");
    KVC_CHECK(p == Shape({k[0], info.queries}), "kv file '", f.path(),
              "': dataset 'q_pos' has shape ", p,
              ", expected (N, nq) = ", Shape({k[0], info.queries}));
    info.has_positions = true;
  }
  return info;
}

KVFileInfo inspect_kv_file(const std::string& path) {
  std::error_code ec;
  KVC_CHECK(fs::exists(path, ec), "kv file '", path, "': no such file");
  KVC_CHECK(!fs::is_directory(path, ec), "kv file '", path, "': is a directory, not an HDF5 file");
  return inspect_kv_file(H5File::open(path, H5Mode::read));
}

Tensor read_kv_rows(const H5File& f, const std::string& name, int64_t start, int64_t count,
                    DType dtype, Device device) {
  const Shape s = f.shape(name);
  KVC_CHECK(!s.empty() && start >= 0 && count >= 0 && start + count <= s[0], "kv file '", f.path(),
            "': rows [", start, ", ", start + count, ") of dataset '", name,
            "' are outside its shape ", s);
  Tensor rows = f.read_rows(name, start, count, dtype, Device::cpu());
  const int64_t per_row = count > 0 ? rows.numel() / count : 0;
  KVC_DISPATCH_FLOAT(dtype, "read_kv_rows", [&] {
    const scalar_t* p = rows.data<scalar_t>();
    const int64_t n = rows.numel();
    for (int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(p[i])) {
        KVC_FAIL("kv file '", f.path(), "': dataset '", name, "' sequence ", start + i / per_row,
                 " holds a non-finite value (", static_cast<double>(p[i]), ")");
      }
    }
  });
  return device.is_cpu() ? rows : rows.to(device);
}

KVFileWriter::KVFileWriter(const std::string& path, int64_t count, int64_t heads, int64_t seq,
                           int64_t dim_head, int64_t queries, int64_t query_heads, bool positions)
    : path_(path),
      count_(count),
      heads_(heads),
      seq_(seq),
      dim_head_(dim_head),
      queries_(queries),
      query_heads_(query_heads),
      positions_(positions) {
  KVC_CHECK(count >= 1 && heads >= 1 && seq >= 1 && dim_head >= 1 && queries >= 0 &&
                query_heads >= 1 && (!positions || queries > 0),
            "kv file '", path, "': bad sizes: count ", count, ", heads ", heads, ", seq ", seq,
            ", dim_head ", dim_head, ", queries ", queries, ", query heads ", query_heads,
            positions ? " with positions" : "");
  std::error_code ec;
  require_replaceable_output(path, "kv file '" + path + "'");
  const fs::path parent = fs::path(path).parent_path();
  KVC_CHECK(parent.empty() || fs::is_directory(parent, ec), "kv file '", path, "': folder '",
            parent.string(), "' does not exist");
  // float32 k and v, and q: refuse at once a file the disk cannot hold, not after hours.
  const int64_t q_heads = checked_mul(heads, query_heads, "kv file");
  const int64_t kv_bytes = checked_mul(2 * 4, numel_of({count, heads, seq, dim_head}), "kv file");
  const int64_t q_bytes = checked_mul(4, numel_of({count, q_heads, queries, dim_head}), "kv file");
  const int64_t pos_bytes = positions ? checked_mul(8, numel_of({count, queries}), "kv file") : 0;
  require_free_space(folder_of(path), static_cast<uint64_t>(kv_bytes) + q_bytes + pos_bytes,
                     "kv file '" + path + "'");
  // Same folder as the target, so the final rename is atomic (one file system).
  temp_path_ = temp_path_for(path);
  file_ = H5File::open(temp_path_, H5Mode::create);
  file_.create_dataset("k", {count, heads, seq, dim_head}, DType::f32);
  file_.create_dataset("v", {count, heads, seq, dim_head}, DType::f32);
  if (queries > 0) file_.create_dataset("q", {count, q_heads, queries, dim_head}, DType::f32);
  if (positions) file_.create_int64_dataset("q_pos", {count, queries});
}

KVFileWriter::~KVFileWriter() {
  if (committed_) return;
  file_.discard();  // the temp file goes: nothing more need reach the disk
  std::error_code ec;
  fs::remove(temp_path_, ec);
}

void KVFileWriter::append(const Batch& batch, int64_t rows) {
  KVC_CHECK(!committed_, "kv file '", path_, "': append after commit");
  KVC_CHECK(batch.k.defined() && batch.v.defined(), "kv file '", path_, "': append needs k and v");
  const Shape want{batch.k.dim() > 0 ? batch.k.size(0) : 0, heads_, seq_, dim_head_};
  KVC_CHECK(batch.k.shape() == want && batch.v.shape() == want, "kv file '", path_, "': batch k ",
            batch.k.shape(), " / v ", batch.v.shape(), " do not match (b, ", heads_, ", ", seq_,
            ", ", dim_head_, ")");
  const int64_t b = want[0];
  if (queries_ > 0) {
    const Shape want_q{b, heads_ * query_heads_, queries_, dim_head_};
    KVC_CHECK(batch.q.defined() && batch.q.shape() == want_q, "kv file '", path_, "': batch q ",
              batch.q.defined() ? batch.q.shape() : Shape{}, " does not match ", want_q);
  }
  if (positions_) {
    const Shape want_pos{b, queries_};
    KVC_CHECK(batch.q_pos.defined() && batch.q_pos.shape() == want_pos, "kv file '", path_,
              "': batch q_pos ", batch.q_pos.defined() ? batch.q_pos.shape() : Shape{},
              " does not match ", want_pos);
  }
  if (rows < 0) rows = b;
  KVC_CHECK(rows <= b, "kv file '", path_, "': append of ", rows, " rows from a batch of ", b);
  KVC_CHECK(written_ + rows <= count_, "kv file '", path_, "': ", written_ + rows,
            " sequences appended to a file of ", count_);
  if (rows == 0) return;
  auto host_f32 = [&](const Tensor& t) {
    return prefix_rows(t.to(Device::cpu()).to(DType::f32), rows);
  };
  file_.write_rows("k", written_, host_f32(batch.k));
  file_.write_rows("v", written_, host_f32(batch.v));
  if (queries_ > 0) file_.write_rows("q", written_, host_f32(batch.q));
  if (positions_) file_.write_rows("q_pos", written_, host_f32(batch.q_pos));
  written_ += rows;
}

void KVFileWriter::set_attr(const std::string& name, const std::string& value) {
  file_.set_attr("/", name, value);
}

void KVFileWriter::set_attr(const std::string& name, int64_t value) {
  file_.set_attr("/", name, value);
}

void KVFileWriter::commit() {
  KVC_CHECK(!committed_, "kv file '", path_, "': committed twice");
  KVC_CHECK(written_ == count_, "kv file '", path_, "': only ", written_, " of ", count_,
            " sequences were written");
  file_.flush();
  file_.close();
  publish_file(temp_path_, path_, "kv file '" + path_ + "'");
  committed_ = true;
}

void write_kv_file(const std::string& path, const Tensor& k, const Tensor& v, const Tensor& q) {
  KVC_CHECK(k.defined() && k.dim() == 4, "kv file '", path, "': k must be (N, h, seq, d), got ",
            k.defined() ? k.shape() : Shape{});
  write_kv_file(path, std::vector<Batch>{Batch{k, v, q, Tensor()}});  // positions derived there
}

void write_kv_file(const std::string& path, const std::vector<Batch>& batches) {
  KVC_CHECK(!batches.empty(), "kv file '", path, "': no batches to write");
  const Batch& first = batches.front();
  KVC_CHECK(first.k.defined() && first.k.dim() == 4, "kv file '", path,
            "': k must be (b, h, seq, d), got ", first.k.defined() ? first.k.shape() : Shape{});
  int64_t count = 0;
  for (const Batch& b : batches) {
    KVC_CHECK(b.k.defined() && b.k.dim() == 4, "kv file '", path, "': a batch has no 4-D k");
    count += b.k.size(0);
  }
  const int64_t nq = first.q.defined() ? first.q.size(2) : 0;
  const int64_t g = first.q.defined() && first.q.dim() == 4
                        ? std::max<int64_t>(1, first.q.size(1) / first.k.size(1))
                        : 1;
  KVFileWriter w(path, count, first.k.size(1), first.k.size(2), first.k.size(3), nq, g,
                 nq > 0 && first.q_pos.defined());
  for (const Batch& b : batches) w.append(b);
  w.commit();
}

void generate_kv_file(const std::string& path, const KVShape& shape, int64_t count, uint64_t seed,
                      Device device, const std::function<void(int64_t)>& on_progress) {
  KVC_CHECK(count >= 1, "gen-data: count ", count, " must be >= 1");
  SyntheticKV gen(shape, seed, device, DType::f32, Split::train);
  KVFileWriter w(path, count, shape.heads, shape.seq, shape.dim_head, shape.queries,
                 shape.query_heads, /*positions=*/true);
  w.set_attr("generator", "kvcompress synthetic");
  w.set_attr("seed", static_cast<int64_t>(seed));
  for (uint64_t i = 0; w.written() < count; ++i) {
    w.append(gen.batch_at(i), std::min(shape.batch, count - w.written()));
    if (on_progress) on_progress(w.written());
  }
  w.commit();
}

}  // namespace kvc
