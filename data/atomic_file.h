// Atomic file replacement shared by every writer of a result file (checkpoints, metrics, the
// loss curve, infer output, KV files): write a temp file in the target's folder, sync it, then
// rename() it over the target, so a reader sees the old file or the new one, never a torn one.
#pragma once

#include <string>

namespace kvc {

// The temp file an atomic writer of `path` uses: ".<name>.tmp-<pid>" in the same folder (a
// rename() is atomic only within one file system). Naming it sweeps the temp files of `path` that
// killed writers left, and registers it for removal by a signal that ends the process.
std::string temp_path_for(const std::string& path);

// The folder holding `path` ("." for a bare name).
std::string folder_of(const std::string& path);

// fsync of a file (or, with `directory`, a folder) by path: HDF5 owns its descriptor while the
// file is open, so writers sync after closing. `what` prefixes the error.
void sync_path(const std::string& path, bool directory, const std::string& what);

// Publishes a closed temp file: fsync it, rename it over `path`, fsync the folder. On failure
// the temp file is removed and kvc::Error says `what` and why; the old `path` is untouched. An
// existing `path` that is not a regular file (a device, a FIFO) is refused, never replaced.
void publish_file(const std::string& tmp, const std::string& path, const std::string& what);

}  // namespace kvc
