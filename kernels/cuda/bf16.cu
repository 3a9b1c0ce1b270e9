// bfloat16 rounding of float32 operands, and the copies SharedBf16Copies lets ops share.
#include <cuda_bf16.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/precision.h"

namespace kvc::kernels::cuda {

namespace {

// dst[i] = bf16(src[i]) for i < n, round to nearest even; four elements per thread.
__global__ void to_bf16_kernel(const float* __restrict__ src, __nv_bfloat16* __restrict__ dst,
                               int64_t n) {
  KVC_GRID_LOOP(i, (n + 3) / 4) {
    const int64_t e = 4 * i;
    if (e + 3 < n && reinterpret_cast<uintptr_t>(src + e) % 16 == 0) {
      const float4 x = *reinterpret_cast<const float4*>(src + e);
      *reinterpret_cast<__nv_bfloat162*>(dst + e) = __floats2bfloat162_rn(x.x, x.y);
      *reinterpret_cast<__nv_bfloat162*>(dst + e + 2) = __floats2bfloat162_rn(x.z, x.w);
    } else {
      for (int64_t j = e; j < n && j < e + 4; ++j) dst[j] = __float2bfloat16_rn(src[j]);
    }
  }
}

std::shared_ptr<Scratch> rounded(const float* src, int64_t n) {
  auto copy = std::make_shared<Scratch>(static_cast<size_t>(n) * sizeof(__nv_bfloat16));
  round_to_bf16(src, copy->as<__nv_bfloat16>(), n);
  return copy;
}

// The innermost open scope of this thread.
thread_local SharedBf16Copies* t_innermost = nullptr;

}  // namespace

// A listed buffer and its copy, held weakly: the scope never keeps memory alive by itself, so it
// adds nothing to the peak; a copy is shared while an op that made or took it still holds it.
struct SharedBf16Copies::Listed {
  uintptr_t begin = 0, end = 0;  // the buffer's float32 elements, as addresses
  std::weak_ptr<Scratch> copy;
  std::shared_ptr<Scratch> filled;  // a copy a kernel wrote on its way (bf16_copy_to_fill)
  // The copy's layout: runs of head_elems values head_stride apart (bf16_copy_to_fill_heads);
  // 0: the buffer's own, contiguous.
  int64_t head_elems = 0, head_stride = 0;
  bool padded() const { return head_stride != head_elems; }
};

SharedBf16Copies::SharedBf16Copies(const std::vector<std::pair<const float*, int64_t>>& buffers)
    : outer_(t_innermost) {
  for (const auto& [data, n] : buffers) {
    if (data == nullptr || n <= 0) continue;
    const auto begin = reinterpret_cast<uintptr_t>(data);
    listed_.push_back(Listed{begin, begin + static_cast<uintptr_t>(n) * sizeof(float), {}});
  }
  t_innermost = this;
}

// Unlinked from its thread's chain wherever it is: scopes held on the heap may close out of order.
SharedBf16Copies::~SharedBf16Copies() {
  if (t_innermost == this) {
    t_innermost = outer_;
    return;
  }
  for (SharedBf16Copies* s = t_innermost; s != nullptr; s = s->outer_) {
    if (s->outer_ == this) {
      s->outer_ = outer_;
      return;
    }
  }
}

SharedBf16Copies::Listed* SharedBf16Copies::find(const float* src, int64_t n) {
  const auto begin = reinterpret_cast<uintptr_t>(src);
  const auto end = begin + static_cast<uintptr_t>(n) * sizeof(float);
  for (SharedBf16Copies* scope = t_innermost; scope != nullptr; scope = scope->outer_) {
    for (Listed& l : scope->listed_) {
      if (begin >= l.begin && end <= l.end) return &l;
    }
  }
  return nullptr;
}

Bf16Copy bf16_copy(const float* src, int64_t n) {
  SharedBf16Copies::Listed* l = SharedBf16Copies::find(src, n);
  std::shared_ptr<Scratch> copy = l ? l->copy.lock() : nullptr;
  if (l == nullptr || (copy && l->padded())) {  // none to share, or one laid out otherwise
    copy = rounded(src, n);
    return {copy, copy->as<const __nv_bfloat16>()};
  }
  if (!copy) {
    copy = rounded(reinterpret_cast<const float*>(l->begin),
                   static_cast<int64_t>((l->end - l->begin) / sizeof(float)));
    l->copy = copy;
    l->head_elems = l->head_stride = 0;
  }
  const auto offset = (reinterpret_cast<uintptr_t>(src) - l->begin) / sizeof(float);
  return {copy, copy->as<const __nv_bfloat16>() + offset};
}

Bf16Copy bf16_copy_heads(const float* src, int64_t heads, int64_t head_elems,
                         int64_t* head_stride) {
  SharedBf16Copies::Listed* l = SharedBf16Copies::find(src, heads * head_elems);
  if (l != nullptr && l->padded() && l->head_elems == head_elems) {
    const auto offset =
        static_cast<int64_t>((reinterpret_cast<uintptr_t>(src) - l->begin) / sizeof(float));
    std::shared_ptr<Scratch> copy = l->copy.lock();
    if (copy && offset % head_elems == 0) {
      *head_stride = l->head_stride;
      return {copy, copy->as<const __nv_bfloat16>() + offset / head_elems * l->head_stride};
    }
  }
  *head_stride = head_elems;
  return bf16_copy(src, heads * head_elems);
}

Bf16Fill SharedBf16Copies::fill(Listed* l, const float* src, int64_t n, int64_t copy_elems,
                                int64_t head_elems, int64_t head_stride) {
  const auto begin = reinterpret_cast<uintptr_t>(src);
  if (l == nullptr || begin != l->begin ||
      begin + static_cast<uintptr_t>(n) * sizeof(float) != l->end || !l->copy.expired()) {
    return {};
  }
  l->filled = std::make_shared<Scratch>(static_cast<size_t>(copy_elems) * sizeof(__nv_bfloat16));
  l->copy = l->filled;
  l->head_elems = head_elems;
  l->head_stride = head_stride;
  return {l->filled, l->filled->as<__nv_bfloat16>()};
}

Bf16Fill bf16_copy_to_fill(const float* src, int64_t n) {
  return SharedBf16Copies::fill(SharedBf16Copies::find(src, n), src, n, n, 0, 0);
}

Bf16Fill bf16_copy_to_fill_heads(const float* src, int64_t heads, int64_t head_elems,
                                 int64_t head_stride) {
  KVC_CHECK(head_stride >= head_elems, "bf16_copy_to_fill_heads: runs of ", head_elems,
            " values cannot start ", head_stride, " apart");
  const int64_t n = heads * head_elems;
  return SharedBf16Copies::fill(SharedBf16Copies::find(src, n), src, n, heads * head_stride,
                                head_elems, head_stride);
}

bool bf16_copy_held(const float* src, int64_t n) {
  const SharedBf16Copies::Listed* l = SharedBf16Copies::find(src, n);
  return l != nullptr && !l->copy.expired() && !l->padded();
}

void round_to_bf16(const float* src, __nv_bfloat16* dst, int64_t n) {
  if (n == 0) return;
  to_bf16_kernel<<<grid_for((n + 3) / 4), kThreads, 0, stream()>>>(src, dst, n);
  KVC_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kvc::kernels::cuda
