// Temp-file naming, fsync and rename for atomic file replacement.
#include "data/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/error.h"
#include "data/file_checks.h"

namespace kvc {

std::string folder_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string temp_path_for(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  const std::string folder = folder_of(path);
  // Writers of this target killed earlier (SIGKILL gives no chance to clean up) left theirs.
  sweep_stale_temp_files(folder, name);
  const std::string tmp = folder + "/." + name + ".tmp-" + std::to_string(::getpid());
  register_temp_file(tmp);  // removed by a signal that ends the process mid-write
  return tmp;
}

void sync_path(const std::string& path, bool directory, const std::string& what) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  KVC_CHECK(fd >= 0, what, ": cannot reopen ", path, " to sync it: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems refuse fsync on folders (EINVAL); the rename is still atomic there.
  KVC_CHECK(rc == 0 || (directory && (err == EINVAL || err == EBADF)), what, ": fsync of ", path,
            " failed: ", std::strerror(err));
}

void publish_file(const std::string& tmp, const std::string& path, const std::string& what) {
  try {
    require_replaceable_output(path, what);
    sync_path(tmp, false, what);
    KVC_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, what, ": cannot rename ", tmp, " to ", path,
              ": ", std::strerror(errno));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  sync_path(folder_of(path), true, what);
}

}  // namespace kvc
