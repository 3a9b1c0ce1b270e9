// The CPU walk over a collapsed BroadcastIndex (kernels/math/elementwise.h): the outer
// axes step like an odometer and the innermost axis runs as one tight loop. Shared by the
// broadcast binary ops, permute and sum_to.
#pragma once

#include <cstdint>

#include "kernels/elementwise.h"

namespace kvc::kernels::cpu {

// One innermost run: `len` elements starting at flat index `base` of the walked tensor, with
// operand offsets a and b stepping by a_step and b_step.
struct StridedRun {
  int64_t base, a, b, len, a_step, b_step;
};

// Calls run(const StridedRun&) for each innermost run of the n elements of c, in order. An index
// with no axes left (every axis of size 1) is one run of one element.
template <typename F>
void for_each_run(const BroadcastIndex& c, int64_t n, F run) {
  if (n == 0) return;
  if (c.ndim == 0) {
    run(StridedRun{0, 0, 0, 1, 0, 0});
    return;
  }
  const int last = c.ndim - 1;
  StridedRun r{0, 0, 0, c.shape[last], c.a_stride[last], c.b_stride[last]};
  int64_t counter[kMaxDims] = {};
  for (; r.base < n; r.base += r.len) {
    run(r);
    // Both operand offsets update incrementally: no division per run.
    for (int d = last - 1; d >= 0; --d) {
      r.a += c.a_stride[d];
      r.b += c.b_stride[d];
      if (++counter[d] < c.shape[d]) break;
      r.a -= c.a_stride[d] * c.shape[d];
      r.b -= c.b_stride[d] * c.shape[d];
      counter[d] = 0;
    }
  }
}

}  // namespace kvc::kernels::cpu
