// Host memory: 64-byte aligned so OpenBLAS and the vectorized loops get aligned rows.
#include "kernels/memory.h"

#include <cstdlib>

#include "base/error.h"

namespace kvc::kernels::cpu {

void* alloc(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  KVC_CHECK(p != nullptr, "cpu: out of host memory allocating ", bytes, " bytes");
  return p;
}

void free(void* p) { std::free(p); }

}  // namespace kvc::kernels::cpu
