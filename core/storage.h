// Storage: one owned, typed-agnostic allocation on a device; tensors share it through shared_ptr.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "base/dtype.h"

namespace kvc {

class Storage {
 public:
  Storage(size_t bytes, Device device);  // allocates now
  // Memory that exists only while it is in use (an optimizer's gradients, from backward to the
  // update): nothing is allocated until the first data(); release() gives the memory back and
  // the next data() allocates it again, with undefined contents. On CUDA release() parks the
  // block (kernels/memory.h): no other tensor gets it meanwhile, and the next data() takes the
  // same memory back unless the allocator reclaimed it.
  struct OnDemand {};
  Storage(size_t bytes, Device device, OnDemand);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_ != nullptr || bytes_ == 0 ? data_ : allocate(); }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

  bool allocated() const { return data_ != nullptr; }
  // How many times memory was allocated for it: 1 for a plain storage, and for an on-demand one
  // one more after each release() that data() followed (its contents are new then).
  uint64_t allocations() const { return allocations_; }
  // Frees an on-demand storage's memory now. Returns false, freeing nothing, where the memory
  // must stay: a plain storage, or memory a CUDA graph captured (its replays write it).
  bool release();

 private:
  void* allocate() const;

  mutable void* data_ = nullptr;
  mutable void* parked_ = nullptr;  // CUDA memory release() parked, for the next data()
  mutable uint64_t allocations_ = 0;
  size_t bytes_ = 0;
  Device device_;
  bool on_demand_ = false;
};

// True when this build has the CUDA backend and a usable GPU is present. Never throws.
bool cuda_available();
// Why cuda_available() is false (empty when it is true): "built without CUDA", or the driver's
// word.
std::string cuda_unavailable_reason();

// Copies `bytes` between any two devices.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);

}  // namespace kvc
