// DType and Device: what a tensor holds and where, plus the dispatch macro over dtypes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "base/error.h"

namespace kvc {

using Shape = std::vector<int64_t>;

enum class DType : uint8_t { f32, f64 };

inline size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 8; }
inline const char* dtype_name(DType t) { return t == DType::f32 ? "float32" : "float64"; }

template <typename T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::f64;
};

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return {DeviceType::cpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::cuda, index}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string name() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
};

// "cpu", "cuda", "cuda:0". Throws on anything else, and on cuda:N with N != 0: the kernels run
// on one stream of the current device, so a second GPU would silently compute on the first.
Device parse_device(const std::string& s);

inline std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }
inline std::ostream& operator<<(std::ostream& os, const Device& d) { return os << d.name(); }

}  // namespace kvc

// KVC_DISPATCH_FLOAT(dtype, "op", [&] { use scalar_t; }) runs the lambda with scalar_t bound.
#define KVC_DISPATCH_FLOAT(DTYPE, OPNAME, ...)                     \
  [&] {                                                            \
    switch (DTYPE) {                                               \
      case ::kvc::DType::f32: {                                    \
        using scalar_t = float;                                    \
        return __VA_ARGS__();                                      \
      }                                                            \
      case ::kvc::DType::f64: {                                    \
        using scalar_t = double;                                   \
        return __VA_ARGS__();                                      \
      }                                                            \
    }                                                              \
    throw ::kvc::Error(::kvc::str(OPNAME, ": unsupported dtype")); \
  }()

// Calls into kernels::cuda only exist in a CUDA build; elsewhere the call throws a clear error.
#ifdef KVC_WITH_CUDA
#define KVC_CUDA_ONLY(...) __VA_ARGS__
#else
#define KVC_CUDA_ONLY(...) \
  throw ::kvc::Error("cuda: this kvcompress was built without CUDA (configure with nvcc present)")
#endif
