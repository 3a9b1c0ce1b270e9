// The caching allocator's bookkeeping (kernels/caching_allocator.h) over host memory: size
// classes, large blocks split and merged across sizes, exact-class small blocks, graph pools,
// giving the cache back, parking, a random workload whose blocks must never overlap, and a GPU
// run's trace replayed on the host (tools/alloc_replay.cpp).
#include <doctest/doctest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "base/error.h"
#include "base/philox.h"
#include "kernels/caching_allocator.h"
#include "tests/test_train_util.h"

namespace kvc {
namespace {

using kernels::CachingAllocator;
constexpr size_t MiB = size_t{1} << 20;

// Raw host allocations standing in for a device's, with a cap on what may be held at once.
struct HostBackend {
  size_t held = 0, cap = SIZE_MAX;
  std::map<void*, size_t> live;
  CachingAllocator::Backend backend() {
    return {[this](size_t bytes, int) -> void* {
              if (held + bytes > cap) return nullptr;
              void* p = std::aligned_alloc(512, bytes);
              live[p] = bytes;
              held += bytes;
              return p;
            },
            [this](void* p, int) {
              held -= live.at(p);
              live.erase(p);
              std::free(p);
            }};
  }
};

char* as_bytes(void* p) { return static_cast<char*>(p); }

// The trace lines `body` makes the allocator write.
template <typename Body>
std::vector<std::string> traced(CachingAllocator& a, Body&& body) {
  std::FILE* f = std::tmpfile();
  REQUIRE(f != nullptr);
  a.set_trace(f);
  body();
  a.set_trace(nullptr);
  std::rewind(f);
  std::vector<std::string> lines;
  char buf[256];
  while (std::fgets(buf, sizeof buf, f) != nullptr) lines.emplace_back(buf);
  std::fclose(f);
  return lines;
}

std::string pointer_text(const void* p) {
  char s[32];
  std::snprintf(s, sizeof s, "%p", p);
  return s;
}

}  // namespace

TEST_CASE("allocator: size classes of 512 B up to 1 MiB, of 2 MiB above") {
  CHECK(CachingAllocator::size_class(1) == 512);
  CHECK(CachingAllocator::size_class(512) == 512);
  CHECK(CachingAllocator::size_class(513) == 1024);
  CHECK(CachingAllocator::size_class(MiB) == MiB);
  CHECK(CachingAllocator::size_class(MiB + 1) == 2 * MiB);
  CHECK(CachingAllocator::size_class(5 * MiB) == 6 * MiB);
}

TEST_CASE("allocator: freed large blocks serve requests of other sizes, split and merged again") {
  HostBackend host;
  CachingAllocator a(host.backend());
  void* big = a.alloc(10 * MiB, 0);
  a.free(big);
  CHECK(a.stats().bytes_cached == 10 * MiB);
  // Two smaller requests are carved out of it, in address order, with no new raw allocation.
  void* four = a.alloc(4 * MiB, 0);
  void* six = a.alloc(6 * MiB, 0);
  CHECK(four == big);
  CHECK(six == as_bytes(big) + 4 * MiB);
  CHECK(a.stats().device_allocations == 1);
  CHECK(a.stats().bytes_in_use == 10 * MiB);
  CHECK(a.stats().bytes_cached == 0);
  // Freed, they merge back into one block that serves the whole size again.
  a.free(four);
  a.free(six);
  CHECK(a.alloc(10 * MiB, 0) == big);
  CHECK(a.stats().device_allocations == 1);
  // A request larger than any cached block is a new raw allocation.
  void* twelve = a.alloc(12 * MiB, 0);
  CHECK(a.stats().device_allocations == 2);
  CHECK(a.stats().bytes_reserved == 22 * MiB);
  CHECK(a.stats().peak_bytes_reserved == 22 * MiB);
  a.free(twelve);
}

TEST_CASE("allocator: a trace says how each request was served, each free and each release") {
  HostBackend host;
  CachingAllocator a(host.backend());
  void* big = nullptr;
  const std::vector<std::string> lines = traced(a, [&] {
    big = a.alloc(10 * MiB - 5, 0);  // new: a raw allocation of the 10 MiB class
    a.free(big);
    void* four = a.alloc(4 * MiB, 0);    // split off the cached 10 MiB block
    a.free(four);                        // merges back
    void* again = a.alloc(10 * MiB, 0);  // the whole cached block
    a.free(again);
    a.empty_cache();
  });
  void* untraced = a.alloc(MiB, 0);
  a.free(untraced);
  const auto ptr = pointer_text;
  const std::string ten = std::to_string(10 * MiB), four_mib = std::to_string(4 * MiB);
  const std::vector<std::string> want = {
      "alloc " + std::to_string(10 * MiB - 5) + " " + ten + " " + ptr(big) +
          " pool 0 new reserved " + ten + "\n",
      "free " + ptr(big) + " " + ten + " pool 0\n",
      "alloc " + four_mib + " " + four_mib + " " + ptr(big) + " pool 0 split reserved " + ten +
          "\n",
      "free " + ptr(big) + " " + four_mib + " pool 0\n",
      "alloc " + ten + " " + ten + " " + ptr(big) + " pool 0 cached reserved " + ten + "\n",
      "free " + ptr(big) + " " + ten + " pool 0\n",
      "release " + ten + " reserved 0\n",
  };
  CHECK(lines == want);
}

TEST_CASE("allocator: a request takes the smallest cached block that fits") {
  HostBackend host;
  CachingAllocator a(host.backend());
  void* eight = a.alloc(8 * MiB, 0);
  void* four = a.alloc(4 * MiB, 0);
  a.free(eight);
  a.free(four);
  CHECK(a.alloc(4 * MiB, 0) == four);
  CHECK(a.alloc(2 * MiB, 0) == eight);  // the 8 MiB block, split
  CHECK(a.stats().device_allocations == 2);
}

TEST_CASE("allocator: small blocks are reused for their exact class only") {
  HostBackend host;
  CachingAllocator a(host.backend());
  void* p = a.alloc(1000, 0);  // class 1024
  a.free(p);
  CHECK(a.alloc(600, 0) == p);  // also 1024
  void* q = a.alloc(100, 0);    // 512: a new one
  CHECK(q != p);
  CHECK(a.stats().device_allocations == 2);
  CHECK(a.stats().bytes_in_use == 1536);
}

TEST_CASE("allocator: a graph pool's blocks serve only the pool until it is released") {
  HostBackend host;
  CachingAllocator a(host.backend());
  void* common = a.alloc(10 * MiB, 0);
  a.free(common);
  const int pool = a.create_pool();
  a.set_active_pool(pool);
  // The pool takes 4 MiB of the common block; the other 6 MiB stay common.
  void* in_pool = a.alloc(4 * MiB, 0);
  CHECK(in_pool == common);
  CHECK(a.in_graph_pool(in_pool));
  a.set_active_pool(0);
  void* outside = a.alloc(6 * MiB, 0);
  CHECK(outside == as_bytes(common) + 4 * MiB);
  CHECK_FALSE(a.in_graph_pool(outside));
  // Freed, the pool's block stays the pool's: not merged with the common neighbour, not handed
  // to a request outside the pool.
  a.free(outside);
  a.free(in_pool);
  void* other = a.alloc(4 * MiB, 0);
  CHECK(other == outside);  // the common 6 MiB block, split
  a.free(other);
  CHECK(a.stats().device_allocations == 1);
  // Inside the pool again, its own block comes first.
  a.set_active_pool(pool);
  CHECK(a.alloc(4 * MiB, 0) == in_pool);
  a.free(in_pool);
  a.set_active_pool(0);
  // Released, the pool's block joins the common cache and merges: the whole 10 MiB is one block.
  a.release_pool(pool);
  CHECK(a.alloc(10 * MiB, 0) == common);
  CHECK(a.stats().device_allocations == 1);
  CHECK_THROWS_WITH_AS(a.set_active_pool(pool), doctest::Contains("no memory pool"), Error);
}

TEST_CASE("allocator: a block in use when its pool is released comes back to the common cache") {
  HostBackend host;
  CachingAllocator a(host.backend());
  const int pool = a.create_pool();
  a.set_active_pool(pool);
  void* p = a.alloc(4 * MiB, 0);
  a.set_active_pool(0);
  a.release_pool(pool);
  CHECK_FALSE(a.in_graph_pool(p));
  a.free(p);
  CHECK(a.alloc(2 * MiB, 0) == p);
  CHECK(a.stats().device_allocations == 1);
}

TEST_CASE("allocator: empty_cache gives back only raw allocations that are wholly free") {
  HostBackend host;
  CachingAllocator a(host.backend());
  void* whole = a.alloc(4 * MiB, 0);
  void* split = a.alloc(10 * MiB, 0);
  void* small = a.alloc(4096, 0);
  a.free(whole);
  a.free(split);
  a.free(small);
  void* part = a.alloc(2 * MiB, 0);  // from the 4 MiB block (best fit)
  CHECK(part == whole);
  a.empty_cache();
  // The 10 MiB allocation and the small one went back; the 4 MiB one is partly in use.
  CHECK(a.stats().device_frees == 2);
  CHECK(host.live.size() == 1);
  CHECK(a.stats().bytes_reserved == 4 * MiB);
  CHECK(a.stats().bytes_cached == 2 * MiB);
  a.free(part);
  a.empty_cache();
  CHECK(host.live.empty());
  CHECK(a.stats().bytes_reserved == 0);
  CHECK(a.stats().bytes_cached == 0);
}

TEST_CASE("allocator: a full device gets the cache back once, then nullptr") {
  HostBackend host;
  host.cap = 10 * MiB;
  CachingAllocator a(host.backend());
  void* six = a.alloc(6 * MiB, 0);
  void* small = a.alloc(512, 0);
  a.free(six);
  a.free(small);
  // 8 MiB does not fit beside the cached 6 MiB: the cache goes back and the retry succeeds.
  void* eight = a.alloc(8 * MiB, 0);
  REQUIRE(eight != nullptr);
  CHECK(a.stats().device_frees == 2);
  CHECK(a.alloc(4 * MiB, 0) == nullptr);
  a.free(eight);
  CHECK_THROWS_WITH_AS(a.free(eight), doctest::Contains("free of pointer"), Error);
}

TEST_CASE("allocator: a parked block serves no one else and comes back whole") {
  HostBackend host;
  CachingAllocator a(host.backend());
  void* grad = a.alloc(8 * MiB, 0);
  a.park(grad);
  kernels::AllocatorStats s = a.stats();
  CHECK(s.bytes_in_use == 0);
  CHECK(s.bytes_cached == 0);
  CHECK(s.bytes_parked == 8 * MiB);
  CHECK(s.bytes_reserved == 8 * MiB);
  // A request that the parked block would fit gets new memory instead.
  void* act = a.alloc(4 * MiB, 0);
  CHECK(act != grad);
  CHECK(a.stats().device_allocations == 2);
  CHECK(a.unpark(grad) == grad);
  s = a.stats();
  CHECK(s.bytes_in_use == 12 * MiB);
  CHECK(s.bytes_parked == 0);
  CHECK(s.bytes_reserved == s.bytes_in_use + s.bytes_cached + s.bytes_parked);
  a.free(grad);
  a.free(act);
  CHECK_THROWS_WITH_AS(a.park(grad), doctest::Contains("park of pointer"), Error);
  CHECK(a.unpark(grad) == nullptr);  // never parked: nothing to give back
}

TEST_CASE("allocator: a parked block never merges with its free neighbours") {
  HostBackend host;
  CachingAllocator a(host.backend());
  void* whole = a.alloc(10 * MiB, 0);
  a.free(whole);
  void* grad = a.alloc(4 * MiB, 0);
  void* rest = a.alloc(6 * MiB, 0);
  REQUIRE(rest == as_bytes(whole) + 4 * MiB);
  a.park(grad);
  a.free(rest);
  // The 10 MiB would be whole again had the parked block merged: it must come from new memory.
  void* ten = a.alloc(10 * MiB, 0);
  CHECK(ten != whole);
  CHECK(a.stats().device_allocations == 2);
  // Discarded, it joins the cache and merges with the free 6 MiB beside it.
  a.discard(grad);
  CHECK(a.stats().bytes_parked == 0);
  CHECK(a.alloc(10 * MiB, 0) == whole);
  CHECK(a.stats().device_allocations == 2);
}

TEST_CASE("allocator: a parked block is reclaimed by empty_cache, a full device, a graph pool") {
  HostBackend host;
  SUBCASE("empty_cache gives it back to the device") {
    CachingAllocator a(host.backend());
    void* grad = a.alloc(8 * MiB, 0);
    a.park(grad);
    a.empty_cache();
    CHECK(host.live.empty());
    CHECK(a.stats().bytes_parked == 0);
    CHECK(a.stats().bytes_reserved == 0);
    CHECK(a.unpark(grad) == nullptr);
  }
  SUBCASE("a full device takes it") {
    host.cap = 10 * MiB;
    CachingAllocator a(host.backend());
    void* grad = a.alloc(8 * MiB, 0);
    a.park(grad);
    void* six = a.alloc(6 * MiB, 0);  // 8 + 6 do not fit: the parked block goes back first
    CHECK(six != nullptr);
    CHECK(a.stats().device_frees == 1);
    CHECK(a.unpark(grad) == nullptr);
  }
  SUBCASE("an unpark while a graph pool is active gives the pool its own block") {
    CachingAllocator a(host.backend());
    void* grad = a.alloc(8 * MiB, 0);
    a.park(grad);
    const int pool = a.create_pool();
    a.set_active_pool(pool);
    CHECK(a.unpark(grad) == nullptr);
    void* captured = a.alloc(8 * MiB, 0);  // the owner allocates anew: the same memory, the pool's
    CHECK(captured == grad);
    CHECK(a.in_graph_pool(captured));
    CHECK(a.stats().device_allocations == 1);
    a.free(captured);
    a.set_active_pool(0);
  }
}

TEST_CASE("allocator: the trace says when a block is parked, unparked and reclaimed") {
  HostBackend host;
  CachingAllocator a(host.backend());
  void* p = nullptr;
  const std::vector<std::string> lines = traced(a, [&] {
    p = a.alloc(4 * MiB, 0);
    a.park(p);
    a.unpark(p);
    a.park(p);
    a.discard(p);
  });
  std::vector<std::string> ops;
  for (const std::string& line : lines) {
    CHECK(line.find(pointer_text(p)) != std::string::npos);
    ops.push_back(line.substr(0, line.find(' ')));
  }
  CHECK(ops == std::vector<std::string>{"alloc", "park", "unpark", "park", "reclaim"});
}

TEST_CASE("allocator: a random workload never overlaps blocks and settles to no new memory") {
  HostBackend host;
  CachingAllocator a(host.backend());
  // One "step": 300 requests of mixed sizes, about a third freed soon after, the rest at the end.
  struct Live {
    char* p;
    size_t bytes;
    uint8_t tag;
  };
  // A "gradient" of 16 MiB lives across the steps, parked between them like an optimizer's:
  // each step takes it back first, finds its contents untouched, and parks it again at the end.
  char* grad = static_cast<char*>(a.alloc(16 * MiB, 0));
  const uint8_t grad_tag = 0xa5;
  std::memset(grad, grad_tag, 16 * MiB);
  a.park(grad);
  const auto step = [&](uint64_t seed) {
    REQUIRE(a.unpark(grad) == grad);
    bool grad_intact = true;
    for (size_t at = 0; at < 16 * MiB; at += 4096)
      grad_intact = grad_intact && grad[at] == static_cast<char>(grad_tag);
    REQUIRE(grad_intact);
    a.park(grad);  // parked while the step's requests run
    std::vector<Live> live;
    // The tag goes to the first and last byte and to every 4 KiB-aligned address in between:
    // two blocks that overlap by 4 KiB or more share such an address (small blocks, which are
    // never split, overlap nothing).
    const auto marks = [](const Live& l, const auto& visit) {
      visit(l.p);
      const uintptr_t first = (reinterpret_cast<uintptr_t>(l.p) + 4095) / 4096 * 4096;
      for (uintptr_t at = first; at < reinterpret_cast<uintptr_t>(l.p) + l.bytes; at += 4096) {
        visit(reinterpret_cast<char*>(at));
      }
      visit(l.p + l.bytes - 1);
    };
    const auto release = [&](size_t i) {
      const Live l = live[i];
      bool intact = true;
      marks(l, [&](char* c) { intact = intact && static_cast<uint8_t>(*c) == l.tag; });
      REQUIRE(intact);
      a.free(l.p);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    };
    for (uint32_t i = 0; i < 300; ++i) {
      const double u = philox::uniform(seed, 0, i);
      const size_t bytes = u < 0.5 ? 1 + static_cast<size_t>(u * 2 * MiB)
                                   : static_cast<size_t>((u - 0.5) * 2 * 24 * MiB) + 1;
      char* p = static_cast<char*>(a.alloc(bytes, 0));
      REQUIRE(p != nullptr);
      const uint8_t tag = static_cast<uint8_t>(i * 7 + 1);
      live.push_back({p, bytes, tag});
      marks(live.back(), [tag](char* c) { *c = static_cast<char>(tag); });
      if (philox::uniform(seed, 1, i) < 0.35) {
        release(
            static_cast<size_t>(philox::uniform(seed, 2, i) * static_cast<double>(live.size())));
      }
      const kernels::AllocatorStats s = a.stats();
      REQUIRE(s.bytes_reserved == s.bytes_in_use + s.bytes_cached + s.bytes_parked);
      REQUIRE(s.bytes_parked == 16 * MiB);
    }
    while (!live.empty()) release(live.size() - 1);
  };
  // Every step ends with all its blocks free, merged back into whole raw allocations: once one
  // step needs no new raw allocation, the next starts from the same cache and needs none either.
  std::vector<size_t> allocations_after;
  for (int i = 0; i < 8; ++i) {
    step(42);
    allocations_after.push_back(a.stats().device_allocations);
  }
  size_t settled = 1;
  while (settled < allocations_after.size() &&
         allocations_after[settled] != allocations_after[settled - 1]) {
    ++settled;
  }
  INFO("raw allocations after each step: ", allocations_after[0], " ", allocations_after[1], " ",
       allocations_after[2], " ", allocations_after[3], " ... ", allocations_after.back());
  CHECK(settled <= 4);
  CHECK(allocations_after.back() == allocations_after[settled - 1]);
  CHECK(a.stats().bytes_in_use == 0);
  a.empty_cache();  // reclaims the parked gradient too
  CHECK(a.stats().bytes_parked == 0);
  CHECK(host.live.empty());
}

namespace {

// kvc_alloc_replay's command (a space after it), and a trace kept in tests/data.
std::string replay_tool() { return std::string(KVC_BINARY_DIR) + "/kvc_alloc_replay "; }
std::string kept_trace(const char* name) {
  return std::string(KVC_SOURCE_DIR) + "/tests/data/" + name;
}

// Replays `trace`: it must hold what the trace says the GPU held after every line, and print
// `peaks` (its peaks after the trace's last empty_cache).
void check_replay_matches(const test::TempDir& dir, const std::string& trace,
                          const std::string& peaks) {
  const test::RunResult r = test::run_shell(replay_tool() + trace, dir.path);
  INFO(r.out, r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("matches the trace: yes, at every line") != std::string::npos);
  CHECK(r.out.find(peaks) != std::string::npos);
}

}  // namespace

// A trace the CUDA allocator wrote on an H100 (KVC_CUDA_ALLOC_TRACE, kvcompress bench --config
// long --compressor enhanced_mlp --precision tf32 --clip 0 --reps 2 --warmup-reps 1, before
// gradients were parked), replayed through the same bookkeeping on the host: it holds what the
// GPU's allocator held after every line, and its peak is what that bench reported
// (peak_reserved_bytes 8272196608). Replayed with the gradient segments' class parked, its peak
// is what the bench reported on the GPU once gradients were parked (7712257024).
TEST_CASE("allocator: a GPU run's trace replays on the host to the bytes the GPU held") {
  const test::TempDir dir("alloc_replay");
  const std::string tool = replay_tool();
  const std::string trace = kept_trace("alloc_trace_enhanced_mlp_long_tf32.txt");
  check_replay_matches(dir, trace,
                       "after the last empty_cache: peak in use 6846099456 bytes (6529 MiB), "
                       "peak held 8272196608 bytes");
  const test::RunResult parked = test::run_shell(tool + trace + " --park 555745280", dir.path);
  INFO(parked.out, parked.err);
  CHECK(parked.exit_code == 0);
  CHECK(parked.out.find("after the last empty_cache: peak in use 6846099456 bytes (6529 MiB), "
                        "peak held 7712257024 bytes") != std::string::npos);
  SUBCASE("a line that is not the trace's is refused with its number") {
    std::ofstream(dir / "bad.txt") << "alloc 512 512 0x10 pool 0 new reserved 512\nfrob 1\n";
    const test::RunResult r = test::run_shell(tool + dir / "bad.txt", dir.path);
    CHECK(r.exit_code == 1);
    CHECK(r.err == "kvc_alloc_replay: error: line 2 is not a trace line: frob 1\n");
    std::ofstream(dir / "size.txt") << "alloc 600 512 0x10 pool 0 new reserved 512\n";
    const test::RunResult s = test::run_shell(tool + dir / "size.txt", dir.path);
    CHECK(s.exit_code == 1);
    CHECK(s.err ==
          "kvc_alloc_replay: error: line 1 is not a trace line: alloc 600 512 0x10 pool 0 new "
          "reserved 512\n");
  }
  SUBCASE("a replay that does not match the trace says where") {
    std::ofstream(dir / "off.txt") << "alloc 512 512 0x10 pool 0 new reserved 1024\n";
    const test::RunResult r = test::run_shell(tool + dir / "off.txt", dir.path);
    CHECK(r.exit_code == 1);
    CHECK(r.out.find("no, at 1 lines; the first: line 1: the trace held 1024 bytes, the replay "
                     "512") != std::string::npos);
  }
  SUBCASE("bad arguments") {
    CHECK(test::run_shell(tool + "--park x " + trace, dir.path).exit_code == 2);
    CHECK(test::run_shell(tool, dir.path).exit_code == 2);
    CHECK(test::run_shell(tool + dir / "missing.txt", dir.path).exit_code == 1);
  }
}

// Another H100 trace (kvcompress bench --config long --compressor grouped_mlp --precision fp32
// --clip 0 --reps 2 --warmup-reps 1, gradients parked) replays to what the GPU held
// (7051582464). Its held bytes above the peak in use came in part from the attention backward's
// order: v's gradient (16 MiB) split the only free block the scores' gradient (128 MiB) would
// have fit, which then took a new one. With each backward's scores gradient requested before v's
// (the trace's lines swapped, as core/ops_fused.cpp now asks), the replay holds 6950919168 at
// most, and the GPU then measured 6950919168.
TEST_CASE("allocator: a replayed trace foretells what a change of request order holds") {
  const test::TempDir dir("alloc_replay_order");
  const std::string trace = kept_trace("alloc_trace_grouped_mlp_long_fp32.txt");
  check_replay_matches(dir, trace,
                       "after the last empty_cache: peak in use 6136797184 bytes "
                       "(5853 MiB), peak held 7051582464 bytes");

  // The backward's requests of v's gradient, the scores' gradient and k's: 16 MiB, 128 MiB,
  // 16 MiB in a row. The first two trade places.
  std::vector<std::string> lines;
  std::ifstream in(trace);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  const auto starts = [&](size_t i, const char* prefix) { return lines[i].rfind(prefix, 0) == 0; };
  int swapped = 0;
  for (size_t i = 0; i + 2 < lines.size(); ++i) {
    if (starts(i, "alloc 16777216 ") && starts(i + 1, "alloc 134217728 ") &&
        starts(i + 2, "alloc 16777216 ")) {
      std::swap(lines[i], lines[i + 1]);
      ++swapped;
    }
  }
  CHECK(swapped == 7);  // every backward of the trace: the bench's phases and its full steps
  {
    std::ofstream out(dir / "reordered.txt");
    for (const std::string& line : lines) out << line << '\n';
  }
  const test::RunResult reordered =
      test::run_shell(replay_tool() + dir / "reordered.txt", dir.path);
  INFO(reordered.out, reordered.err);
  CHECK(reordered.exit_code == 1);  // it no longer holds what the trace says: that is the point
  CHECK(reordered.out.find("after the last empty_cache: peak in use 6136797184 bytes (5853 MiB), "
                           "peak held 6950919168 bytes") != std::string::npos);
}

}  // namespace kvc
