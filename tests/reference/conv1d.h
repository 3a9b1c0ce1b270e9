// Test-only reference: the grouped conv1d op, CPU and CUDA kernels (tests/reference/conv1d_*).
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace kvc {

// PyTorch Conv1d with padding 0: x (b, c_in, L), weight (c_out, c_in/groups, k), bias (c_out)
// or undefined; returns (b, c_out, (L - k)/stride + 1).
Tensor conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride,
              int64_t groups);

}  // namespace kvc
