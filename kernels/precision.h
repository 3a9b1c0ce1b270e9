// The arithmetic float32 matrix work gets on CUDA tensor cores: a process-wide setting, like
// PyTorch's allow_tf32 / autocast. Storage, accumulation, softmax statistics and losses stay
// float32 in every mode; only the operands of matrix products are rounded.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

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

struct Bf16Copy;
struct Bf16Fill;
Bf16Copy bf16_copy(const float* src, int64_t n);
Bf16Copy bf16_copy_heads(const float* src, int64_t heads, int64_t head_elems, int64_t* head_stride);
Bf16Fill bf16_copy_to_fill(const float* src, int64_t n);
Bf16Fill bf16_copy_to_fill_heads(const float* src, int64_t heads, int64_t head_elems,
                                 int64_t head_stride);
bool bf16_copy_held(const float* src, int64_t n);

// While alive, a product or attention that rounds one of these float32 buffers (or a part of one)
// to bfloat16 takes the copy another op made and still holds, instead of rounding it again: the
// MLP kinds keep theirs of K and V for the backward, and the attention target then reads the
// same copies. The scope itself keeps only the copies a kernel wrote on its way through a whole
// buffer (the attention pools' forward, which reads K and V as float32 and needs no copy), until
// it closes. The buffers must not change while it lives. Scopes nest (inner ones asked first,
// any may close first), one chain per thread (kernels/cuda/bf16.cu).
class SharedBf16Copies {
 public:
  explicit SharedBf16Copies(const std::vector<std::pair<const float*, int64_t>>& buffers);
  ~SharedBf16Copies();
  SharedBf16Copies(const SharedBf16Copies&) = delete;
  SharedBf16Copies& operator=(const SharedBf16Copies&) = delete;

 private:
  struct Listed;
  // The innermost open scope's listed buffer holding src[0, n), or null.
  static Listed* find(const float* src, int64_t n);
  // The scope's new copy of all of l's buffer, laid out as bf16_copy_to_fill* say, where src[0,
  // n) is that whole buffer and no op holds a copy of it now; else none.
  static Bf16Fill fill(Listed* l, const float* src, int64_t n, int64_t copy_elems,
                       int64_t head_elems, int64_t head_stride);
  friend Bf16Copy bf16_copy(const float* src, int64_t n);
  friend Bf16Copy bf16_copy_heads(const float* src, int64_t heads, int64_t head_elems,
                                  int64_t* head_stride);
  friend Bf16Fill bf16_copy_to_fill(const float* src, int64_t n);
  friend Bf16Fill bf16_copy_to_fill_heads(const float* src, int64_t heads, int64_t head_elems,
                                          int64_t head_stride);
  friend bool bf16_copy_held(const float* src, int64_t n);
  std::vector<Listed> listed_;
  SharedBf16Copies* outer_;
};
}  // namespace cuda

}  // namespace kvc::kernels
