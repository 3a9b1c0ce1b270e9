// The learning-rate schedule of `train`: linear warmup, then cosine decay to zero.
#pragma once

#include <cstdint>

namespace kvc {

// The learning rate for optimizer step `step`, counted from 1 (the first step() uses step 1):
//   step <= warmup:  base_lr * step / warmup          (reaches base_lr at step == warmup)
//   step >  warmup:  base_lr * (1 + cos(pi * p)) / 2,  p = (step - warmup) / (total_steps - warmup)
// so the cosine starts at base_lr just after warmup and reaches 0 at step == total_steps.
// Steps past total_steps stay at 0 (p is clamped to 1); warmup == 0 skips the ramp; warmup >=
// total_steps makes the whole run a ramp. Throws on step < 1, total_steps < 1, warmup < 0 or a
// negative base_lr.
double learning_rate(int64_t step, int64_t total_steps, double base_lr, int64_t warmup);

}  // namespace kvc
