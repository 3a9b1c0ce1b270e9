// The caching allocator behind CUDA tensors, written over any device's raw allocation calls so
// that its bookkeeping runs (and is tested) without a GPU: kernels/cuda/memory.cu gives it
// cudaMalloc and cudaFree, the tests host memory.
//
// Requests are rounded to a size class: multiples of 512 B up to 1 MiB, then of 2 MiB (as
// PyTorch rounds its large blocks). A small block is cached and reused for its exact class only.
// A large one is carved out of a raw allocation (a segment): a request takes the smallest cached
// large block that fits and splits off the rest, and a freed block merges with its free
// neighbours in the segment. So memory freed by one tensor serves later tensors of other sizes,
// and a repeated training step finds what it needs in the cache after its first run.
//
// Graph pools: while pool `id` is active, every request is served from the pool's own cached
// blocks, else from the common cache or a new segment, and the block joins the pool; a block of a
// pool returns to it when freed and serves no one else (a graph's replays may write it at any
// time); blocks of different pools never merge. release_pool gives the pool's blocks back to the
// common cache once its graph is gone.
//
// Parking: an owner that gives a block up between two uses and wants it back whole (an
// optimizer's gradients, from its update to the next backward) parks it. A parked block is
// neither in use nor cached: no request takes it, so the next forward's activations cannot split
// it and the next backward gets it back whole, where otherwise it would find only smaller pieces
// and ask the device for more. Where the memory is wanted (empty_cache, a full device) or may not
// come back as it is (an unpark while a graph pool is active: the pool must own what a capture
// writes), the allocator reclaims it into the cache, and unpark says so.
//
// Nothing here synchronizes with a device: a block freed on the host is handed out again at once,
// which is safe where all work runs on one stream (kernels/cuda/common.cuh).
//
// With a trace set, every request, free and raw allocation is written as one line (see
// set_trace): enough to replay a run's requests against this bookkeeping and see where what it
// holds comes from. On CUDA, KVC_CUDA_ALLOC_TRACE=<file> turns it on (kernels/cuda/memory.cu).
#pragma once

#include <cstddef>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "kernels/memory.h"

namespace kvc::kernels {

class CachingAllocator {
 public:
  // The device's raw allocation: `allocate` returns nullptr when the device is out of memory
  // (other failures throw); `release` gives an allocation back.
  struct Backend {
    std::function<void*(size_t bytes, int device)> allocate;
    std::function<void(void* p, int device)> release;
  };

  static constexpr size_t kSmallClass = 512, kSmallLimit = size_t{1} << 20;
  static constexpr size_t kLargeClass = size_t{2} << 20;
  static size_t size_class(size_t bytes);

  explicit CachingAllocator(Backend backend);
  ~CachingAllocator();  // gives every raw allocation back
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // A block of size_class(bytes) bytes on `device`: from the cache, else a new raw allocation
  // (after giving the cache back once when the device is full). nullptr when even that fails.
  void* alloc(size_t bytes, int device);
  void free(void* p);  // back to the cache; throws for a pointer it did not hand out

  // Parks a block handed out now (see above); it stops counting as in use.
  void park(void* p);
  // A parked block back in use: p itself, or nullptr where the allocator reclaimed it (the owner
  // then allocates anew). Reclaims it, returning nullptr, while a graph pool is active.
  void* unpark(void* p);
  // A parked block its owner no longer wants (a no-op where it was reclaimed): into the cache.
  void discard(void* p);

  int create_pool();
  void set_active_pool(int id);  // 0: the common cache
  void release_pool(int id);
  bool in_graph_pool(const void* p) const;  // a block handed out now, from a pool

  // Gives back every raw allocation that is wholly free in the common cache.
  void empty_cache();
  // Lines to `out` from now on (null: none; the caller keeps the file open while set):
  //   alloc <bytes> <class bytes> <pointer> pool <id> <cached|split|new> reserved <bytes>
  //   free <pointer> <class bytes> pool <id>
  //   release <bytes> reserved <bytes>      (a raw allocation given back)
  //   park|unpark|reclaim <pointer> <class bytes>
  // "split": the request took part of a larger cached block. "new": a raw allocation.
  void set_trace(std::FILE* out);
  AllocatorStats stats() const;
  void reset_peak();

 private:
  struct Block {
    char* ptr = nullptr;
    size_t size = 0;
    int device = 0;
    int pool = 0;  // 0: the common cache
    bool small = false;
    bool in_use = false;
    bool parked = false;  // neither in use nor in a free list
    // Neighbours within the same raw allocation (large blocks only).
    Block* prev = nullptr;
    Block* next = nullptr;
  };
  struct BySizeThenAddress {
    bool operator()(const Block* a, const Block* b) const;
  };
  using LargeFree = std::set<Block*, BySizeThenAddress>;
  struct SmallKey {
    int device, pool;
    size_t size;
    bool operator<(const SmallKey& o) const;
  };

  // All of these expect mutex_ held.
  void into_use(Block* b);                       // b handed out: counted in use
  Block* out_of_use(void* p, const char* what);  // p's block, no longer in use; throws if not
  void to_cache(Block* b);  // a block out of use into its free list, merged with free neighbours
  Block* take(int device, int pool, size_t size, bool small);
  void insert_free(Block* b);
  void remove_free(Block* b);
  Block* merge_with_free_neighbours(Block* b);  // b is free and not in a free list
  void absorb_next(Block* a);  // a takes a->next's bytes; a->next (out of the free lists) deleted
  void release_cached();
  void reclaim(Block* b);  // a parked block into the cache
  void reclaim_parked();
  void note_in_use(size_t delta_up, size_t delta_down);

  Backend backend_;
  mutable std::mutex mutex_;
  std::map<std::pair<int, int>, LargeFree> large_free_;  // (device, pool)
  std::map<SmallKey, std::vector<Block*>> small_free_;
  std::unordered_map<const void*, Block*> in_use_;
  std::unordered_map<const void*, Block*> parked_;
  std::unordered_set<Block*> blocks_;  // every block, owned here
  std::set<int> pools_;
  int active_pool_ = 0, next_pool_ = 1;
  AllocatorStats stats_;
  std::FILE* trace_ = nullptr;
};

}  // namespace kvc::kernels
