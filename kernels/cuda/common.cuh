// Shared pieces of the CUDA kernels: the one stream, grid sizing, warp/block sums, scratch memory.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/math/fp.h"
#include "kernels/memory.h"

namespace kvc::kernels::cuda {

// Every kernel, copy and cuBLAS call runs on this one stream. One stream makes the caching
// allocator simple and safe: a block freed on the host can be handed out again at once, because
// any later use of it is ordered after the work that still reads it. It is a created,
// non-blocking stream rather than the legacy default one so that a training step can later be
// captured into a CUDA Graph (the legacy stream cannot be captured). Never destroyed, like the
// allocator's cache (see memory.cu).
inline cudaStream_t stream() {
  static const cudaStream_t s = [] {
    cudaStream_t created = nullptr;
    KVC_CUDA_CHECK(cudaStreamCreateWithFlags(&created, cudaStreamNonBlocking));
    return created;
  }();
  return s;
}

inline constexpr int kThreads = 256;

// A grid-stride loop: any n with any grid size (see grid_for).
#define KVC_GRID_LOOP(i, n)                                                 \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n); \
       i += int64_t{gridDim.x} * blockDim.x)

// The current device's multiprocessor count, asked once (100 if the runtime cannot say: grid
// sizes then stay reasonable on any GPU).
inline int sm_count() {
  static const int sms = [] {
    int device = 0, n = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      return 100;
    }
    return n;
  }();
  return sms;
}

// CTAs of `kernel` that fit on the whole GPU at once with `threads` threads and `smem` bytes of
// dynamic shared memory (whose limit it raises), asked once per kernel.
template <auto kKernel>
int resident_ctas(int threads, size_t smem) {
  static const int n = [&] {
    KVC_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    int per_sm = 0;
    KVC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kKernel, threads, smem));
    return std::max(1, sm_count() * per_sm);
  }();
  return n;
}

// The current device's compute capability as major * 10 + minor (90 for Hopper), asked once; 0
// if the runtime cannot say, so no path that needs a newer GPU is taken.
inline int compute_capability() {
  static const int cc = [] {
    int device = 0, major = 0, minor = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
      return 0;
    }
    return major * 10 + minor;
  }();
  return cc;
}

// Blocks for a grid-stride loop over n elements: enough to fill the GPU several times over,
// never more than the elements need. Kernels loop, so large n never overflows the grid.
inline int grid_for(int64_t n, int threads = kThreads) {
  const int64_t needed = (n + threads - 1) / threads;
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(needed, int64_t{sm_count()} * 16)));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `shared` holds at least 32 values. A fixed tree: the same inputs give the same bits every run.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : T(0);
  return warp_sum(v);
}

// Max over the whole block, as block_sum.
template <typename T>
__device__ __forceinline__ T block_max(T v, T* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : shared[0];
  return warp_max(v);
}

// Rounded, never-fused arithmetic (kernels/math/fp.h): kernels whose results must match the
// CPU bit for bit use these.
using math::add_rn;
using math::mul_rn;

// Device scratch from the caching allocator for the length of one launcher. Freeing it while
// kernels that use it are still queued is safe: see stream().
class Scratch {
 public:
  explicit Scratch(size_t bytes)
      : device_(current_device()), p_(bytes ? alloc(bytes, device_) : nullptr) {}
  ~Scratch() {
    if (p_) free(p_, device_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  static int current_device() {
    int d = 0;
    KVC_CUDA_CHECK(cudaGetDevice(&d));
    return d;
  }
  int device_;
  void* p_;
};

}  // namespace kvc::kernels::cuda
