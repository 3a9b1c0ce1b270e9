// Rounding float32 operands to bfloat16 for the products that run on bf16 tensor cores, and the
// copies that several of them share (SharedBf16Copies, kernels/precision.h).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <memory>

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

}  // namespace kvc::kernels::cuda
