// Rounding float32 operands to bfloat16 for the products that run on bf16 tensor cores, and the
// copies that several of them share (SharedBf16Copies, kernels/precision.h).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <memory>
#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace kvc::kernels::cuda {

// dst[i] = bf16(src[i]) for i < n, round to nearest even, on stream().
void round_to_bf16(const float* src, __nv_bfloat16* dst, int64_t n);

// A bfloat16 copy of n float32 elements: p points at the copy of src[0], and `owner` keeps the
// memory alive (a copy of the caller's own, or a part of one shared through SharedBf16Copies).
struct Bf16Copy {
  std::shared_ptr<const Scratch> owner;
  const __nv_bfloat16* p = nullptr;
};

// src[0, n) rounded to bfloat16: where an open SharedBf16Copies lists a buffer holding the whole
// range and someone still holds its copy, that copy (no work); else a new copy, which that scope
// then shares while it lives (the listed buffer's whole length is rounded); else a copy of the
// caller's own.
Bf16Copy bf16_copy(const float* src, int64_t n);

// Memory for the bfloat16 copy of exactly the buffer src[0, n) that an open SharedBf16Copies
// lists, where no op holds one now: for a kernel that reads all of src anyway to write on the
// way (the attention pools' forward), so that a later bf16_copy of it costs no pass. The caller
// must write every element before any later op on the stream reads it; the scope keeps the copy
// until it closes. Elsewhere p is null: the caller writes nothing.
struct Bf16Fill {
  std::shared_ptr<Scratch> owner;
  __nv_bfloat16* p = nullptr;
};
Bf16Fill bf16_copy_to_fill(const float* src, int64_t n);

// The copy of `heads` runs of head_elems values each, src[0, heads head_elems), where run i may
// start at i head_stride elements of the copy (a copy laid out with spare elements after each
// run: the MLP kinds' copy of K and V, a row of the positions after each head's blocks, see
// mlp.cu). The held copy where one is listed with that layout (or a plain one), else
// bf16_copy's; *head_stride says the layout of the copy returned.
Bf16Copy bf16_copy_heads(const float* src, int64_t heads, int64_t head_elems, int64_t* head_stride);

// bf16_copy_to_fill with the copy laid out as bf16_copy_heads reads it: run i of src's head_elems
// values at i head_stride elements, heads head_stride elements in all (the caller writes the
// spare elements too, or leaves them as it likes: a plain bf16_copy of a padded copy rounds anew).
Bf16Fill bf16_copy_to_fill_heads(const float* src, int64_t heads, int64_t head_elems,
                                 int64_t head_stride);

// Whether bf16_copy(src, n) would take a copy someone holds now (no rounding pass).
bool bf16_copy_held(const float* src, int64_t n);

// *p = the bf16 bits of v (round to nearest even): a kernel writing the copy of its float32
// output on the way (bf16_copy_to_fill). Float64 outputs have no copy: nothing for T = double.
template <typename T>
__device__ __forceinline__ void store_bf16(uint16_t* p, T v) {
  if constexpr (std::is_same_v<T, float>) {
    const __nv_bfloat16 b = __float2bfloat16_rn(v);
    *p = *reinterpret_cast<const uint16_t*>(&b);
  }
}

// Where the caller's float32 output y[0, n) is listed by an open SharedBf16Copies and has no
// copy yet, memory for one to write on the way (the owner keeps it while the scope lives), else
// none; float64 never.
template <typename T>
Bf16Fill bf16_fill_for(const T* y, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return bf16_copy_to_fill(y, n);
  } else {
    return {};
  }
}

}  // namespace kvc::kernels::cuda
