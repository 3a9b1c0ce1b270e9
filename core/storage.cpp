// Storage allocation and cross-device copies, dispatched to kernels::cpu / kernels::cuda.
#include "core/storage.h"

#include <cstring>
#include <utility>

#include "kernels/memory.h"

namespace kvc {

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  if (bytes > 0) allocate();
}

Storage::Storage(size_t bytes, Device device, OnDemand)
    : bytes_(bytes), device_(device), on_demand_(true) {}

#ifdef KVC_WITH_CUDA
namespace {
// The block a release() parked, else (none, or the allocator reclaimed it) a new one.
void* cuda_alloc_or_unpark(size_t bytes, int device, void* parked) {
  void* p = parked ? kernels::cuda::unpark(parked) : nullptr;
  return p ? p : kernels::cuda::alloc(bytes, device);
}
}  // namespace
#endif

void* Storage::allocate() const {
  if (device_.is_cpu()) {
    data_ = kernels::cpu::alloc(bytes_);
  } else {
    KVC_CUDA_ONLY(data_ =
                      cuda_alloc_or_unpark(bytes_, device_.index, std::exchange(parked_, nullptr)));
  }
  ++allocations_;
  return data_;
}

namespace {
void free_memory(void* data, Device device) {
  if (device.is_cpu()) {
    kernels::cpu::free(data);
  } else {
#ifdef KVC_WITH_CUDA
    kernels::cuda::free(data, device.index);
#endif
  }
}
}  // namespace

bool Storage::release() {
  if (!on_demand_) return false;
  if (!data_) return true;
#ifdef KVC_WITH_CUDA
  if (device_.is_cuda()) {
    if (kernels::cuda::in_graph_pool(data_)) return false;
    kernels::cuda::park(data_);
    parked_ = data_;
    data_ = nullptr;
    return true;
  }
#endif
  free_memory(data_, device_);
  data_ = nullptr;
  return true;
}

Storage::~Storage() {
  if (data_) free_memory(data_, device_);
#ifdef KVC_WITH_CUDA
  if (parked_) kernels::cuda::discard(parked_);
#endif
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef KVC_WITH_CUDA
  if (dst_device.is_cuda() && src_device.is_cuda()) {
    kernels::cuda::copy_d2d(dst, src, bytes);
  } else if (dst_device.is_cuda()) {
    kernels::cuda::copy_h2d(dst, src, bytes);
  } else {
    kernels::cuda::copy_d2h(dst, src, bytes);
  }
#else
  KVC_CUDA_ONLY();
#endif
}

std::string cuda_unavailable_reason() {
#ifdef KVC_WITH_CUDA
  const char* why = nullptr;
  if (kernels::cuda::device_count(&why) > 0) return "";
  return why ? why : "no CUDA device found";
#else
  return "this kvcompress was built without CUDA";
#endif
}

bool cuda_available() { return cuda_unavailable_reason().empty(); }

}  // namespace kvc
