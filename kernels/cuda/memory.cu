// The CUDA caching allocator, device discovery and host/device copies.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/memory.h"

namespace kvc::kernels::cuda {

namespace {

// Size classes: multiples of 512 B up to 1 MiB, then of 2 MiB (as PyTorch rounds its large
// blocks): at most 2 MiB wasted per block. A training step asks for the same sizes every step, so
// after the first step every request finds a cached block of its exact class and cudaMalloc is
// never called again. (Classes of a quarter of a power of two, the first design, wasted up to
// 25%: 896 MiB over the four 1056 MiB optimizer buffers of grouped_mlp at the `long` shape.)
constexpr size_t kSmallClass = 512, kSmallLimit = size_t{1} << 20, kLargeClass = size_t{2} << 20;
size_t size_class(size_t bytes) {
  if (bytes <= kSmallLimit) return (bytes + kSmallClass - 1) / kSmallClass * kSmallClass;
  return (bytes + kLargeClass - 1) / kLargeClass * kLargeClass;
}

class CachingAllocator {
 public:
  void* alloc(size_t bytes, int device) {
    const size_t cls = size_class(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    void* p = nullptr;
    // While a graph is being captured its requests are served from its own pool first, so that
    // the memory its replays will write is never handed to anyone else.
    if (active_pool_ != 0) p = take(pools_[active_pool_], device, cls);
    if (!p) p = take(free_, device, cls);
    if (p) {
      stats_.bytes_cached -= cls;
    } else {
      p = device_malloc(bytes, cls, device);
    }
    in_use_[p] = Block{cls, active_pool_};
    stats_.bytes_in_use += cls;
    stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
    return p;
  }

  void free(void* p, int device) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = in_use_.find(p);
    KVC_CHECK(it != in_use_.end(), "cuda: free of pointer ", p, " not from this allocator");
    const Block block = it->second;
    in_use_.erase(it);
    stats_.bytes_in_use -= block.cls;
    stats_.bytes_cached += block.cls;
    FreeLists& lists = block.pool != 0 ? pools_[block.pool] : free_;
    lists[{device, block.cls}].push_back(p);
  }

  int create_pool() {
    std::lock_guard<std::mutex> lock(mutex_);
    const int id = next_pool_++;
    pools_[id];
    return id;
  }

  void set_active_pool(int id) {
    std::lock_guard<std::mutex> lock(mutex_);
    KVC_CHECK(id == 0 || pools_.count(id), "cuda: no memory pool ", id);
    active_pool_ = id;
  }

  // The pool's free blocks go back to the common cache; blocks of it still in use go there when
  // they are freed.
  void release_pool(int id) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = pools_.find(id);
    if (it == pools_.end()) return;
    for (auto& [key, blocks] : it->second) {
      auto& to = free_[key];
      to.insert(to.end(), blocks.begin(), blocks.end());
    }
    pools_.erase(it);
    for (auto& [p, block] : in_use_) {
      if (block.pool == id) block.pool = 0;
    }
    if (active_pool_ == id) active_pool_ = 0;
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  bool in_graph_pool(const void* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = in_use_.find(const_cast<void*>(p));
    return it != in_use_.end() && it->second.pool != 0;
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_bytes_in_use = stats_.bytes_in_use;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached();
  }

 private:
  using FreeLists = std::map<std::pair<int, size_t>, std::vector<void*>>;
  struct Block {
    size_t cls;
    int pool;  // 0: the common cache
  };

  // Caller holds mutex_. A cached block of exactly this class, or nullptr.
  static void* take(FreeLists& lists, int device, size_t cls) {
    auto it = lists.find({device, cls});
    if (it == lists.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    return p;
  }

  // Caller holds mutex_. cudaFree synchronizes the device, so no queued kernel still uses them.
  // Graph pools keep theirs: a graph's replays may still write them.
  void release_cached() {
    int current = 0;
    KVC_CUDA_CHECK(cudaGetDevice(&current));
    for (auto& [key, blocks] : free_) {
      if (blocks.empty()) continue;
      if (key.first != current) KVC_CUDA_CHECK(cudaSetDevice(key.first));
      for (void* p : blocks) {
        KVC_CUDA_CHECK(cudaFree(p));
        ++stats_.device_frees;
        stats_.bytes_cached -= key.second;
      }
      blocks.clear();
      if (key.first != current) KVC_CUDA_CHECK(cudaSetDevice(current));
    }
  }

  // Caller holds mutex_. On failure: give the cache back to the driver and try once more.
  void* device_malloc(size_t bytes, size_t cls, int device) {
    int current = 0;
    KVC_CUDA_CHECK(cudaGetDevice(&current));
    if (current != device) KVC_CUDA_CHECK(cudaSetDevice(device));
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, cls);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // clear the (non-sticky) error before retrying
      release_cached();
      err = cudaMalloc(&p, cls);
    }
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      (void)cudaGetLastError();
      throw OutOfMemoryError(str("cuda: out of GPU memory allocating ", bytes, " bytes (", cls,
                                 " rounded) on cuda:", device, "; ", stats_.bytes_in_use,
                                 " bytes in use by tensors, ", free_b, " of ", total_b,
                                 " bytes free on the device"));
    }
    KVC_CUDA_CHECK(err);
    ++stats_.device_allocations;
    return p;
  }

  std::mutex mutex_;
  FreeLists free_;
  std::map<int, FreeLists> pools_;
  int active_pool_ = 0, next_pool_ = 1;
  std::unordered_map<void*, Block> in_use_;
  AllocatorStats stats_;
};

// Never destroyed: tensors held by statics may be freed during exit, after the CUDA runtime has
// begun tearing down, and calling cudaFree then is undefined. The driver reclaims the memory
// when the process ends, so the cache is leaked on purpose.
CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator();
  return *a;
}

}  // namespace

int device_count(const char** why) {
  // Probed once: Tensor::empty asks on every CUDA allocation. The strings live forever.
  static const std::pair<int, std::string> probe = [] {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      return std::make_pair(
          0, std::string("no usable CUDA driver or GPU (") + cudaGetErrorString(err) + ")");
    }
    if (n == 0) return std::make_pair(0, std::string("no CUDA GPU found"));
    return std::make_pair(n, std::string());
  }();
  if (why) *why = probe.first > 0 ? nullptr : probe.second.c_str();
  return probe.first;
}

void* alloc(size_t bytes, int device) {
  const char* why = nullptr;
  const int n = device_count(&why);
  KVC_CHECK(n > 0, "cuda: cannot allocate ", bytes, " bytes: ", why);
  KVC_CHECK(device >= 0 && device < n, "cuda: device index ", device, " out of range (", n,
            " device", n == 1 ? "" : "s", ")");
  return allocator().alloc(bytes, device);
}

void free(void* p, int device) { allocator().free(p, device); }

AllocatorStats allocator_stats() { return allocator().stats(); }
int create_pool() { return allocator().create_pool(); }
void set_active_pool(int id) { allocator().set_active_pool(id); }
void release_pool(int id) { allocator().release_pool(id); }
bool in_graph_pool(const void* p) { return allocator().in_graph_pool(p); }
void reset_peak_stats() { allocator().reset_peak(); }
void empty_cache() { allocator().empty_cache(); }

// From pageable memory cudaMemcpyAsync stages the source before it returns, so the caller may
// free its buffer at once, and the host does not wait for the device.
void copy_h2d(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  KVC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()));
}

void copy_d2h(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  KVC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()));
  KVC_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void copy_d2d(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  KVC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}

void synchronize() { KVC_CUDA_CHECK(cudaDeviceSynchronize()); }

}  // namespace kvc::kernels::cuda
