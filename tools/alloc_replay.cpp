// kvc_alloc_replay: replays a CUDA allocator trace (KVC_CUDA_ALLOC_TRACE=<file>, one line per
// request, free, park and block given back; kernels/caching_allocator.h) through the caching
// allocator's bookkeeping on the host, with made-up addresses and no memory, and says what it
// held. The bookkeeping is deterministic, so the replay first checks that it holds what the
// trace says the GPU's allocator held after every line: where it does, any question of "what
// would the allocator hold if..." can be answered here, without a GPU. One such question is
// built in: --park CLASS parks the blocks of that size class where the trace frees them and
// takes them back at the next request of the same size, as an optimizer's gradient storage does
// (core/storage.h), to replay a trace written before gradients were parked.
//
//   kvc_alloc_replay TRACE [--park CLASS_BYTES]
//
// Prints the lines read, whether the replay matched the trace's held bytes at each of them
// (with --park it cannot: it says so), and the peaks in use and held, over the whole trace and
// after its last empty_cache (where `kvcompress bench` starts its timed steps). Exit 0 once
// replayed; 1 for a trace it cannot read or a replay that does not match; 2 for bad arguments.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/caching_allocator.h"

namespace {

using kvc::kernels::CachingAllocator;

constexpr double kMiB = 1024.0 * 1024.0;

struct Replay {
  // Addresses far from anything real, a gap after each allocation so that no two touch.
  uintptr_t next = uintptr_t{1} << 44;
  CachingAllocator allocator{{[this](size_t bytes, int) {
                                void* p = reinterpret_cast<void*>(next);
                                next += bytes + (size_t{2} << 20);
                                return p;
                              },
                              [](void*, int) {}}};
  std::map<std::string, void*> pointer;     // the trace's pointer -> the replay's
  std::map<int, int> pool;                  // the trace's pool id -> the replay's
  int active = 0;                           // the trace's pool id now
  size_t park_class = 0;                    // --park: the class parked where freed
  std::map<size_t, void*> parked_by_bytes;  // --park: request bytes -> the parked block
  std::map<void*, size_t> bytes_of;         // --park: a block of that class now -> its request
  bool emptying = false;                    // inside an empty_cache's run of lines
  size_t lines = 0, mismatches = 0;
  std::string first_mismatch;
  size_t peak_since_empty_in_use = 0, peak_since_empty_reserved = 0;

  void note_peaks() {
    const kvc::kernels::AllocatorStats s = allocator.stats();
    peak_since_empty_in_use = std::max(peak_since_empty_in_use, s.bytes_in_use);
    peak_since_empty_reserved = std::max(peak_since_empty_reserved, s.bytes_reserved);
  }
  void expect_reserved(size_t traced) {
    const size_t got = allocator.stats().bytes_reserved;
    if (park_class != 0 || got == traced) return;
    if (mismatches++ == 0) {
      first_mismatch = "line " + std::to_string(lines) + ": the trace held " +
                       std::to_string(traced) + " bytes, the replay " + std::to_string(got);
    }
  }
  void empty_cache() {
    allocator.empty_cache();
    parked_by_bytes.clear();  // reclaimed and given back with the rest
    const kvc::kernels::AllocatorStats s = allocator.stats();
    peak_since_empty_in_use = s.bytes_in_use;
    peak_since_empty_reserved = s.bytes_reserved;
  }
  void set_pool(int traced) {
    if (traced == active) return;
    if (traced != 0 && pool.count(traced) == 0) pool[traced] = allocator.create_pool();
    allocator.set_active_pool(traced == 0 ? 0 : pool[traced]);
    active = traced;
  }
};

bool fail(const std::string& why) {
  std::fprintf(stderr, "kvc_alloc_replay: error: %s\n", why.c_str());
  return false;
}

// One line of the trace; `next` is the line after it ("" at the end), which tells an
// empty_cache's reclaims from an unpark's.
bool replay_line(Replay& r, const std::string& line, const std::string& next) {
  std::istringstream in(line);
  std::string op;
  in >> op;
  if (op != "reclaim" && op != "release") r.emptying = false;
  const auto bad = [&] {
    return fail("line " + std::to_string(r.lines) + " is not a trace line: " + line);
  };
  if (op == "alloc") {
    size_t bytes = 0, size = 0, reserved = 0;
    std::string ptr, pool_word, how, reserved_word;
    int pool = 0;
    // A request the allocator would have made of those bytes, below 1 TiB (no device has more).
    if (!(in >> bytes >> size >> ptr >> pool_word >> pool >> how >> reserved_word >> reserved) ||
        bytes > (size_t{1} << 40) || CachingAllocator::size_class(bytes) != size) {
      return bad();
    }
    r.set_pool(pool);
    void* p = nullptr;
    if (r.park_class != 0 && size == r.park_class) {
      const auto parked = r.parked_by_bytes.find(bytes);
      if (parked != r.parked_by_bytes.end()) {
        p = r.allocator.unpark(parked->second);
        r.parked_by_bytes.erase(parked);
      }
    }
    if (p == nullptr) p = r.allocator.alloc(bytes, 0);
    if (p == nullptr) return fail("the replay's allocator refused a request");
    // The block at p is this request's now: a class block to park where freed, or not one (its
    // address may have been a reclaimed class block's).
    if (r.park_class != 0 && size == r.park_class) {
      r.bytes_of[p] = bytes;
    } else {
      r.bytes_of.erase(p);
    }
    r.pointer[ptr] = p;
    r.expect_reserved(reserved);
  } else if (op == "free") {
    std::string ptr;
    if (!(in >> ptr)) return bad();
    const auto it = r.pointer.find(ptr);
    if (it == r.pointer.end())
      return fail("line " + std::to_string(r.lines) + " frees " + ptr + ", never allocated");
    void* p = it->second;
    r.pointer.erase(it);
    const auto grad = r.bytes_of.find(p);
    if (grad != r.bytes_of.end() && !r.allocator.in_graph_pool(p)) {  // as Storage::release
      r.allocator.park(p);
      r.parked_by_bytes[grad->second] = p;
    } else {
      r.allocator.free(p);
    }
  } else if (op == "park" || op == "unpark") {
    std::string ptr;
    if (!(in >> ptr)) return bad();
    const auto it = r.pointer.find(ptr);
    if (it == r.pointer.end())
      return fail("line " + std::to_string(r.lines) + " " + op + "s " + ptr + ", never allocated");
    if (op == "park") {
      r.allocator.park(it->second);
    } else if (r.allocator.unpark(it->second) == nullptr) {
      return fail("line " + std::to_string(r.lines) + ": the replay had reclaimed " + ptr);
    }
  } else if (op == "reclaim" || op == "release") {
    // An empty_cache (or a full device): reclaims, then releases, one run of lines. A reclaim
    // with neither after it is an unpark's under a graph pool (the next line allocates anew).
    const auto starts = [&](const char* word) { return next.rfind(word, 0) == 0; };
    if (op == "release" || starts("release") || starts("reclaim")) {
      if (!r.emptying) r.empty_cache();
      r.emptying = true;
    } else {
      std::string ptr;
      if (!(in >> ptr) || r.pointer.count(ptr) == 0) return bad();
      r.allocator.unpark(r.pointer[ptr]);  // reclaims it: a pool is active
    }
    if (op == "release") {  // the replay gave everything back at once: compare at the run's end
      size_t bytes = 0, reserved = 0;
      std::string word;
      if (!(in >> bytes >> word >> reserved)) return bad();
      if (!starts("release")) r.expect_reserved(reserved);
    }
  } else {
    return bad();
  }
  r.note_peaks();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const auto usage = [] {
    std::fprintf(stderr, "usage: kvc_alloc_replay TRACE [--park CLASS_BYTES]\n");
    return 2;
  };
  std::string path;
  size_t park_class = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--park" && i + 1 < argc) {
      char* end = nullptr;
      park_class = std::strtoull(argv[++i], &end, 10);
      if (*end != '\0' || park_class == 0) {
        std::fprintf(stderr,
                     "kvc_alloc_replay: error: --park wants a size class in bytes, got '%s'\n",
                     argv[i]);
        return 2;
      }
    } else if (path.empty() && a.rfind("--", 0) != 0) {
      path = a;
    } else {
      return usage();
    }
  }
  if (path.empty()) return usage();
  std::ifstream file(path);
  if (!file) {
    std::fprintf(stderr, "kvc_alloc_replay: error: cannot read %s\n", path.c_str());
    return 1;
  }
  std::vector<std::string> lines;
  for (std::string line; std::getline(file, line);) {
    if (!line.empty()) lines.push_back(line);
  }
  Replay r;
  r.park_class = park_class;
  for (size_t i = 0; i < lines.size(); ++i) {
    r.lines = i + 1;
    if (!replay_line(r, lines[i], i + 1 < lines.size() ? lines[i + 1] : "")) return 1;
  }
  const kvc::kernels::AllocatorStats s = r.allocator.stats();
  std::printf("lines %zu\n", lines.size());
  if (park_class != 0) {
    std::printf("matches the trace: not checked (--park %zu changes what is held)\n", park_class);
  } else if (r.mismatches == 0) {
    std::printf("matches the trace: yes, at every line\n");
  } else {
    std::printf("matches the trace: no, at %zu lines; the first: %s\n", r.mismatches,
                r.first_mismatch.c_str());
  }
  std::printf("peak in use %zu bytes (%.0f MiB), peak held %zu bytes (%.0f MiB)\n",
              s.peak_bytes_in_use, s.peak_bytes_in_use / kMiB, s.peak_bytes_reserved,
              s.peak_bytes_reserved / kMiB);
  std::printf(
      "after the last empty_cache: peak in use %zu bytes (%.0f MiB), peak held %zu bytes (%.0f "
      "MiB)\n",
      r.peak_since_empty_in_use, r.peak_since_empty_in_use / kMiB, r.peak_since_empty_reserved,
      r.peak_since_empty_reserved / kMiB);
  return r.mismatches == 0 ? 0 : 1;
}
