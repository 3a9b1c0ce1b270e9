// H5File: the HDF5 C API behind RAII handles, with every failure turned into a kvc::Error.
#include "data/h5file.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <type_traits>

#include "data/file_checks.h"

namespace kvc {

static_assert(std::is_same<hid_t, int64_t>::value, "h5file: expects HDF5 >= 1.10 (64-bit hid_t)");

namespace {

// HDF5 prints its error stack to stderr by default; the library never prints, so switch it off.
// Cheap, and per-thread in thread-safe HDF5 builds, hence called on every entry.
//
// The first call also asks HDF5 not to close files from an atexit handler: every file here is
// closed by its owner, and libhdf5 1.10 crashes at exit closing a file whose close failed.
void silence_hdf5() {
  static const bool no_atexit = H5dont_atexit() >= 0;
  (void)no_atexit;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

// HDF5's file drivers report a failed system call as "file write failed: time = ..., filename =
// ..., errno = 28, error message = 'No space left on device', buf = 0x..., ...": keep the first
// words and the system's message.
std::string concise(const std::string& desc) {
  const size_t details = desc.find(": time = ");
  const size_t msg = desc.find("error message = '");
  if (details == std::string::npos || msg == std::string::npos) return desc;
  const size_t start = msg + std::strlen("error message = '");
  const size_t end = desc.find('\'', start);
  if (end == std::string::npos) return desc;
  return desc.substr(0, details) + ": " + desc.substr(start, end - start);
}

// HDF5's own words for the last failure: the innermost message of the error stack (the most
// specific: "unable to open file: name = ..., errno = 2, error message = 'No such file...'").
std::string h5_reason() {
  std::vector<std::string> messages;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
        if (e->desc != nullptr && e->desc[0] != '\0') {
          static_cast<std::vector<std::string>*>(data)->push_back(e->desc);
        }
        return 0;
      },
      &messages);
  H5Eclear2(H5E_DEFAULT);
  if (messages.empty()) return "unknown HDF5 error";
  if (messages.size() == 1) return concise(messages.front());
  return messages.front() + ": " + concise(messages.back());
}

// Owns one hid_t and closes it with the matching H5?close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  ~Handle() {
    if (id_ >= 0) closer_(id_);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }
  // Closes now and says whether that worked: closing a dataset writes its cached chunks, so a
  // writer must check it (a failure in the destructor would lose data without a word).
  bool close() {
    const hid_t id = id_;
    id_ = -1;
    return id < 0 || closer_(id) >= 0;
  }

 private:
  hid_t id_;
  Closer closer_;
};

std::string normalize(const std::string& path) {
  if (path.empty()) return "/";
  return path[0] == '/' ? path : "/" + path;
}

hid_t mem_type(DType dtype) { return dtype == DType::f32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_DOUBLE; }
hid_t disk_type(DType dtype) { return dtype == DType::f32 ? H5T_IEEE_F32LE : H5T_IEEE_F64LE; }

std::vector<hsize_t> dims_of(const Shape& shape) {
  std::vector<hsize_t> dims(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) dims[i] = static_cast<hsize_t>(shape[i]);
  return dims;
}

// A dataspace for `shape`: scalar for shape ().
hid_t make_space(const Shape& shape) {
  if (shape.empty()) return H5Screate(H5S_SCALAR);
  const std::vector<hsize_t> dims = dims_of(shape);
  return H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
}

Shape space_shape(hid_t space) {
  const int nd = H5Sget_simple_extent_ndims(space);
  if (nd <= 0) return {};
  std::vector<hsize_t> dims(static_cast<size_t>(nd));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  Shape shape(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) shape[i] = static_cast<int64_t>(dims[i]);
  return shape;
}

std::string type_name_of(hid_t type) {
  const H5T_class_t cls = H5Tget_class(type);
  const size_t bits = H5Tget_size(type) * 8;
  if (cls == H5T_FLOAT) return "float" + std::to_string(bits);
  if (cls == H5T_INTEGER) {
    return (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
  }
  if (cls == H5T_STRING) return "string";
  return "other";
}

bool is_numeric(hid_t type) {
  const H5T_class_t cls = H5Tget_class(type);
  return cls == H5T_FLOAT || cls == H5T_INTEGER;
}

Tensor to_host(const Tensor& t) { return t.device().is_cpu() ? t : t.to(Device::cpu()); }

}  // namespace

// ---- file ----------------------------------------------------------------------------------

H5File H5File::open(const std::string& path, H5Mode mode) {
  silence_hdf5();
  hid_t id = -1;
  if (mode == H5Mode::create) {
    // The 1.10 file format checksums every piece of metadata (superblock, object headers with
    // their attributes, chunk indexes): a damaged byte is reported as such when read, rather
    // than parsed into a wrong size or a crash.
    Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_LATEST);
    id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
    KVC_CHECK(id >= 0, "h5: cannot create '", path, "': ", h5_reason());
  } else {
    struct stat st {};
    KVC_CHECK(::stat(path.c_str(), &st) == 0, "h5: cannot open '", path, "': no such file");
    // A FIFO or a device would block or never end the read: only regular files are HDF5 files.
    KVC_CHECK(S_ISREG(st.st_mode), "h5: cannot open '", path, "': it is ", file_kind(path),
              ", not a regular file");
    const unsigned flags = mode == H5Mode::read ? H5F_ACC_RDONLY : H5F_ACC_RDWR;
    id = H5Fopen(path.c_str(), flags, H5P_DEFAULT);
    if (id < 0) {
      const std::string reason = h5_reason();
      KVC_CHECK(H5Fis_hdf5(path.c_str()) > 0, "h5: cannot open '", path,
                "': not an HDF5 file (corrupt, truncated or another format): ", reason);
      KVC_FAIL("h5: cannot open '", path, "'", mode == H5Mode::read ? "" : " for writing", ": ",
               reason);
    }
  }
  return H5File(id, path, mode);
}

namespace {

// Points an open file's descriptor at an anonymous in-memory file, so that what HDF5 still
// writes (at the close) succeeds and vanishes, and the file on disk stays as it was: a temp file
// its writer removes. For files that will not be published (a failed write, an exception): on a
// full disk their close would fail, and libhdf5 1.10 keeps the id of a file whose close failed
// after freeing it, then closes it again at exit and crashes.
void abandon_disk_file(hid_t file) {
  Handle fapl(H5Fget_access_plist(file), H5Pclose);
  void* handle = nullptr;
  if (!fapl.ok() || H5Pget_driver(fapl.get()) != H5FD_SEC2 ||
      H5Fget_vfd_handle(file, H5P_DEFAULT, &handle) < 0 || handle == nullptr) {
    H5Eclear2(H5E_DEFAULT);
    return;
  }
  const int fd = *static_cast<int*>(handle);
  int sink = ::memfd_create("kvcompress-abandoned-h5", MFD_CLOEXEC);
  if (sink < 0) {
    std::FILE* f = std::tmpfile();  // a kernel without memfd: an unlinked temp file does as well
    sink = f != nullptr ? ::dup(::fileno(f)) : -1;
    if (f != nullptr) std::fclose(f);
  }
  if (sink < 0) return;
  ::dup2(sink, fd);
  ::close(sink);
}

// Discards an open file: abandon_disk_file, then the close (which extends the sink to the file's
// allocated size). A soft file-size limit (ulimit -S -f) applies to the in-memory sink too, so it
// is lifted to the hard limit for the close and put back.
void discard_file(hid_t file) {
  abandon_disk_file(file);
  struct rlimit limit {};
  const bool lift = ::getrlimit(RLIMIT_FSIZE, &limit) == 0 && limit.rlim_cur != limit.rlim_max;
  if (lift) {
    struct rlimit lifted = limit;
    lifted.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_FSIZE, &lifted);
  }
  H5Fclose(file);
  H5Eclear2(H5E_DEFAULT);
  if (lift) ::setrlimit(RLIMIT_FSIZE, &limit);
}

// libhdf5 1.10 cannot recover from a metadata flush that fails midway (a disk that fills up):
// its metadata cache is left in a state that every later flush and the close refuse, and the
// failed close crashes at exit. So before a flush the disk blocks of everything HDF5 has
// allocated in the file (its end of allocation: the metadata already has its addresses when the
// datasets are closed) are reserved with fallocate; a disk that cannot take them is reported
// here, before HDF5 writes anything. Returns the reason, "" when reserved or when the file
// system cannot reserve (the flush then reports what happens).
std::string reserve_for_flush(hid_t file) {
  haddr_t eoa = 0;
  void* handle = nullptr;
  Handle fapl(H5Fget_access_plist(file), H5Pclose);
  if (H5Fget_eoa(file, &eoa) < 0 || !fapl.ok() || H5Pget_driver(fapl.get()) != H5FD_SEC2 ||
      H5Fget_vfd_handle(file, H5P_DEFAULT, &handle) < 0 || handle == nullptr) {
    H5Eclear2(H5E_DEFAULT);
    return "";
  }
  const off_t want = static_cast<off_t>(eoa) + 4096;  // and a page to spare
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_FSIZE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
      static_cast<rlim_t>(want) > limit.rlim_cur) {
    return str("the file needs ", human_bytes(static_cast<uint64_t>(want)),
               ", over the process's file-size limit of ", human_bytes(limit.rlim_cur));
  }
  if (::fallocate(*static_cast<int*>(handle), FALLOC_FL_KEEP_SIZE, 0, want) == 0) return "";
  const int err = errno;
  if (err == EOPNOTSUPP || err == ENOSYS || err == EINVAL) return "";
  return str("cannot reserve ", human_bytes(static_cast<uint64_t>(want)),
             " on disk: ", std::strerror(err));
}

// Flushes (writable files) and closes; when the space for the flush cannot be reserved, or the
// flush fails anyway, the file is discarded instead. Returns the reason for a failure, "" on
// success.
std::string flush_and_close(hid_t file, bool writable) {
  if (writable) {
    std::string reason = reserve_for_flush(file);
    if (reason.empty() && H5Fflush(file, H5F_SCOPE_GLOBAL) < 0) reason = h5_reason();
    if (!reason.empty()) {
      discard_file(file);
      return reason;
    }
  }
  std::string reason;
  if (H5Fclose(file) < 0) reason = h5_reason();
  H5Eclear2(H5E_DEFAULT);
  return reason;
}

}  // namespace

H5File::H5File(int64_t id, std::string path, H5Mode mode)
    : id_(id),
      path_(std::move(path)),
      mode_(mode),
      unwinding_at_open_(std::uncaught_exceptions()) {}

void H5File::release() noexcept {
  if (id_ < 0) return;
  silence_hdf5();
  // A new file that an exception leaves behind is a temp file its writer removes: nothing more
  // need reach the disk, and a full disk must not fail the close (see abandon_disk_file).
  if (mode_ == H5Mode::create && std::uncaught_exceptions() > unwinding_at_open_) {
    discard_file(id_);
  } else {
    flush_and_close(id_, mode_ != H5Mode::read);
  }
  id_ = -1;
}

H5File::~H5File() { release(); }

H5File::H5File(H5File&& other) noexcept
    : id_(other.id_),
      path_(std::move(other.path_)),
      mode_(other.mode_),
      unwinding_at_open_(other.unwinding_at_open_) {
  other.id_ = -1;
}

H5File& H5File::operator=(H5File&& other) noexcept {
  if (this != &other) {
    release();
    id_ = other.id_;
    path_ = std::move(other.path_);
    mode_ = other.mode_;
    unwinding_at_open_ = other.unwinding_at_open_;
    other.id_ = -1;
  }
  return *this;
}

void H5File::discard() noexcept {
  if (id_ < 0) return;
  silence_hdf5();
  discard_file(id_);
  id_ = -1;
}

void H5File::flush() {
  silence_hdf5();
  KVC_CHECK(is_open(), "h5: flush of a closed file");
  std::string reason = mode_ == H5Mode::read ? "" : reserve_for_flush(id_);
  if (reason.empty() && H5Fflush(id_, H5F_SCOPE_GLOBAL) >= 0) return;
  if (reason.empty()) reason = h5_reason();
  discard();  // a file HDF5 could not flush cannot be closed normally either
  KVC_FAIL("h5: cannot flush '", path_, "': ", reason);
}

void H5File::close() {
  if (id_ < 0) return;
  silence_hdf5();
  const std::string reason = flush_and_close(id_, mode_ != H5Mode::read);
  id_ = -1;
  KVC_CHECK(reason.empty(), "h5: cannot close '", path_, "': ", reason);
}

void H5File::check_writable(const char* what, const std::string& object) const {
  KVC_CHECK(is_open(), "h5: ", what, " '", object, "' on a closed file");
  KVC_CHECK(mode_ != H5Mode::read, "h5: ", what, " '", object, "' in '", path_,
            "', which is open read-only");
}

// ---- structure -----------------------------------------------------------------------------

namespace {

// H5I_GROUP, H5I_DATASET, ... of the object at `path`, or H5I_BADID when any component is
// missing. Walks the components because H5Lexists fails on a missing intermediate in HDF5 1.10.
H5I_type_t object_type(hid_t file, const std::string& path) {
  const std::string p = normalize(path);
  if (p == "/") return H5I_GROUP;
  size_t pos = 0;
  while (true) {
    const size_t next = p.find('/', pos + 1);
    const std::string prefix = p.substr(0, next);
    if (prefix.size() > 1 && prefix.back() != '/') {
      if (H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return H5I_BADID;
      }
      Handle obj(H5Oopen(file, prefix.c_str(), H5P_DEFAULT), H5Oclose);
      if (!obj.ok()) {  // a dangling soft link
        H5Eclear2(H5E_DEFAULT);
        return H5I_BADID;
      }
      const H5I_type_t type = H5Iget_type(obj.get());
      if (next == std::string::npos || next + 1 == p.size()) return type;
      if (type != H5I_GROUP) return H5I_BADID;
    }
    if (next == std::string::npos) return H5I_BADID;
    pos = next;
  }
}

}  // namespace

bool H5File::has(const std::string& path) const {
  silence_hdf5();
  KVC_CHECK(is_open(), "h5: has('", path, "') on a closed file");
  return object_type(id_, path) != H5I_BADID;
}

bool H5File::is_group(const std::string& path) const {
  silence_hdf5();
  KVC_CHECK(is_open(), "h5: is_group('", path, "') on a closed file");
  return object_type(id_, path) == H5I_GROUP;
}

bool H5File::is_dataset(const std::string& path) const {
  silence_hdf5();
  KVC_CHECK(is_open(), "h5: is_dataset('", path, "') on a closed file");
  return object_type(id_, path) == H5I_DATASET;
}

std::vector<std::string> H5File::list(const std::string& group) const {
  silence_hdf5();
  const std::string g = normalize(group);
  KVC_CHECK(is_open(), "h5: list('", g, "') on a closed file");
  KVC_CHECK(object_type(id_, g) == H5I_GROUP, "h5: no group '", g, "' in '", path_, "'");
  Handle gid(H5Gopen2(id_, g.c_str(), H5P_DEFAULT), H5Gclose);
  KVC_CHECK(gid.ok(), "h5: cannot open group '", g, "' in '", path_, "': ", h5_reason());
  H5G_info_t info{};
  KVC_CHECK(H5Gget_info(gid.get(), &info) >= 0, "h5: cannot read group '", g, "' in '", path_,
            "': ", h5_reason());
  std::vector<std::string> names;
  names.reserve(info.nlinks);
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len =
        H5Lget_name_by_idx(gid.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    KVC_CHECK(len >= 0, "h5: cannot list group '", g, "' in '", path_, "': ", h5_reason());
    std::string name(static_cast<size_t>(len) + 1, '\0');
    H5Lget_name_by_idx(gid.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, &name[0], name.size(),
                       H5P_DEFAULT);
    name.resize(static_cast<size_t>(len));
    names.push_back(std::move(name));
  }
  return names;
}

void H5File::create_group(const std::string& path) {
  silence_hdf5();
  const std::string p = normalize(path);
  check_writable("create group", p);
  const H5I_type_t type = object_type(id_, p);
  if (type == H5I_GROUP) return;
  KVC_CHECK(type == H5I_BADID, "h5: cannot create group '", p, "' in '", path_,
            "': a dataset of that name exists");
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  Handle g(H5Gcreate2(id_, p.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  KVC_CHECK(g.ok(), "h5: cannot create group '", p, "' in '", path_, "': ", h5_reason());
}

void H5File::remove(const std::string& path) {
  silence_hdf5();
  const std::string p = normalize(path);
  check_writable("remove", p);
  KVC_CHECK(object_type(id_, p) != H5I_BADID, "h5: cannot remove '", p, "' from '", path_,
            "': no such object");
  KVC_CHECK(H5Ldelete(id_, p.c_str(), H5P_DEFAULT) >= 0, "h5: cannot remove '", p, "' from '",
            path_, "': ", h5_reason());
}

// ---- datasets ------------------------------------------------------------------------------

namespace {

// Opens a dataset or throws naming the file and the dataset.
hid_t open_dataset(hid_t file, const std::string& file_path, const std::string& p) {
  const H5I_type_t type = object_type(file, p);
  KVC_CHECK(type != H5I_BADID, "h5: no dataset '", p, "' in '", file_path, "'");
  KVC_CHECK(type == H5I_DATASET, "h5: '", p, "' in '", file_path, "' is a group, not a dataset");
  const hid_t ds = H5Dopen2(file, p.c_str(), H5P_DEFAULT);
  KVC_CHECK(ds >= 0, "h5: cannot open dataset '", p, "' in '", file_path, "': ", h5_reason());
  return ds;
}

void check_numeric(hid_t ds, const std::string& file_path, const std::string& p) {
  Handle type(H5Dget_type(ds), H5Tclose);
  KVC_CHECK(type.ok() && is_numeric(type.get()), "h5: dataset '", p, "' in '", file_path,
            "' holds ", type.ok() ? type_name_of(type.get()) : "?", ", not numbers");
}

// Replaces whatever is at p so a write never fails on an old object.
void unlink_if_present(hid_t file, const std::string& p) {
  if (object_type(file, p) != H5I_BADID) H5Ldelete(file, p.c_str(), H5P_DEFAULT);
}

// Creates a dataset (with parent groups) of `file_type` and shape; returns its id.
hid_t create_dataset_id(hid_t file, const std::string& file_path, const std::string& p,
                        hid_t file_type, const Shape& shape, hid_t dcpl) {
  unlink_if_present(file, p);
  Handle space(make_space(shape), H5Sclose);
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  const hid_t ds =
      H5Dcreate2(file, p.c_str(), file_type, space.get(), lcpl.get(), dcpl, H5P_DEFAULT);
  KVC_CHECK(ds >= 0, "h5: cannot create dataset '", p, "' ", shape, " in '", file_path,
            "': ", h5_reason());
  return ds;
}

// The number of chunks a chunked dataset of `dims` needs, or 0 when its chunk sizes are damaged.
hsize_t chunks_needed(hid_t dcpl, const std::vector<hsize_t>& dims) {
  hsize_t chunk[H5S_MAX_RANK] = {0};
  const int rank = static_cast<int>(dims.size());
  if (rank == 0 || rank > H5S_MAX_RANK || H5Pget_chunk(dcpl, rank, chunk) != rank) return 0;
  hsize_t needed = 1;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (chunk[i] == 0) return 0;
    if (__builtin_mul_overflow(needed, (dims[i] + chunk[i] - 1) / chunk[i], &needed)) return 0;
  }
  return needed;
}

// Throws unless the data a dataset's shape claims is really in the file: a damaged or hand-made
// file can claim 2^40 rows in a few bytes of metadata, and reading it would allocate for all of
// them first. Contiguous data must be stored whole and inside the file; chunked data must have
// every chunk stored (compressed chunks may be small, but they are there).
void check_stored_extent(hid_t file, hid_t ds, const std::string& file_path, const std::string& p) {
  Handle space(H5Dget_space(ds), H5Sclose);
  Handle type(H5Dget_type(ds), H5Tclose);
  Handle dcpl(H5Dget_create_plist(ds), H5Pclose);
  KVC_CHECK(space.ok() && type.ok() && dcpl.ok(), "h5: dataset '", p, "' in '", file_path,
            "' is damaged: ", h5_reason());
  const Shape shape = space_shape(space.get());
  int64_t bytes = static_cast<int64_t>(H5Tget_size(type.get()));
  for (int64_t d : shape) {
    KVC_CHECK(!__builtin_mul_overflow(bytes, d, &bytes), "h5: dataset '", p, "' in '", file_path,
              "' claims shape ", shape, ", more bytes than 64 bits can count");
  }
  if (bytes == 0) return;
  hsize_t file_size = 0;
  H5Fget_filesize(file, &file_size);
  const hsize_t stored = H5Dget_storage_size(ds);
  const auto want = static_cast<hsize_t>(bytes);
  switch (H5Pget_layout(dcpl.get())) {
    case H5D_COMPACT:
      KVC_CHECK(stored >= want, "h5: dataset '", p, "' ", shape, " in '", file_path,
                "' is damaged: it stores ", stored, " of its ", want, " bytes");
      break;
    case H5D_CONTIGUOUS:
      KVC_CHECK(stored == want && stored <= file_size, "h5: dataset '", p, "' ", shape, " in '",
                file_path, "' claims ", human_bytes(want), " of data but ",
                stored == 0 ? std::string("stores none") : "stores " + human_bytes(stored),
                " in a file of ", human_bytes(file_size), " (damaged or truncated)");
      break;
    case H5D_CHUNKED: {
      const hsize_t needed = chunks_needed(dcpl.get(), dims_of(shape));
      hsize_t have = 0;
      KVC_CHECK(needed > 0 && H5Dget_num_chunks(ds, space.get(), &have) >= 0, "h5: dataset '", p,
                "' ", shape, " in '", file_path, "' has a damaged chunk layout");
      KVC_CHECK(have == needed, "h5: dataset '", p, "' ", shape, " in '", file_path, "' claims ",
                human_bytes(want), " of data in ", needed, " chunks but stores ", have,
                " of them (damaged or incompletely written)");
      KVC_CHECK(stored <= file_size, "h5: dataset '", p, "' ", shape, " in '", file_path,
                "' is damaged: ", human_bytes(stored), " stored in a file of ",
                human_bytes(file_size));
      break;
    }
    default:
      KVC_FAIL("h5: dataset '", p, "' in '", file_path,
               "' uses a storage layout kvcompress does not read (virtual or external)");
  }
}

// Reads a whole numeric dataset flattened, converted to T by HDF5.
template <typename T>
std::vector<T> read_flat(hid_t file, const std::string& file_path, const std::string& p,
                         hid_t mem) {
  Handle ds(open_dataset(file, file_path, p), H5Dclose);
  check_numeric(ds.get(), file_path, p);
  check_stored_extent(file, ds.get(), file_path, p);
  Handle space(H5Dget_space(ds.get()), H5Sclose);
  std::vector<T> out(static_cast<size_t>(numel_of(space_shape(space.get()))));
  if (!out.empty()) {
    KVC_CHECK(H5Dread(ds.get(), mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) >= 0,
              "h5: cannot read dataset '", p, "' in '", file_path, "': ", h5_reason());
  }
  return out;
}

// Whole datasets are stored as one chunk with a Fletcher-32 checksum (a standard HDF5 filter
// that h5py reads): a damaged value in a checkpoint is an error, not a silently wrong weight.
// Scalars, empty datasets and ones over HDF5's 4 GB chunk limit stay unchecked.
void set_checksummed_layout(hid_t dcpl, const Shape& shape, hid_t disk) {
  const int64_t n = numel_of(shape);
  if (!shape.empty() && n > 0 && static_cast<double>(n) * H5Tget_size(disk) < 0x1p32 - 1) {
    const std::vector<hsize_t> chunk = dims_of(shape);
    H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data());
    H5Pset_fletcher32(dcpl);
  }
}

template <typename T>
void write_flat(hid_t file, const std::string& file_path, const std::string& p, hid_t disk,
                hid_t mem, const Shape& shape, const T* data) {
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  set_checksummed_layout(dcpl.get(), shape, disk);
  Handle ds(create_dataset_id(file, file_path, p, disk, shape, dcpl.get()), H5Dclose);
  KVC_CHECK(
      numel_of(shape) == 0 || H5Dwrite(ds.get(), mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0,
      "h5: cannot write dataset '", p, "' ", shape, " in '", file_path, "': ", h5_reason());
  KVC_CHECK(ds.close(), "h5: cannot write dataset '", p, "' ", shape, " in '", file_path,
            "': ", h5_reason());
}

// Selects rows [start, start + count) of a dataspace of `shape` (first axis).
void select_rows(hid_t space, const Shape& shape, int64_t start, int64_t count) {
  std::vector<hsize_t> offset(shape.size(), 0), extent = dims_of(shape);
  offset[0] = static_cast<hsize_t>(start);
  extent[0] = static_cast<hsize_t>(count);
  H5Sselect_hyperslab(space, H5S_SELECT_SET, offset.data(), nullptr, extent.data(), nullptr);
}

}  // namespace

Shape H5File::shape(const std::string& dataset) const {
  silence_hdf5();
  const std::string p = normalize(dataset);
  KVC_CHECK(is_open(), "h5: shape('", p, "') on a closed file");
  Handle ds(open_dataset(id_, path_, p), H5Dclose);
  Handle space(H5Dget_space(ds.get()), H5Sclose);
  return space_shape(space.get());
}

std::string H5File::type_name(const std::string& dataset) const {
  silence_hdf5();
  const std::string p = normalize(dataset);
  KVC_CHECK(is_open(), "h5: type_name('", p, "') on a closed file");
  Handle ds(open_dataset(id_, path_, p), H5Dclose);
  Handle type(H5Dget_type(ds.get()), H5Tclose);
  return type_name_of(type.get());
}

Tensor H5File::read(const std::string& dataset, DType dtype, Device device) const {
  silence_hdf5();
  const std::string p = normalize(dataset);
  KVC_CHECK(is_open(), "h5: read('", p, "') on a closed file");
  Handle ds(open_dataset(id_, path_, p), H5Dclose);
  check_numeric(ds.get(), path_, p);
  check_stored_extent(id_, ds.get(), path_, p);
  Handle space(H5Dget_space(ds.get()), H5Sclose);
  Tensor t = Tensor::empty(space_shape(space.get()), TensorOptions{}.with_dtype(dtype));
  if (t.numel() > 0) {
    KVC_CHECK(H5Dread(ds.get(), mem_type(dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, t.raw_data()) >= 0,
              "h5: cannot read dataset '", p, "' ", t.shape(), " in '", path_, "': ", h5_reason());
  }
  return device.is_cpu() ? t : t.to(device);
}

void H5File::check_stored(const std::string& dataset) const {
  silence_hdf5();
  const std::string p = normalize(dataset);
  KVC_CHECK(is_open(), "h5: check_stored('", p, "') on a closed file");
  Handle ds(open_dataset(id_, path_, p), H5Dclose);
  check_stored_extent(id_, ds.get(), path_, p);
}

Tensor H5File::read_rows(const std::string& dataset, int64_t start, int64_t count, DType dtype,
                         Device device) const {
  silence_hdf5();
  const std::string p = normalize(dataset);
  KVC_CHECK(is_open(), "h5: read_rows('", p, "') on a closed file");
  Handle ds(open_dataset(id_, path_, p), H5Dclose);
  check_numeric(ds.get(), path_, p);
  Handle file_space(H5Dget_space(ds.get()), H5Sclose);
  const Shape full = space_shape(file_space.get());
  KVC_CHECK(!full.empty(), "h5: read_rows of scalar dataset '", p, "' in '", path_, "'");
  KVC_CHECK(start >= 0 && count >= 0 && start + count <= full[0], "h5: rows [", start, ", ",
            start + count, ") out of range for dataset '", p, "' ", full, " in '", path_, "'");
  Shape part = full;
  part[0] = count;
  Tensor t = Tensor::empty(part, TensorOptions{}.with_dtype(dtype));
  if (t.numel() > 0) {
    select_rows(file_space.get(), full, start, count);
    Handle mem_space(make_space(part), H5Sclose);
    KVC_CHECK(H5Dread(ds.get(), mem_type(dtype), mem_space.get(), file_space.get(), H5P_DEFAULT,
                      t.raw_data()) >= 0,
              "h5: cannot read rows [", start, ", ", start + count, ") of dataset '", p, "' in '",
              path_, "': ", h5_reason());
  }
  return device.is_cpu() ? t : t.to(device);
}

void H5File::write(const std::string& path, const Tensor& t) {
  KVC_CHECK(t.defined(), "h5: write of an undefined tensor to '", normalize(path), "'");
  write(path, t, t.dtype());
}

void H5File::write(const std::string& path, const Tensor& t, DType disk) {
  silence_hdf5();
  const std::string p = normalize(path);
  check_writable("write", p);
  KVC_CHECK(t.defined(), "h5: write of an undefined tensor to '", p, "'");
  const Tensor host = to_host(t);
  write_flat(id_, path_, p, disk_type(disk), mem_type(host.dtype()), host.shape(),
             static_cast<const char*>(host.raw_data()));
}

void H5File::create_dataset(const std::string& path, const Shape& shape, DType disk,
                            int64_t chunk_rows) {
  create_typed_dataset(path, shape, disk_type(disk), chunk_rows);
}

void H5File::create_int64_dataset(const std::string& path, const Shape& shape, int64_t chunk_rows) {
  create_typed_dataset(path, shape, H5T_STD_I64LE, chunk_rows);
}

void H5File::create_typed_dataset(const std::string& path, const Shape& shape, int64_t disk_type,
                                  int64_t chunk_rows) {
  silence_hdf5();
  const std::string p = normalize(path);
  check_writable("create dataset", p);
  for (int64_t s : shape) KVC_CHECK(s >= 0, "h5: negative size in shape ", shape, " of '", p, "'");
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  const bool chunked = chunk_rows > 0 && !shape.empty() && numel_of(shape) > 0;
  if (chunked) {
    std::vector<hsize_t> chunk = dims_of(shape);
    chunk[0] = static_cast<hsize_t>(std::min(chunk_rows, shape[0]));
    H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data());
  }
  Handle ds(create_dataset_id(id_, path_, p, static_cast<hid_t>(disk_type), shape, dcpl.get()),
            H5Dclose);
  KVC_CHECK(ds.close(), "h5: cannot create dataset '", p, "' ", shape, " in '", path_,
            "': ", h5_reason());
}

void H5File::write_rows(const std::string& path, int64_t start, const Tensor& rows) {
  silence_hdf5();
  const std::string p = normalize(path);
  check_writable("write_rows", p);
  KVC_CHECK(rows.defined(), "h5: write_rows of an undefined tensor to '", p, "'");
  Handle ds(open_dataset(id_, path_, p), H5Dclose);
  Handle file_space(H5Dget_space(ds.get()), H5Sclose);
  const Shape full = space_shape(file_space.get());
  const Shape& part = rows.shape();
  KVC_CHECK(!full.empty() && part.size() == full.size() &&
                std::equal(part.begin() + 1, part.end(), full.begin() + 1),
            "h5: rows ", part, " do not fit dataset '", p, "' ", full, " in '", path_, "'");
  const int64_t count = part[0];
  KVC_CHECK(start >= 0 && start + count <= full[0], "h5: rows [", start, ", ", start + count,
            ") out of range for dataset '", p, "' ", full, " in '", path_, "'");
  if (rows.numel() == 0) return;
  const Tensor host = to_host(rows);
  select_rows(file_space.get(), full, start, count);
  Handle mem_space(make_space(part), H5Sclose);
  KVC_CHECK(H5Dwrite(ds.get(), mem_type(host.dtype()), mem_space.get(), file_space.get(),
                     H5P_DEFAULT, host.raw_data()) >= 0 &&
                ds.close(),
            "h5: cannot write rows [", start, ", ", start + count, ") of dataset '", p, "' in '",
            path_, "': ", h5_reason());
}

void H5File::write_scalar(const std::string& path, double value) {
  silence_hdf5();
  const std::string p = normalize(path);
  check_writable("write", p);
  write_flat(id_, path_, p, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {}, &value);
}

void H5File::write_scalar_int64(const std::string& path, int64_t value) {
  silence_hdf5();
  const std::string p = normalize(path);
  check_writable("write", p);
  write_flat(id_, path_, p, H5T_STD_I64LE, H5T_NATIVE_INT64, {}, &value);
}

double H5File::read_scalar(const std::string& path) const {
  silence_hdf5();
  const std::string p = normalize(path);
  KVC_CHECK(is_open(), "h5: read('", p, "') on a closed file");
  const std::vector<double> v = read_flat<double>(id_, path_, p, H5T_NATIVE_DOUBLE);
  KVC_CHECK(v.size() == 1, "h5: dataset '", p, "' in '", path_, "' holds ", v.size(),
            " values, not one");
  return v[0];
}

int64_t H5File::read_scalar_int64(const std::string& path) const {
  silence_hdf5();
  const std::string p = normalize(path);
  KVC_CHECK(is_open(), "h5: read('", p, "') on a closed file");
  const std::vector<int64_t> v = read_flat<int64_t>(id_, path_, p, H5T_NATIVE_INT64);
  KVC_CHECK(v.size() == 1, "h5: dataset '", p, "' in '", path_, "' holds ", v.size(),
            " values, not one");
  return v[0];
}

void H5File::write_int64s(const std::string& path, const std::vector<int64_t>& values) {
  silence_hdf5();
  const std::string p = normalize(path);
  check_writable("write", p);
  write_flat(id_, path_, p, H5T_STD_I64LE, H5T_NATIVE_INT64, {static_cast<int64_t>(values.size())},
             values.data());
}

std::vector<int64_t> H5File::read_int64s(const std::string& path) const {
  silence_hdf5();
  const std::string p = normalize(path);
  KVC_CHECK(is_open(), "h5: read('", p, "') on a closed file");
  return read_flat<int64_t>(id_, path_, p, H5T_NATIVE_INT64);
}

void H5File::write_doubles(const std::string& path, const std::vector<double>& values) {
  silence_hdf5();
  const std::string p = normalize(path);
  check_writable("write", p);
  write_flat(id_, path_, p, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE,
             {static_cast<int64_t>(values.size())}, values.data());
}

std::vector<double> H5File::read_doubles(const std::string& path) const {
  silence_hdf5();
  const std::string p = normalize(path);
  KVC_CHECK(is_open(), "h5: read('", p, "') on a closed file");
  return read_flat<double>(id_, path_, p, H5T_NATIVE_DOUBLE);
}

// ---- attributes ----------------------------------------------------------------------------

namespace {

void check_object(hid_t file, const std::string& file_path, const std::string& obj) {
  KVC_CHECK(object_type(file, obj) != H5I_BADID, "h5: no object '", obj, "' in '", file_path,
            "' to hold attributes");
}

hid_t open_attr(hid_t file, const std::string& file_path, const std::string& obj,
                const std::string& name) {
  check_object(file, file_path, obj);
  KVC_CHECK(H5Aexists_by_name(file, obj.c_str(), name.c_str(), H5P_DEFAULT) > 0,
            "h5: no attribute '", name, "' on '", obj, "' in '", file_path, "'");
  const hid_t a = H5Aopen_by_name(file, obj.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT);
  KVC_CHECK(a >= 0, "h5: cannot open attribute '", name, "' on '", obj, "' in '", file_path,
            "': ", h5_reason());
  return a;
}

// Creates (replacing) a scalar attribute of `type` and writes `data` as `mem`.
void write_attr(hid_t file, const std::string& file_path, const std::string& obj,
                const std::string& name, hid_t type, hid_t mem, const void* data) {
  check_object(file, file_path, obj);
  if (H5Aexists_by_name(file, obj.c_str(), name.c_str(), H5P_DEFAULT) > 0) {
    H5Adelete_by_name(file, obj.c_str(), name.c_str(), H5P_DEFAULT);
  }
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle a(H5Acreate_by_name(file, obj.c_str(), name.c_str(), type, space.get(), H5P_DEFAULT,
                             H5P_DEFAULT, H5P_DEFAULT),
           H5Aclose);
  KVC_CHECK(a.ok() && H5Awrite(a.get(), mem, data) >= 0, "h5: cannot write attribute '", name,
            "' on '", obj, "' in '", file_path, "': ", h5_reason());
}

template <typename T>
T read_numeric_attr(hid_t file, const std::string& file_path, const std::string& obj,
                    const std::string& name, hid_t mem) {
  Handle a(open_attr(file, file_path, obj, name), H5Aclose);
  Handle type(H5Aget_type(a.get()), H5Tclose);
  KVC_CHECK(is_numeric(type.get()), "h5: attribute '", name, "' on '", obj, "' in '", file_path,
            "' holds ", type_name_of(type.get()), ", not a number");
  Handle space(H5Aget_space(a.get()), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  KVC_CHECK(n == 1, "h5: attribute '", name, "' on '", obj, "' in '", file_path, "' holds ", n,
            " values, not one");
  T value{};
  KVC_CHECK(H5Aread(a.get(), mem, &value) >= 0, "h5: cannot read attribute '", name, "' on '", obj,
            "' in '", file_path, "': ", h5_reason());
  return value;
}

bool attr_is_float(hid_t file, const std::string& file_path, const std::string& obj,
                   const std::string& name) {
  Handle a(open_attr(file, file_path, obj, name), H5Aclose);
  Handle type(H5Aget_type(a.get()), H5Tclose);
  return type.ok() && H5Tget_class(type.get()) == H5T_FLOAT;
}

}  // namespace

bool H5File::has_attr(const std::string& object, const std::string& name) const {
  silence_hdf5();
  const std::string obj = normalize(object);
  KVC_CHECK(is_open(), "h5: has_attr on a closed file");
  if (object_type(id_, obj) == H5I_BADID) return false;
  return H5Aexists_by_name(id_, obj.c_str(), name.c_str(), H5P_DEFAULT) > 0;
}

std::vector<std::string> H5File::attr_names(const std::string& object) const {
  silence_hdf5();
  const std::string obj = normalize(object);
  KVC_CHECK(is_open(), "h5: attr_names on a closed file");
  check_object(id_, path_, obj);
  std::vector<std::string> names;
  hsize_t idx = 0;
  const herr_t status = H5Aiterate_by_name(
      id_, obj.c_str(), H5_INDEX_NAME, H5_ITER_INC, &idx,
      [](hid_t, const char* name, const H5A_info_t*, void* data) -> herr_t {
        static_cast<std::vector<std::string>*>(data)->push_back(name);
        return 0;
      },
      &names, H5P_DEFAULT);
  KVC_CHECK(status >= 0, "h5: cannot list attributes of '", obj, "' in '", path_,
            "': ", h5_reason());
  return names;
}

void H5File::set_attr(const std::string& object, const std::string& name,
                      const std::string& value) {
  silence_hdf5();
  const std::string obj = normalize(object);
  check_writable("set attribute on", obj);
  // Fixed length, stored in the attribute itself: a variable-length string lives in the file's
  // global heap, whose reader in libhdf5 trusts the heap's sizes and crashes on a damaged file.
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(1, value.size()));
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  std::string data = value;
  data.resize(std::max<size_t>(1, value.size()), '\0');
  write_attr(id_, path_, obj, name, type.get(), type.get(), data.data());
}

void H5File::set_attr(const std::string& object, const std::string& name, const char* value) {
  set_attr(object, name, std::string(value));
}

void H5File::set_attr(const std::string& object, const std::string& name, int64_t value) {
  silence_hdf5();
  const std::string obj = normalize(object);
  check_writable("set attribute on", obj);
  write_attr(id_, path_, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void H5File::set_attr(const std::string& object, const std::string& name, double value) {
  silence_hdf5();
  const std::string obj = normalize(object);
  check_writable("set attribute on", obj);
  write_attr(id_, path_, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

namespace {
// Longer string attributes are refused as damage: ours are names, paths and timestamps.
constexpr size_t kMaxStringAttr = 1 << 16;
}  // namespace

std::string H5File::attr_string(const std::string& object, const std::string& name) const {
  silence_hdf5();
  const std::string obj = normalize(object);
  KVC_CHECK(is_open(), "h5: attr_string on a closed file");
  Handle a(open_attr(id_, path_, obj, name), H5Aclose);
  Handle type(H5Aget_type(a.get()), H5Tclose);
  KVC_CHECK(H5Tget_class(type.get()) == H5T_STRING, "h5: attribute '", name, "' on '", obj,
            "' in '", path_, "' holds ", type_name_of(type.get()), ", not a string");
  Handle space(H5Aget_space(a.get()), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  KVC_CHECK(n == 1, "h5: attribute '", name, "' on '", obj, "' in '", path_, "' holds ", n,
            " strings, not one");
  if (H5Tis_variable_str(type.get()) > 0) {
    Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem.get(), H5T_VARIABLE);
    H5Tset_cset(mem.get(), H5Tget_cset(type.get()));
    char* data = nullptr;
    KVC_CHECK(H5Aread(a.get(), mem.get(), &data) >= 0, "h5: cannot read attribute '", name,
              "' on '", obj, "' in '", path_, "': ", h5_reason());
    std::string out = data != nullptr ? data : "";
    H5free_memory(data);
    return out;
  }
  // Fixed length (numpy bytes): read as stored, then cut at the first NUL and any space padding.
  // The size comes from the file: bound it by what the attribute really stores first.
  const size_t size = H5Tget_size(type.get());
  KVC_CHECK(size >= 1 && size <= kMaxStringAttr &&
                H5Aget_storage_size(a.get()) == static_cast<hsize_t>(size),
            "h5: attribute '", name, "' on '", obj, "' in '", path_, "' is damaged (a string of ",
            size, " bytes stored in ", H5Aget_storage_size(a.get()), ")");
  std::string buf(size + 1, '\0');
  KVC_CHECK(H5Aread(a.get(), type.get(), &buf[0]) >= 0, "h5: cannot read attribute '", name,
            "' on '", obj, "' in '", path_, "': ", h5_reason());
  buf.resize(std::strlen(buf.c_str()));
  if (H5Tget_strpad(type.get()) == H5T_STR_SPACEPAD) {
    while (!buf.empty() && buf.back() == ' ') buf.pop_back();
  }
  return buf;
}

int64_t H5File::attr_int64(const std::string& object, const std::string& name) const {
  silence_hdf5();
  KVC_CHECK(is_open(), "h5: attr_int64 on a closed file");
  const std::string obj = normalize(object);
  if (attr_is_float(id_, path_, obj, name)) {
    // HDF5 would convert 32.5 to 32 and 1e30 to the largest int64 without a word.
    const double x = read_numeric_attr<double>(id_, path_, obj, name, H5T_NATIVE_DOUBLE);
    KVC_CHECK(std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 0x1p63, "h5: attribute '",
              name, "' on '", obj, "' in '", path_, "' is ", x, ", not an integer");
    return static_cast<int64_t>(x);
  }
  return read_numeric_attr<int64_t>(id_, path_, obj, name, H5T_NATIVE_INT64);
}

double H5File::attr_double(const std::string& object, const std::string& name) const {
  silence_hdf5();
  KVC_CHECK(is_open(), "h5: attr_double on a closed file");
  return read_numeric_attr<double>(id_, path_, normalize(object), name, H5T_NATIVE_DOUBLE);
}

}  // namespace kvc
