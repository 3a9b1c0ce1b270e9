// One contiguous row's softmax on the CPU: the plain softmax and the row-masked one (a row's
// visible prefix) share it.
#pragma once

#include <cstdint>

#include "kernels/cpu/vec_math.h"

namespace kvc::kernels::cpu {

// y[0..m) = softmax(x[0..m)), max-subtracted; m >= 1. Inline: the calling kernel's build
// (KVC_CPU_CLONES) decides the vector width.
template <typename T>
inline void softmax_row(const T* x, T* y, int64_t m) {
  const T mx = row_max(x + 1, m - 1, x[0]);
  const T inv = T(1) / exp_row_sum(x, y, m, mx);
  for (int64_t j = 0; j < m; ++j) y[j] *= inv;
}

}  // namespace kvc::kernels::cpu
