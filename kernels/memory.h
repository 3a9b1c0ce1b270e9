// Raw memory on each backend: allocation, copies between host and device, fills.
// CPU versions live in kernels/cpu/memory.cpp; CUDA versions (the caching allocator) in
// kernels/cuda/memory.cu and exist only in a CUDA build.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvc::kernels {

namespace cpu {
void* alloc(size_t bytes);  // 64-byte aligned; throws kvc::Error on failure
void free(void* p);
// Bytes handed out to tensors now (each allocation rounded up to 64) and their peak since the
// start or the last reset_peak_stats().
size_t bytes_in_use();
size_t peak_bytes_in_use();
void reset_peak_stats();
}  // namespace cpu

// Statistics of a caching allocator (kernels/caching_allocator.h; bench, tests).
struct AllocatorStats {
  size_t bytes_in_use = 0;  // handed out to tensors now (size classes)
  size_t peak_bytes_in_use = 0;
  size_t bytes_cached = 0;    // held by the allocator, free for reuse
  size_t bytes_parked = 0;    // held for an owner that gave them up for a while (parked)
  size_t bytes_reserved = 0;  // raw allocations held: in use, cached and parked
  size_t peak_bytes_reserved = 0;
  size_t device_allocations = 0;  // raw allocations (cudaMalloc) so far
  size_t device_frees = 0;        // raw frees (cudaFree) so far
};

namespace cuda {
using kernels::AllocatorStats;

// Number of usable devices; 0 (never a throw) when no driver or GPU. `why` gets the reason.
int device_count(const char** why);
void* alloc(size_t bytes, int device);  // from the cache, else cudaMalloc; OutOfMemoryError
void free(void* p, int device);         // back to the cache
AllocatorStats allocator_stats();
void reset_peak_stats();
void empty_cache();  // parked blocks to the cache, then cudaFree every allocation wholly cached
                     // (graph pools excepted)

// Private pools for CUDA graphs: while pool `id` is active every allocation is served from it (or
// new memory that joins it), and blocks it handed out return to it when freed, never to other
// users: a graph's replays may write them at any time. release_pool gives its blocks back to the
// common cache (the graph must be gone). set_active_pool(0) ends the redirection.
int create_pool();
void set_active_pool(int id);
void release_pool(int id);
// Whether `p` (a block handed out now) belongs to a graph's pool: a graph captured its address.
bool in_graph_pool(const void* p);
// Parking (kernels/caching_allocator.h): `p` given up for a while, no other tensor gets it;
// unpark returns it, or nullptr where the allocator took it back (then allocate anew); discard
// gives it up for good.
void park(void* p);
void* unpark(void* p);
void discard(void* p);

void copy_h2d(void* dst, const void* src, size_t bytes);
void copy_d2h(void* dst, const void* src, size_t bytes);  // synchronizes: the one host sync
void copy_d2d(void* dst, const void* src, size_t bytes);
void synchronize();
}  // namespace cuda

}  // namespace kvc::kernels
