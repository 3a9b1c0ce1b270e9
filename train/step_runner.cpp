// StepRunner: the training step op by op for the first steps, then replayed from CUDA graphs.
#include "train/step_runner.h"

#include <spdlog/spdlog.h>

#include <cmath>

#include "core/autograd.h"
#include "kernels/graph.h"

namespace kvc::train {

namespace {

// Steps launched op by op before capturing: the allocator's cache, cuBLAS and the kernels'
// one-time set-up are then warm, so the capture allocates (almost) nothing new.
constexpr int64_t kWarmupSteps = 2;

[[maybe_unused]] bool same_shapes(const Batch& a, const Batch& b) {  // CUDA builds only
  return a.k.shape() == b.k.shape() && a.v.shape() == b.v.shape() &&
         a.q.defined() == b.q.defined() && (!a.q.defined() || a.q.shape() == b.q.shape()) &&
         a.q_pos.defined() == b.q_pos.defined() &&
         (!a.q_pos.defined() || a.q_pos.shape() == b.q_pos.shape());
}

}  // namespace

#ifdef KVC_WITH_CUDA
struct StepRunner::Graphs {
  Batch inputs;  // the captured step reads its batch from here: each batch is copied in
  kernels::cuda::StepGraph forward_backward, clip, update;
  kernels::cuda::StepGraph update_with_norm;  // captured only when the step clips nothing
};
#else
struct StepRunner::Graphs {};
#endif

StepRunner::StepRunner(CompressorPair& pair, const CompressorPair* teacher, Adam& adam,
                       StepRunnerOptions options)
    : pair_(pair), teacher_(teacher), adam_(adam), options_(std::move(options)) {
  KVC_CHECK(options_.clip > 0, "train: the step's clip norm ", options_.clip, " must be > 0");
  KVC_CHECK(options_.task != "teacher" || teacher_ != nullptr,
            "train: task teacher needs a teacher pair");
}

StepRunner::~StepRunner() = default;

bool StepRunner::using_graph() const { return graphs_ != nullptr; }

bool StepRunner::can_capture(const Batch& batch) const {
  const bool draws_dropout = pair_.training() && pair_.options().dropout > 0;
  return options_.allow_graph && !graph_failed_ && batch.k.device().is_cuda() && !draws_dropout;
}

void StepRunner::run_forward_backward(const Batch& batch) {
  adam_.zero_grad();
  if (options_.task == "teacher") {
    loss_ = pair_.teacher_loss(*teacher_, batch.k, batch.v);
  } else {
    KVC_CHECK(options_.task == "distill", "train: unknown task '", options_.task,
              "' (expected distill or teacher)");
    loss_ = pair_.distill_loss(batch.q, batch.k, batch.v, batch.q_pos);
  }
  backward(loss_);
  // Zeros for any parameter backward did not reach, inside the captured graph with the rest.
  adam_.settle_grads();
}

void StepRunner::clip() { adam_.set_clip_scale(options_.clip); }

const Tensor& StepRunner::forward_backward(const Batch& batch, bool norm_first) {
  norm_in_update_ = !norm_first && std::isinf(options_.clip);
#ifdef KVC_WITH_CUDA
  if (graphs_ && !same_shapes(batch, graphs_->inputs)) {  // a new shape: warm up again, eager
    graphs_.reset();
    eager_steps_ = 0;
  }
  if (!graphs_ && eager_steps_ >= kWarmupSteps && can_capture(batch)) {
    auto g = std::make_unique<Graphs>();
    auto copy = [](const Tensor& t) { return t.defined() ? t.clone() : Tensor(); };
    g->inputs = {batch.k.clone(), batch.v.clone(), copy(batch.q), copy(batch.q_pos)};
    try {
      g->forward_backward.capture([&] { run_forward_backward(g->inputs); });
      g->clip.capture([&] { clip(); });
      g->update.capture([&] { adam_.apply_step(); });  // reads the clip's scale
      if (std::isinf(options_.clip)) {
        g->update_with_norm.capture([&] { adam_.apply_step_with_norm(); });
      }
      graphs_ = std::move(g);
    } catch (const Error& e) {
      graph_failed_ = true;
      spdlog::warn(
          "train: the step could not be captured as a CUDA graph ({}); running it op by op",
          e.what());
    }
  }
  if (graphs_) {
    graphs_->inputs.k.copy_from(batch.k);
    graphs_->inputs.v.copy_from(batch.v);
    if (batch.q.defined()) graphs_->inputs.q.copy_from(batch.q);
    if (batch.q_pos.defined()) graphs_->inputs.q_pos.copy_from(batch.q_pos);
    graphs_->forward_backward.replay();
    if (options_.reduce_gradients) options_.reduce_gradients();
    if (!norm_in_update_) graphs_->clip.replay();
    return loss_;
  }
#endif
  run_forward_backward(batch);
  if (options_.reduce_gradients) options_.reduce_gradients();
  if (!norm_in_update_) clip();
  ++eager_steps_;
  return loss_;
}

void StepRunner::update() {
  adam_.stage_step();
#ifdef KVC_WITH_CUDA
  if (graphs_) {
    (norm_in_update_ ? graphs_->update_with_norm : graphs_->update).replay();
    return;
  }
#endif
  if (norm_in_update_) {
    adam_.apply_step_with_norm();
  } else {
    adam_.apply_step();
  }
}

}  // namespace kvc::train
