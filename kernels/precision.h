// The arithmetic float32 matrix work gets on CUDA tensor cores: a process-wide setting, like
// PyTorch's allow_tf32 / autocast. Storage, accumulation, softmax statistics and losses stay
// float32 in every mode; only the operands of matrix products are rounded.
#pragma once

#include <cstdint>

namespace kvc::kernels {

enum class MathPrecision : uint8_t {
  fp32,  // FP32 accuracy (the default, as PyTorch with TF32 off): FP32 FMA, or three TF32
         // products of split operands (the attention pools' fused layer)
  tf32,  // TF32 operands (10-bit mantissa) on tensor cores
  bf16,  // bfloat16 operands (8-bit mantissa) on tensor cores
};

const char* precision_name(MathPrecision p);

namespace cuda {
void set_math_precision(MathPrecision p);
MathPrecision math_precision();
}  // namespace cuda

}  // namespace kvc::kernels
