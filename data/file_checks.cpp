// File guards: regular-file checks, distinct input and output, free space, the run-folder lock,
// and the temp-file registry and sweep.
#include "data/file_checks.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "base/error.h"

namespace kvc {

namespace {

std::string kind_of_mode(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

}  // namespace

std::string file_kind(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "missing";
  return kind_of_mode(st.st_mode);
}

void require_regular_file(const std::string& path, const std::string& what) {
  struct stat st {};
  KVC_CHECK(::stat(path.c_str(), &st) == 0, what, " '", path, "': ", std::strerror(errno));
  KVC_CHECK(S_ISREG(st.st_mode), what, " '", path, "' is ", kind_of_mode(st.st_mode),
            ", not a regular file");
}

void require_replaceable_output(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return;  // missing (or unreachable: the write will say)
  KVC_CHECK(S_ISREG(st.st_mode), what, ": refusing to replace '", path, "', which is ",
            kind_of_mode(st.st_mode), " (an output must be a regular file or not exist yet)");
}

void require_distinct_files(const std::string& input, const std::string& output,
                            const std::string& what) {
  struct stat in {
  }, out{};
  if (::stat(input.c_str(), &in) != 0 || ::stat(output.c_str(), &out) != 0) return;
  KVC_CHECK(!(in.st_dev == out.st_dev && in.st_ino == out.st_ino), what, ": the output '", output,
            "' is the input '", input, "'; writing it would destroy the input");
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"bytes", "KB", "MB", "GB", "TB", "PB", "EB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1000.0 && unit < 6) {
    value /= 1000.0;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
  return buf;
}

void require_free_space(const std::string& folder, uint64_t bytes, const std::string& what) {
  struct statvfs fs {};
  if (::statvfs(folder.c_str(), &fs) != 0) return;  // unknown: the write itself will tell
  const uint64_t available = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  KVC_CHECK(bytes <= available, what, ": needs ", human_bytes(bytes), " but only ",
            human_bytes(available), " is free in '", folder, "'");
}

// ---- the run-folder lock ---------------------------------------------------------------------

FolderLock::FolderLock(const std::string& folder) {
  const std::string path = folder + "/" + kFileName;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  KVC_CHECK(fd_ >= 0, "cannot create the lock file '", path, "': ", std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char holder[32] = {0};
    const ssize_t n = ::pread(fd_, holder, sizeof(holder) - 1, 0);
    std::string pid = n > 0 ? std::string(holder, static_cast<size_t>(n)) : "unknown";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    ::close(fd_);
    fd_ = -1;
    // File systems without locks (some network mounts): run unlocked rather than not at all.
    if (err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS) return;
    KVC_CHECK(err != EWOULDBLOCK, "output folder '", folder, "' is in use by another run (pid ",
              pid, "); wait for it to finish or choose another output folder");
    KVC_FAIL("cannot lock output folder '", folder, "': ", std::strerror(err));
  }
  const std::string text = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, text.data(), text.size(), 0) < 0) {
    // The pid is only for the message a second run prints; the lock holds without it.
  }
}

FolderLock::~FolderLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the descriptor releases the flock
}

// ---- temp files ------------------------------------------------------------------------------

namespace {

constexpr size_t kMaxTempFiles = 32;
constexpr size_t kMaxTempPath = 4096;

// Filled under the mutex, then published by `used`; a signal handler reads only published slots.
struct TempSlot {
  std::atomic<bool> used{false};
  char path[kMaxTempPath];
};
TempSlot g_temp_slots[kMaxTempFiles];
std::mutex g_temp_mutex;
static_assert(std::atomic<bool>::is_always_lock_free, "the temp-file registry must be lock-free");

}  // namespace

void register_temp_file(const std::string& path) {
  if (path.empty() || path.size() >= kMaxTempPath) return;
  std::lock_guard<std::mutex> lock(g_temp_mutex);
  for (TempSlot& slot : g_temp_slots) {
    if (slot.used.load(std::memory_order_relaxed) && path == slot.path) return;
  }
  for (TempSlot& slot : g_temp_slots) {
    if (!slot.used.load(std::memory_order_relaxed)) {
      std::memcpy(slot.path, path.c_str(), path.size() + 1);
      slot.used.store(true, std::memory_order_release);
      return;
    }
  }
}

void remove_registered_temp_files() noexcept {
  for (TempSlot& slot : g_temp_slots) {
    if (slot.used.load(std::memory_order_acquire)) ::unlink(slot.path);
  }
}

void sweep_stale_temp_files(const std::string& dir, const std::string& name) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  const std::string prefix = name.empty() ? "." : "." + name + ".tmp-";
  while (const dirent* e = ::readdir(d)) {
    const std::string file = e->d_name;
    const size_t tag = file.rfind(".tmp-");
    if (file.rfind(prefix, 0) != 0 || tag == std::string::npos) continue;
    if (!name.empty() && tag != prefix.size() - 5) continue;  // another target's temp file
    const std::string pid_text = file.substr(tag + 5);
    if (pid_text.empty() || pid_text.size() > 9 ||
        pid_text.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
    if (pid == ::getpid()) continue;
    // Only a writer that no longer exists: a live one is still renaming its file into place.
    if (::kill(pid, 0) != 0 && errno == ESRCH) ::unlink((dir + "/" + file).c_str());
  }
  ::closedir(d);
}

}  // namespace kvc
