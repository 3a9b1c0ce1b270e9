// Fills, dtype casts and Philox random streams, for every backend.
#pragma once

#include <cstdint>

namespace kvc::kernels {

#define KVC_FILL_KERNELS                                                                    \
  template <typename T>                                                                     \
  void fill(T* out, int64_t n, T value);                                                    \
  template <typename T>                                                                     \
  void arange(T* out, int64_t n);                                                           \
  /* out[i] = (To)in[i] */                                                                  \
  template <typename To, typename From>                                                     \
  void cast(To* out, const From* in, int64_t n);                                            \
  /* out[i] = low + (high - low) * philox::uniform(seed, offset, i) */                      \
  template <typename T>                                                                     \
  void uniform(T* out, int64_t n, uint64_t seed, uint64_t offset, double low, double high); \
  /* out[i] = mean + std * philox::normal(seed, offset, first + i): elements [first,        \
     first + n) of the stream, so a shard of a larger draw equals that draw's slice */      \
  template <typename T>                                                                     \
  void normal(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean, double std,   \
              uint64_t first = 0);

namespace cpu {
KVC_FILL_KERNELS
}
namespace cuda {
KVC_FILL_KERNELS
}
#undef KVC_FILL_KERNELS

// The explicit instantiations of every launcher above for dtype T, expanded by each backend.
#define KVC_FILL_INSTANTIATE(T)                                                       \
  template void fill<T>(T*, int64_t, T);                                              \
  template void arange<T>(T*, int64_t);                                               \
  template void uniform<T>(T*, int64_t, uint64_t, uint64_t, double, double);          \
  template void normal<T>(T*, int64_t, uint64_t, uint64_t, double, double, uint64_t); \
  template void cast<T, float>(T*, const float*, int64_t);                            \
  template void cast<T, double>(T*, const double*, int64_t);

}  // namespace kvc::kernels
