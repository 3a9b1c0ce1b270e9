// The training step in two halves, each replayed from CUDA graphs once shapes are fixed: the
// forward/backward half (loss, gradients, the clip's norm) and the optimizer update, so that the
// trainer can read the loss between them and keep a bad step away from the weights.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "data/batch.h"
#include "nn/compressor_pair.h"
#include "optim/adam.h"

namespace kvc::train {

struct StepRunnerOptions {
  std::string task = "distill";  // distill | teacher
  double clip = 1.0;  // the max norm given to Adam::set_clip_scale (> 0; infinite: no clipping)
  bool allow_graph = true;  // false: always launch op by op
  // Runs between backward and the clip (data-parallel ranks sum their gradients here). It is not
  // captured: the forward/backward graph ends at backward, and the clip and the update are graphs
  // of their own.
  std::function<void()> reduce_gradients;
};

class StepRunner {
 public:
  // `teacher` is required for task teacher. A graph is used on CUDA when allowed and the pair
  // draws no dropout masks (their counters would be frozen into the graph); otherwise, and when
  // capture fails (logged once), every step is launched op by op. Both paths run the same
  // kernels in the same order, so they give the same bits.
  StepRunner(CompressorPair& pair, const CompressorPair* teacher, Adam& adam,
             StepRunnerOptions options);
  ~StepRunner();
  StepRunner(const StepRunner&) = delete;
  StepRunner& operator=(const StepRunner&) = delete;

  // zero_grad, the task's loss on `batch`, backward, and the gradient norm with the clip scale
  // (on the device, in adam.norm_scale()). Returns the loss: a device scalar that is rewritten by
  // the next call. With `norm_first` false and no clipping (clip infinite), the norm is left to
  // update(), which takes it as it reads the gradients (one pass over them instead of two):
  // adam.norm_scale() then holds it only once update() has run (norm_after_update()).
  const Tensor& forward_backward(const Batch& batch, bool norm_first = true);
  // The optimizer update with the optimizer's current learning rate (Adam::step).
  void update();
  // Whether the latest forward_backward left the norm to update().
  bool norm_after_update() const { return norm_in_update_; }

  bool using_graph() const;

 private:
  struct Graphs;
  bool can_capture(const Batch& batch) const;
  void run_forward_backward(const Batch& batch);  // zero_grad, loss, backward
  void clip();

  CompressorPair& pair_;
  const CompressorPair* teacher_;
  Adam& adam_;
  StepRunnerOptions options_;
  Tensor loss_;
  int64_t eager_steps_ = 0;
  bool norm_in_update_ = false;
  bool graph_failed_ = false;
  std::unique_ptr<Graphs> graphs_;
};

}  // namespace kvc::train
