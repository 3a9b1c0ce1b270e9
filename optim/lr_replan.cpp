// A continuous learning rate across a resume that changed the run's length.
#include "optim/lr_replan.h"

#include <algorithm>

#include "optim/schedule.h"

namespace kvc {

double replanned_learning_rate(int64_t step, int64_t total_steps, double base_lr, int64_t warmup,
                               const LrReplan& replan) {
  const double planned = learning_rate(step, total_steps, base_lr, warmup);
  if (replan.step <= 0 || step <= replan.step) return planned;
  const int64_t blend = std::max<int64_t>(1, warmup);
  const int64_t since = step - replan.step;
  if (since >= blend) return planned;
  const double t = static_cast<double>(since) / static_cast<double>(blend);
  return replan.lr + (planned - replan.lr) * t;
}

LrReplan replan_on_resume(const LrReplan& before, int64_t step, int64_t old_total,
                          int64_t new_total, double base_lr, int64_t warmup) {
  if (new_total == old_total || step <= 0) return before;
  return {step, replanned_learning_rate(step, old_total, base_lr, warmup, before)};
}

}  // namespace kvc
