// The arithmetic float32 matrix work gets on CUDA tensor cores: a process-wide setting, like
// PyTorch's allow_tf32 / autocast. Storage, accumulation, softmax statistics and losses stay
// float32 in every mode; only the operands of matrix products are rounded.
#pragma once

#include <cstdint>

namespace kvc::kernels {

enum class MathPrecision : uint8_t {
  fp32,  // full FP32 FMA (the default, as in PyTorch with TF32 off)
  tf32,  // TF32 operands (10-bit mantissa) on tensor cores
  bf16,  // bfloat16 operands (8-bit mantissa) on tensor cores
};

const char* precision_name(MathPrecision p);

namespace cuda {
void set_math_precision(MathPrecision p);
MathPrecision math_precision();
}  // namespace cuda

}  // namespace kvc::kernels
