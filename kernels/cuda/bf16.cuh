// Rounding float32 operands to bfloat16 for the products that run on bf16 tensor cores.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace kvc::kernels::cuda {

// dst[i] = bf16(src[i]) for i < n, round to nearest even, on stream() (kernels/cuda/gemm.cu).
void round_to_bf16(const float* src, __nv_bfloat16* dst, int64_t n);

}  // namespace kvc::kernels::cuda
