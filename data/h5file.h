// H5File: a thin RAII wrapper over the HDF5 C API (datasets <-> Tensors, groups, attributes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace kvc {

enum class H5Mode {
  read,        // existing file, read only
  read_write,  // existing file, read and write
  create,      // new file; an existing one is truncated
};

// One open HDF5 file. Paths are absolute inside the file ("/params/k_compress.conv.weight");
// a missing leading '/' is read as relative to the root. Dataset and group names may contain
// dots. Every failure throws kvc::Error naming the file, the object and HDF5's own reason;
// HDF5's printing of its error stack is switched off. Move-only; closing is the destructor's,
// which flushes first, and discards instead (see discard()) a new file destroyed by a throw or
// one whose flush failed: libhdf5 crashes at exit after a failed close, so a close must not fail.
// Not thread-safe (the serial HDF5 library is not).
class H5File {
 public:
  static H5File open(const std::string& path, H5Mode mode);

  H5File() = default;
  ~H5File();
  H5File(H5File&& other) noexcept;
  H5File& operator=(H5File&& other) noexcept;
  H5File(const H5File&) = delete;
  H5File& operator=(const H5File&) = delete;

  bool is_open() const { return id_ >= 0; }
  const std::string& path() const { return path_; }
  // Writes everything to disk (before a rename over an old checkpoint). A failed flush (disk
  // full) discards the file: it is closed and nothing more is written to it.
  void flush();
  void close();  // idempotent; reports a failed close as an error
  // Closes without writing anything more to the disk: for a temp file that is about to be
  // removed (a writer that failed or was interrupted). Never fails.
  void discard() noexcept;

  // ---- structure ----
  // True when every component of `path` exists (a group, dataset or any link). "/" is true.
  bool has(const std::string& path) const;
  bool is_group(const std::string& path) const;
  bool is_dataset(const std::string& path) const;
  // Names (not paths) of a group's direct members, sorted by name.
  std::vector<std::string> list(const std::string& group = "/") const;
  // Creates the group and any missing parents; an existing group is fine.
  void create_group(const std::string& path);
  // Removes a link (dataset or group); a missing one is an error.
  void remove(const std::string& path);

  // ---- datasets ----
  Shape shape(const std::string& dataset) const;
  // The on-disk element type: "float16", "float32", "float64", "int8" .. "int64",
  // "uint8" .. "uint64", "string", or "other".
  std::string type_name(const std::string& dataset) const;
  // The whole dataset converted by HDF5 to `dtype` (float16/32/64 or integer on disk), on
  // `device`. A scalar dataset gives shape ().
  Tensor read(const std::string& dataset, DType dtype = DType::f32,
              Device device = Device::cpu()) const;
  // Throws unless the data the dataset's shape claims is stored in the file (whole, inside the
  // file, every chunk present): a damaged file can claim 2^40 rows in a few bytes. read() and the
  // flat reads check this before allocating; read_rows leaves it to its caller (once per file).
  void check_stored(const std::string& dataset) const;
  // Rows [start, start + count) along the first axis (a hyperslab: only those bytes are read).
  Tensor read_rows(const std::string& dataset, int64_t start, int64_t count,
                   DType dtype = DType::f32, Device device = Device::cpu()) const;
  // Writes `t` (any device) as a dataset of `t`'s dtype, creating parent groups; an existing
  // dataset at `path` is replaced.
  void write(const std::string& path, const Tensor& t);
  // The same, stored on disk as `disk` (float32 or float64), converted by HDF5.
  void write(const std::string& path, const Tensor& t, DType disk);
  // An empty dataset of `shape` to be filled with write_rows (for files larger than memory).
  // chunk_rows > 0 makes it chunked along the first axis with that many rows per chunk.
  void create_dataset(const std::string& path, const Shape& shape, DType disk,
                      int64_t chunk_rows = 0);
  // The same with int64 on disk (positions, indices): write_rows converts whole-number values.
  void create_int64_dataset(const std::string& path, const Shape& shape, int64_t chunk_rows = 0);
  // Writes `rows` (count, rest of the dataset's shape...) at rows [start, start + count).
  void write_rows(const std::string& path, int64_t start, const Tensor& rows);

  // Scalar and 1-D datasets of plain numbers (steps, counters, metrics).
  void write_scalar(const std::string& path, double value);
  void write_scalar_int64(const std::string& path, int64_t value);
  double read_scalar(const std::string& path) const;  // any numeric scalar or 1-element dataset
  int64_t read_scalar_int64(const std::string& path) const;
  void write_int64s(const std::string& path, const std::vector<int64_t>& values);
  std::vector<int64_t> read_int64s(const std::string& path) const;  // any integer dataset, flat
  void write_doubles(const std::string& path, const std::vector<double>& values);
  std::vector<double> read_doubles(const std::string& path) const;  // any numeric dataset, flat

  // ---- attributes, on the root ("/") or any group or dataset ----
  bool has_attr(const std::string& object, const std::string& name) const;
  std::vector<std::string> attr_names(const std::string& object = "/") const;
  // Written as a fixed-length UTF-8 string (h5py reads it as bytes); replaces an existing
  // attribute of that name. Fixed length keeps the text inside the attribute: variable-length
  // strings live in a heap that libhdf5 reads unchecked (a damaged one crashes the reader).
  void set_attr(const std::string& object, const std::string& name, const std::string& value);
  void set_attr(const std::string& object, const std::string& name, const char* value);
  void set_attr(const std::string& object, const std::string& name, int64_t value);
  void set_attr(const std::string& object, const std::string& name, double value);
  // Reads fixed- or variable-length strings (older checkpoints hold variable-length ones).
  std::string attr_string(const std::string& object, const std::string& name) const;
  // Numeric attributes of any integer or float type, converted by HDF5; must hold one value.
  // attr_int64 of a float attribute requires an integral value in range (32.5 is an error).
  int64_t attr_int64(const std::string& object, const std::string& name) const;
  double attr_double(const std::string& object, const std::string& name) const;

 private:
  H5File(int64_t id, std::string path, H5Mode mode);
  void check_writable(const char* what, const std::string& object) const;
  void release() noexcept;  // the destructor's close
  // create_dataset with the HDF5 file type `disk_type` (a hid_t).
  void create_typed_dataset(const std::string& path, const Shape& shape, int64_t disk_type,
                            int64_t chunk_rows);

  int64_t id_ = -1;  // hid_t of the open file (hid_t is int64_t in HDF5 >= 1.10)
  std::string path_;
  H5Mode mode_ = H5Mode::read;
  int unwinding_at_open_ = 0;  // std::uncaught_exceptions() when opened
};

}  // namespace kvc
