// StepStats: device-side slots for each step's loss and gradient norm.
#include "train/step_stats.h"

#include "base/error.h"

namespace kvc::train {

StepStats::StepStats(int64_t capacity, TensorOptions options) : capacity_(capacity) {
  KVC_CHECK(capacity >= 1, "train: step statistics need room for one step, not ", capacity);
  values_ = Tensor::empty({capacity, 2}, options);
}

void StepStats::record(const StepRecord& step, const Tensor& loss, const Tensor& norm_scale) {
  KVC_CHECK(!full(), "train: ", capacity_, " steps recorded without reading them back");
  const Device device = values_.device();
  const size_t bytes = dtype_size(values_.dtype());
  char* slot = static_cast<char*>(values_.raw_data()) + 2 * pending_.size() * bytes;
  copy_bytes(slot, device, loss.raw_data(), device, bytes);
  copy_bytes(slot + bytes, device, norm_scale.raw_data(), device, bytes);
  pending_.push_back(step);
}

std::vector<StepRecord> StepStats::read() {
  if (pending_.empty()) return {};
  const std::vector<double> v = values_.to_vector();
  std::vector<StepRecord> out = std::move(pending_);
  pending_.clear();
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].loss = v[2 * i];
    out[i].grad_norm = v[2 * i + 1];
  }
  return out;
}

}  // namespace kvc::train
