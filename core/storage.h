// Storage: one owned, typed-agnostic allocation on a device; tensors share it through shared_ptr.
#pragma once

#include <cstddef>
#include <memory>

#include "base/dtype.h"

namespace kvc {

class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
};

// True when this build has the CUDA backend and a usable GPU is present. Never throws.
bool cuda_available();
// Why cuda_available() is false (empty when it is true): "built without CUDA", or the driver's
// word.
std::string cuda_unavailable_reason();

// Copies `bytes` between any two devices.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);

}  // namespace kvc
