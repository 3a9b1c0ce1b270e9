// Guards on the files the commands read and write: inputs must be regular files, an existing
// output must be a regular file other than the input, outputs must fit on the disk, one run per
// output folder (a flock lock), and temp files removed on interrupts and swept after kills.
#pragma once

#include <cstdint>
#include <string>

namespace kvc {

// What `path` is, for messages: "a regular file", "a directory", "a FIFO", "a character device",
// "a block device", "a socket", or "missing". Symbolic links are followed.
std::string file_kind(const std::string& path);

// Throws unless `path` exists and is a regular file: a FIFO would block its reader forever and a
// device would be read without end. `what` starts the message ("kv file", "checkpoint").
void require_regular_file(const std::string& path, const std::string& what);

// An output about to be created or replaced: fine when missing or a regular file. A device, FIFO,
// socket or folder is refused: renaming a new file over /dev/null would replace the device node.
void require_replaceable_output(const std::string& path, const std::string& what);

// Throws when `input` and `output` are the same file (also through links or another spelling):
// replacing the output would destroy the input.
void require_distinct_files(const std::string& input, const std::string& output,
                            const std::string& what);

// Throws, naming both sizes, when the file system holding `folder` has less than `bytes` free for
// this user. A check before a long write, so that a file that cannot fit fails at once.
void require_free_space(const std::string& folder, uint64_t bytes, const std::string& what);

// "12.3 MB", "4.0 GB": sizes in messages.
std::string human_bytes(uint64_t bytes);

// An exclusive lock on a run folder, held for the object's lifetime: flock() on
// <folder>/.kvcompress.lock, which holds the holder's pid. A second run into the same folder is
// refused naming that pid. The kernel drops the lock when the process dies, killed or not, so a
// crashed run never leaves the folder locked.
class FolderLock {
 public:
  explicit FolderLock(const std::string& folder);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

  static constexpr const char* kFileName = ".kvcompress.lock";

 private:
  int fd_ = -1;
};

// Temp files of atomic writers (".<name>.tmp-<pid>", see atomic_file.h) are registered here when
// named, so that a signal that ends the process can remove them. Registering the same path twice
// is harmless; there is room for a few dozen (more are left to the sweep below).
void register_temp_file(const std::string& path);
// Unlinks every registered temp file. Async-signal-safe: for signal handlers.
void remove_registered_temp_files() noexcept;

// Removes ".<name>.tmp-<pid>" files in `dir` whose writer process no longer exists (a SIGKILL
// gives it no chance to clean up). With `name` set, only the temp files of that target name.
void sweep_stale_temp_files(const std::string& dir, const std::string& name = "");

}  // namespace kvc
