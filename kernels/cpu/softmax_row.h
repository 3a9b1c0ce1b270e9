// One contiguous row's softmax on the CPU: the plain softmax and the row-masked one (a row's
// visible prefix) share it.
#pragma once

#include <cmath>
#include <cstdint>

namespace kvc::kernels::cpu {

// y[0..m) = softmax(x[0..m)), max-subtracted; m >= 1.
template <typename T>
inline void softmax_row(const T* x, T* y, int64_t m) {
  T mx = x[0];
  for (int64_t j = 1; j < m; ++j) mx = x[j] > mx ? x[j] : mx;
  T sum = 0;
  for (int64_t j = 0; j < m; ++j) {
    y[j] = std::exp(x[j] - mx);
    sum += y[j];
  }
  const T inv = T(1) / sum;
  for (int64_t j = 0; j < m; ++j) y[j] *= inv;
}

}  // namespace kvc::kernels::cpu
