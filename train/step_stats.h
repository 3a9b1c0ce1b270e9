// Each training step's loss and gradient norm, gathered on the device and read in one transfer.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace kvc::train {

// One step as the metrics book it: what the trainer knew when launching it, and the two values
// read back from the device.
struct StepRecord {
  int64_t step = 0;
  double lr = 0;
  uint64_t batch_index = 0;  // the data source's position of the step's batch
  double elapsed = 0;        // seconds since the run began, at launch
  double loss = 0, grad_norm = 0;
};

// Reading a loss from the GPU waits for the device, and waiting every step would leave the GPU
// idle while the next step is launched. So each step's loss and gradient norm are copied, on the
// device, into a small buffer that read() fetches in one transfer, every `capacity` steps and
// before anything that needs them.
class StepStats {
 public:
  // Room for `capacity` (>= 1) steps, in `options`' dtype and device (the loss's).
  StepStats(int64_t capacity, TensorOptions options);

  // Copies `loss` (a scalar) and the first element of `norm_scale` ([grad norm, clip scale])
  // into the next free slot, device to device. Throws when full.
  void record(const StepRecord& step, const Tensor& loss, const Tensor& norm_scale);
  size_t pending() const { return pending_.size(); }
  bool full() const { return static_cast<int64_t>(pending_.size()) == capacity_; }
  // Whether the next record() fills the buffer.
  bool one_slot_left() const { return static_cast<int64_t>(pending_.size()) + 1 == capacity_; }
  // The recorded steps with loss and grad_norm filled in (the one wait for the device); empties
  // the buffer.
  std::vector<StepRecord> read();

 private:
  int64_t capacity_;
  Tensor values_;  // (capacity, 2): [loss, grad norm] per pending step
  std::vector<StepRecord> pending_;
};

}  // namespace kvc::train
