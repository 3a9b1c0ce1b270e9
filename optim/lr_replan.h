// The learning rate of a run whose length (--steps) changed when it was resumed.
#pragma once

#include <cstdint>

namespace kvc {

// Where the plan changed: the resume step and the learning rate the run had reached there.
struct LrReplan {
  int64_t step = 0;  // 0: the plan never changed
  double lr = 0;
};

// The schedule of learning_rate (schedule.h) planned for `total_steps`, reached from a replan
// continuously: for the max(1, warmup) steps after replan.step the rate blends linearly from
// replan.lr to the plan's own, then it is the plan's. So the LR has no jump at the resume step,
// and a finished run (LR 0) that is extended ramps up again as a warmup would. Without a replan
// (step 0) this is learning_rate itself.
double replanned_learning_rate(int64_t step, int64_t total_steps, double base_lr, int64_t warmup,
                               const LrReplan& replan);

// The replan a run resumed at `step` continues with: the checkpoint's own (`before`) when the
// length stays `old_total`, else a new one from the learning rate the run had at `step`.
LrReplan replan_on_resume(const LrReplan& before, int64_t step, int64_t old_total,
                          int64_t new_total, double base_lr, int64_t warmup);

}  // namespace kvc
