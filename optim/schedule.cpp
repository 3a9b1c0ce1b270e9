// Linear warmup + cosine decay (see schedule.h for the exact definition).
#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"

namespace kvc {

double learning_rate(int64_t step, int64_t total_steps, double base_lr, int64_t warmup) {
  KVC_CHECK(step >= 1, "learning_rate: step ", step, " is below 1 (steps count from 1)");
  KVC_CHECK(total_steps >= 1, "learning_rate: total_steps ", total_steps, " is below 1");
  KVC_CHECK(warmup >= 0, "learning_rate: negative warmup ", warmup);
  KVC_CHECK(base_lr >= 0 && std::isfinite(base_lr), "learning_rate: bad base_lr ", base_lr);
  if (step <= warmup) return base_lr * static_cast<double>(step) / static_cast<double>(warmup);
  const double span = static_cast<double>(std::max<int64_t>(1, total_steps - warmup));
  const double p = std::min(1.0, static_cast<double>(step - warmup) / span);
  constexpr double kPi = 3.14159265358979323846;
  return base_lr * 0.5 * (1.0 + std::cos(kPi * p));
}

}  // namespace kvc
