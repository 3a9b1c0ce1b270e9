// The caching allocator's bookkeeping: size classes, best-fit large blocks split and merged
// within their raw allocation, exact-class small blocks, graph pools.
#include "kernels/caching_allocator.h"

#include <algorithm>
#include <functional>
#include <vector>

#include "base/error.h"

namespace kvc::kernels {

size_t CachingAllocator::size_class(size_t bytes) {
  if (bytes <= kSmallLimit)
    return std::max((bytes + kSmallClass - 1) / kSmallClass, size_t{1}) * kSmallClass;
  return (bytes + kLargeClass - 1) / kLargeClass * kLargeClass;
}

bool CachingAllocator::BySizeThenAddress::operator()(const Block* a, const Block* b) const {
  if (a->size != b->size) return a->size < b->size;
  return std::less<const char*>()(a->ptr, b->ptr);
}

bool CachingAllocator::SmallKey::operator<(const SmallKey& o) const {
  if (device != o.device) return device < o.device;
  if (pool != o.pool) return pool < o.pool;
  return size < o.size;
}

CachingAllocator::CachingAllocator(Backend backend) : backend_(std::move(backend)) {}

CachingAllocator::~CachingAllocator() {
  // A raw allocation starts with the block that has no predecessor; small blocks are whole ones.
  for (Block* b : blocks_) {
    if (b->small || b->prev == nullptr) backend_.release(b->ptr, b->device);
  }
  for (Block* b : blocks_) delete b;
}

void CachingAllocator::note_in_use(size_t up, size_t down) {
  stats_.bytes_in_use = stats_.bytes_in_use + up - down;
  stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
}

void CachingAllocator::insert_free(Block* b) {
  stats_.bytes_cached += b->size;
  if (b->small) {
    small_free_[SmallKey{b->device, b->pool, b->size}].push_back(b);
  } else {
    large_free_[{b->device, b->pool}].insert(b);
  }
}

void CachingAllocator::remove_free(Block* b) {
  stats_.bytes_cached -= b->size;
  if (b->small) {
    std::vector<Block*>& list = small_free_[SmallKey{b->device, b->pool, b->size}];
    list.erase(std::find(list.begin(), list.end(), b));
  } else {
    large_free_[{b->device, b->pool}].erase(b);
  }
}

CachingAllocator::Block* CachingAllocator::take(int device, int pool, size_t size, bool small) {
  if (small) {
    const auto it = small_free_.find(SmallKey{device, pool, size});
    if (it == small_free_.end() || it->second.empty()) return nullptr;
    Block* b = it->second.back();
    it->second.pop_back();
    stats_.bytes_cached -= b->size;
    return b;
  }
  const auto lists = large_free_.find({device, pool});
  if (lists == large_free_.end()) return nullptr;
  Block probe;
  probe.size = size;
  const auto it = lists->second.lower_bound(&probe);  // the smallest that fits, lowest address
  if (it == lists->second.end()) return nullptr;
  Block* b = *it;
  lists->second.erase(it);
  stats_.bytes_cached -= b->size;
  if (b->size > size) {  // the rest stays cached where it was, as its own block
    Block* rest = new Block(*b);
    blocks_.insert(rest);
    rest->ptr = b->ptr + size;
    rest->size = b->size - size;
    rest->prev = b;
    if (b->next) b->next->prev = rest;
    b->next = rest;
    b->size = size;
    insert_free(rest);
  }
  return b;
}

void CachingAllocator::absorb_next(Block* a) {
  Block* c = a->next;
  a->size += c->size;
  a->next = c->next;
  if (c->next) c->next->prev = a;
  blocks_.erase(c);
  delete c;
}

CachingAllocator::Block* CachingAllocator::merge_with_free_neighbours(Block* b) {
  // By the pool's value: `b` itself is deleted when it merges into its predecessor.
  const int pool = b->pool;
  const auto mergeable = [pool](const Block* n) {
    return n != nullptr && !n->in_use && !n->parked && n->pool == pool;
  };
  if (mergeable(b->prev)) {  // the predecessor grows (and leaves its free list for now)
    Block* a = b->prev;
    remove_free(a);
    absorb_next(a);
    b = a;
  }
  if (mergeable(b->next)) {
    remove_free(b->next);
    absorb_next(b);
  }
  return b;
}

void* CachingAllocator::alloc(size_t bytes, int device) {
  const size_t size = size_class(bytes);
  const bool small = size <= kSmallLimit;
  std::lock_guard<std::mutex> lock(mutex_);
  Block* b = nullptr;
  const char* how = "cached";
  const size_t blocks_before = blocks_.size();
  if (active_pool_ != 0) b = take(device, active_pool_, size, small);
  if (b == nullptr) b = take(device, 0, size, small);
  if (b != nullptr && blocks_.size() > blocks_before) how = "split";
  if (b == nullptr) {
    how = "new";
    void* p = backend_.allocate(size, device);
    if (p == nullptr) {
      reclaim_parked();
      release_cached();
      p = backend_.allocate(size, device);
    }
    if (p == nullptr) return nullptr;
    ++stats_.device_allocations;
    stats_.bytes_reserved += size;
    stats_.peak_bytes_reserved = std::max(stats_.peak_bytes_reserved, stats_.bytes_reserved);
    b = new Block;
    blocks_.insert(b);
    b->ptr = static_cast<char*>(p);
    b->size = size;
    b->device = device;
    b->small = small;
  }
  b->pool = active_pool_;
  into_use(b);
  if (trace_) {
    std::fprintf(trace_, "alloc %zu %zu %p pool %d %s reserved %zu\n", bytes, size,
                 static_cast<void*>(b->ptr), b->pool, how, stats_.bytes_reserved);
  }
  return b->ptr;
}

void CachingAllocator::into_use(Block* b) {
  b->in_use = true;
  in_use_[b->ptr] = b;
  note_in_use(b->size, 0);
}

CachingAllocator::Block* CachingAllocator::out_of_use(void* p, const char* what) {
  const auto it = in_use_.find(p);
  KVC_CHECK(it != in_use_.end(), "allocator: ", what, " of pointer ", p, " not in use here");
  Block* b = it->second;
  in_use_.erase(it);
  b->in_use = false;
  note_in_use(0, b->size);
  return b;
}

void CachingAllocator::free(void* p) {
  if (p == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  Block* b = out_of_use(p, "free");
  if (trace_) std::fprintf(trace_, "free %p %zu pool %d\n", p, b->size, b->pool);
  to_cache(b);
}

void CachingAllocator::to_cache(Block* b) {
  insert_free(b->small ? b : merge_with_free_neighbours(b));
}

void CachingAllocator::park(void* p) {
  std::lock_guard<std::mutex> lock(mutex_);
  Block* b = out_of_use(p, "park");
  b->parked = true;
  parked_[b->ptr] = b;
  stats_.bytes_parked += b->size;
  if (trace_) std::fprintf(trace_, "park %p %zu\n", p, b->size);
}

void* CachingAllocator::unpark(void* p) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = parked_.find(p);
  if (it == parked_.end()) return nullptr;  // reclaimed
  Block* b = it->second;
  if (active_pool_ != 0 && b->pool != active_pool_) {
    reclaim(b);  // the owner's alloc now gives the pool a block of its own (perhaps this one)
    return nullptr;
  }
  parked_.erase(it);
  b->parked = false;
  stats_.bytes_parked -= b->size;
  into_use(b);
  if (trace_) std::fprintf(trace_, "unpark %p %zu\n", p, b->size);
  return b->ptr;
}

void CachingAllocator::discard(void* p) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = parked_.find(p);
  if (it != parked_.end()) reclaim(it->second);
}

void CachingAllocator::reclaim(Block* b) {
  parked_.erase(b->ptr);
  b->parked = false;
  stats_.bytes_parked -= b->size;
  if (trace_) std::fprintf(trace_, "reclaim %p %zu\n", static_cast<void*>(b->ptr), b->size);
  to_cache(b);
}

void CachingAllocator::reclaim_parked() {
  while (!parked_.empty()) reclaim(parked_.begin()->second);
}

int CachingAllocator::create_pool() {
  std::lock_guard<std::mutex> lock(mutex_);
  const int id = next_pool_++;
  pools_.insert(id);
  return id;
}

void CachingAllocator::set_active_pool(int id) {
  std::lock_guard<std::mutex> lock(mutex_);
  KVC_CHECK(id == 0 || pools_.count(id) > 0, "allocator: no memory pool ", id);
  active_pool_ = id;
}

void CachingAllocator::release_pool(int id) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (pools_.erase(id) == 0) return;
  if (active_pool_ == id) active_pool_ = 0;
  // Blocks in use now come back to the common cache when freed.
  for (auto& [p, b] : in_use_) {
    if (b->pool == id) b->pool = 0;
  }
  std::vector<Block*> cached;
  for (auto& [key, list] : small_free_) {
    if (key.pool != id) continue;
    cached.insert(cached.end(), list.begin(), list.end());
    list.clear();
  }
  for (auto& [key, set] : large_free_) {
    if (key.second != id) continue;
    cached.insert(cached.end(), set.begin(), set.end());
    set.clear();
  }
  for (Block* b : cached) {
    stats_.bytes_cached -= b->size;
    b->pool = 0;
    insert_free(b);
  }
  // Then each merges with its free neighbours, now all in the common cache (a merge deletes the
  // blocks it absorbs; none is made here, so a pointer no longer in blocks_ was one of them).
  for (Block* b : cached) {
    if (blocks_.count(b) == 0 || b->small) continue;
    remove_free(b);
    insert_free(merge_with_free_neighbours(b));
  }
}

bool CachingAllocator::in_graph_pool(const void* p) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = in_use_.find(p);
  return it != in_use_.end() && it->second->pool != 0;
}

void CachingAllocator::release_cached() {
  std::vector<Block*> whole;
  for (auto& [key, list] : small_free_) {
    if (key.pool != 0) continue;
    whole.insert(whole.end(), list.begin(), list.end());
  }
  for (auto& [key, set] : large_free_) {
    if (key.second != 0) continue;
    for (Block* b : set) {
      if (b->prev == nullptr && b->next == nullptr) whole.push_back(b);
    }
  }
  for (Block* b : whole) {
    remove_free(b);
    backend_.release(b->ptr, b->device);
    ++stats_.device_frees;
    stats_.bytes_reserved -= b->size;
    if (trace_) std::fprintf(trace_, "release %zu reserved %zu\n", b->size, stats_.bytes_reserved);
    blocks_.erase(b);
    delete b;
  }
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  reclaim_parked();
  release_cached();
}

void CachingAllocator::set_trace(std::FILE* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  trace_ = out;
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_bytes_in_use = stats_.bytes_in_use;
  stats_.peak_bytes_reserved = stats_.bytes_reserved;
}

}  // namespace kvc::kernels
