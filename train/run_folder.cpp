// One run per output folder: refuse another run's folder unless --resume or --overwrite.
#include "train/run_folder.h"

#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "base/error.h"

namespace kvc::train {

namespace {

// The canonical path of a folder, or "" when it cannot be resolved.
std::string real_folder(const std::string& dir) {
  char* p = ::realpath(dir.c_str(), nullptr);
  if (!p) return "";
  std::string out = p;
  ::free(p);
  return out;
}

std::string folder_of(const std::string& file) {
  const size_t slash = file.find_last_of('/');
  return slash == std::string::npos ? "." : slash == 0 ? "/" : file.substr(0, slash);
}

}  // namespace

void claim_run_folder(const std::string& out, const std::string& resume, bool overwrite) {
  std::vector<std::string> found;
  for (const char* name : {"checkpoint.h5", "best.h5", "metrics.csv"}) {
    if (::access((out + "/" + name).c_str(), F_OK) == 0) found.push_back(name);
  }
  if (found.empty()) return;
  const std::string out_real = real_folder(out);
  if (!resume.empty() && !out_real.empty() && real_folder(folder_of(resume)) == out_real) return;
  std::string list;
  for (const std::string& f : found) list += (list.empty() ? "" : ", ") + f;
  if (!overwrite) {
    KVC_FAIL("train: ", out, " holds another run (", list, "); continue it with --resume ", out,
             "/checkpoint.h5, start over with --overwrite, or choose another --out");
  }
  for (const char* name : {"checkpoint.h5", "best.h5", "metrics.csv", "loss.svg", "config.toml"}) {
    const std::string path = out + "/" + name;
    KVC_CHECK(::unlink(path.c_str()) == 0 || errno == ENOENT, "train: --overwrite cannot remove ",
              path, ": ", std::strerror(errno));
  }
  spdlog::info("--overwrite: removed the earlier run's {} from {}", list, out);
}

}  // namespace kvc::train
