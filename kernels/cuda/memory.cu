// CUDA memory: the caching allocator (kernels/caching_allocator.h) over cudaMalloc and cudaFree,
// device discovery and host/device copies.
#include <cuda_runtime.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "kernels/caching_allocator.h"
#include "kernels/cuda/common.cuh"
#include "kernels/memory.h"

namespace kvc::kernels::cuda {

namespace {

// cudaMalloc on `device` (restoring the current device), nullptr when the device is full.
void* device_malloc(size_t bytes, int device) {
  int current = 0;
  KVC_CUDA_CHECK(cudaGetDevice(&current));
  if (current != device) KVC_CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (current != device) KVC_CUDA_CHECK(cudaSetDevice(current));
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // clear the (non-sticky) error: the allocator retries
    return nullptr;
  }
  KVC_CUDA_CHECK(err);
  return p;
}

// cudaFree synchronizes the device, so no queued kernel still uses the memory.
void device_free(void* p, int device) {
  int current = 0;
  KVC_CUDA_CHECK(cudaGetDevice(&current));
  if (current != device) KVC_CUDA_CHECK(cudaSetDevice(device));
  KVC_CUDA_CHECK(cudaFree(p));
  if (current != device) KVC_CUDA_CHECK(cudaSetDevice(current));
}

// Never destroyed: tensors held by statics may be freed during exit, after the CUDA runtime has
// begun tearing down, and calling cudaFree then is undefined. The driver reclaims the memory
// when the process ends, so the cache is leaked on purpose.
CachingAllocator& allocator() {
  static CachingAllocator* a = [] {
    // KVC_CUDA_ALLOC_TRACE=<file>: a line for each request, free and raw allocation (set_trace).
    // The file stays open, as the allocator does; exit flushes it.
    std::FILE* trace = nullptr;
    if (const char* path = std::getenv("KVC_CUDA_ALLOC_TRACE"); path != nullptr && *path != 0) {
      trace = std::fopen(path, "w");
      KVC_CHECK(trace != nullptr, "KVC_CUDA_ALLOC_TRACE: cannot write '", path,
                "': ", std::strerror(errno));
    }
    auto* made = new CachingAllocator({device_malloc, device_free});
    made->set_trace(trace);
    return made;
  }();
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
  void* p = allocator().alloc(bytes, device);
  if (p == nullptr) {
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    (void)cudaGetLastError();
    throw OutOfMemoryError(str("cuda: out of GPU memory allocating ", bytes, " bytes (",
                               CachingAllocator::size_class(bytes), " rounded) on cuda:", device,
                               "; ", allocator().stats().bytes_in_use, " bytes in use by tensors, ",
                               free_b, " of ", total_b, " bytes free on the device"));
  }
  return p;
}

void free(void* p, int /*device*/) { allocator().free(p); }

AllocatorStats allocator_stats() { return allocator().stats(); }
int create_pool() { return allocator().create_pool(); }
void set_active_pool(int id) { allocator().set_active_pool(id); }
void release_pool(int id) { allocator().release_pool(id); }
bool in_graph_pool(const void* p) { return allocator().in_graph_pool(p); }
void park(void* p) { allocator().park(p); }
void* unpark(void* p) { return allocator().unpark(p); }
void discard(void* p) { allocator().discard(p); }
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
