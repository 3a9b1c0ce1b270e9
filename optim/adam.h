// Adam / AdamW (PyTorch semantics) over one flat parameter buffer, with a sync-free grad-norm clip.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "kernels/adam.h"

namespace kvc {

using AdamOptions = kernels::AdamHyperparams;

// Adam's state as a checkpoint holds it (/optim): the hyperparameters (lr: the last one used;
// decoupled: attribute "optimizer", "adamw" or "adam"), the step count and both moments of
// every parameter (the parameters' names, in their order).
struct AdamState : AdamOptions {
  int64_t step = 0;
  std::vector<std::pair<std::string, Tensor>> exp_avg, exp_avg_sq;
};

// Construction moves every parameter into one flat buffer: each parameter's TensorImpl is
// re-pointed at its slice, so the module's own handles see (and write) the same memory. The
// gradients live in segments, by top-level module: consecutive parameters whose names share the
// part before the first '.' ("k_compress.", "v_compress.") form a run (names without a dot count
// as one module), and a run opens a segment of its own when it and the segment before it each
// hold at least min_segment_bytes of gradients; smaller runs join the segment before them (each
// segment costs its own launches of the optimizer's kernels, which only large ones repay). Each
// parameter's gradient is a view into its segment (its grad_home), and a
// segment's memory exists only from the backward that first writes into it to the next
// zero_grad(), as PyTorch allocates gradients in backward and set_to_none frees them: the
// forward holds no gradients, and the backward of the module that runs first does not hold the
// others'. Backward writes each parameter's first gradient straight into its view (GEMMs with
// beta 0, no zero-fill pass). settle_grads() zero-fills the views of parameters that backward did
// not reach and re-attaches every view; clip and step settle first. step() is one kernel per
// segment. Keep the Adam object alive as long as the parameters are trained: it owns the
// moments, and the parameters share its storage either way.
class Adam {
 public:
  // All parameters must be defined, distinct, and share one dtype and device. Existing gradients
  // are copied into the gradient segments (absent ones stay absent: they read as zero).
  static constexpr size_t kMinSegmentBytes = size_t{64} << 20;
  Adam(const std::vector<std::pair<std::string, Tensor>>& named_params, AdamOptions options = {},
       size_t min_segment_bytes = kMinSegmentBytes);
  Adam(const Adam&) = delete;
  Adam& operator=(const Adam&) = delete;
  ~Adam();  // the parameters keep their gradients, but backward no longer writes into this one's

  // Drops every gradient (they read as zero from here on) and a pending clip scale, and gives
  // each gradient segment's memory back unless something else still holds a view of it (a
  // gradient tensor kept by user code keeps its values) or a captured CUDA graph writes it.
  void zero_grad();
  // Makes the gradient segments hold every parameter's gradient and re-attaches the views: a
  // gradient user code replaced is copied in, a dropped one (zero_grad, Tensor::zero_grad) or
  // one backward never wrote is zero-filled. Clip and step call it, as does grad_segments().
  void settle_grads();

  // One Adam(W) update of every parameter, as torch.optim.Adam / AdamW (non-amsgrad, not
  // maximize): bias-corrected moments; Adam adds weight_decay * param to the gradient, AdamW
  // multiplies the parameter by (1 - lr * weight_decay) first. A clip scale from
  // clip_grad_norm() since the last step/zero_grad multiplies the gradient first.
  void step();
  // step() in two halves, for a training step captured in a CUDA graph: stage_step() counts the
  // step and writes its scalars (learning rate, bias corrections) where the update reads them
  // (device memory on CUDA) and is called before every replay; apply_step() is the update
  // itself, the part that is captured.
  void stage_step();
  void apply_step();
  // apply_step() that also computes the global gradient norm as it reads the gradients, into
  // norm_scale() as clip_grad_norm with no limit would ([norm, 1]): for a step whose norm is
  // reported but clips nothing, the gradients are read once, not twice (on CUDA; the CPU takes
  // the norm first, then the update). No clip scale may be pending. The parameters and moments
  // come out as apply_step() leaves them; the norm may differ from clip_grad_norm's in its last
  // bits (another order of summation).
  void apply_step_with_norm();

  // torch.nn.utils.clip_grad_norm_ over all gradients: returns the global L2 norm (before
  // clipping) and scales the gradients by min(1, max_norm / (norm + 1e-6)). The scale is kept on
  // the device and applied by the next step() (the gradient buffer itself is left unscaled), so
  // on CUDA nothing waits for the GPU here. Returns the norm, which reads it back from the
  // device.
  double clip_grad_norm(double max_norm);
  // The same without reading the norm back: computes the norm and the clip scale on the device;
  // the gradients are scaled only by the next step(). last_grad_norm() reads the norm when needed.
  void set_clip_scale(double max_norm);
  // The norm computed by the latest clip_grad_norm*(): synchronizes with the device (CUDA).
  double last_grad_norm() const;
  // (2) on the device: [latest global grad norm, clip scale]; for readers that copy the norm
  // without waiting for the device (the trainer batches its reads).
  const Tensor& norm_scale() const { return norm_scale_; }

  double lr() const { return options_.lr; }
  void set_lr(double lr);
  const AdamOptions& options() const { return options_; }

  // Number of step() calls so far (PyTorch's state["step"]); restored on resume.
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t step);

  // Parameter names in construction order.
  const std::vector<std::string>& names() const { return names_; }
  int64_t num_params() const { return static_cast<int64_t>(names_.size()); }
  // Total elements over all parameters (padding excluded).
  int64_t numel() const { return numel_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  // Views (shape of the parameter) into the flat buffers: writable, so a checkpoint restore may
  // copy_from() into them. Throw naming the key when there is no such parameter. grad() settles
  // that parameter's gradient first (settle_grads), so what is written into it counts.
  Tensor param(const std::string& name) const;
  Tensor grad(const std::string& name);
  Tensor exp_avg(const std::string& name) const;
  Tensor exp_avg_sq(const std::string& name) const;
  // Restores one parameter's moments (checkpoint resume); shapes must match the parameter's.
  // Values are cast to the optimizer's dtype and copied to its device.
  void set_state(const std::string& name, const Tensor& exp_avg, const Tensor& exp_avg_sq);

  // The state to save: the moments are views into the flat buffers (no copy), valid while this
  // optimizer lives and changed by its next step.
  AdamState state_dict() const;
  // Restores the step count and the moments of every parameter (by name; each needs both, and
  // every parameter needs them). The hyperparameters stay this optimizer's own. Throws naming
  // the first parameter that is missing or does not fit.
  void load_state_dict(const AdamState& state);

  // The flat parameter buffer (padded: each parameter starts at a 64-byte boundary).
  const Tensor& flat_params() const { return flat_params_; }  // (padded_numel)
  // Every gradient, settled (settle_grads), as one 1-D view per segment in the order of the
  // parameters: what a data-parallel reduction sums. Padding between parameters reads as zero.
  std::vector<Tensor> grad_segments();

 private:
  struct Slot {
    std::shared_ptr<TensorImpl> param;  // the module's parameter, re-pointed at flat_params_
    std::shared_ptr<TensorImpl> grad;   // the view into its segment that param->grad must hold
    size_t offset = 0;                  // element offset into the flat buffers
    int64_t numel = 0;
    size_t segment = 0;
  };
  // The gradients of slots [first_slot, end_slot): elements [begin, begin + numel) of the flat
  // layout, in memory that exists only while in use (Storage::OnDemand): zero_grad gives it up
  // until the next backward (on CUDA parked, so that the forward's activations in between cannot
  // split it and the backward takes the same block back whole).
  struct Segment {
    std::shared_ptr<Storage> storage;
    size_t begin = 0, numel = 0;
    size_t first_slot = 0, end_slot = 0;
    // The padding after each parameter, (offset into the segment, elements): zero-filled by
    // settle_grads whenever the memory is new, so that the norm over the segment is exact.
    std::vector<std::pair<size_t, size_t>> padding;
    uint64_t padding_zeroed_for = 0;  // storage->allocations() when it was last zero-filled
  };

  size_t index_of(const std::string& name) const;
  Tensor slice(const Tensor& flat, size_t i) const;  // (param shape) view of slot i
  void settle_grad(size_t i);                        // settle_grads for slot i
  Tensor segment_view(const Segment& seg) const;     // (seg.numel) view of its gradients
  bool segment_in_use_elsewhere(const Segment& seg) const;

  AdamOptions options_;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu();
  std::vector<std::string> names_;
  std::vector<Slot> slots_;
  int64_t numel_ = 0;
  int64_t step_ = 0;
  Tensor flat_params_;  // (padded_numel)
  std::vector<Segment> segments_;
  Tensor flat_exp_avg_;           // (padded_numel)
  Tensor flat_exp_avg_sq_;        // (padded_numel)
  Tensor norm_scale_;             // (2): [global grad norm, clip scale], on the device
  kernels::AdamStepArgs staged_;  // the scalars of the latest stage_step()
  Tensor step_coeffs_;            // (16) float64: their coefficients on the device (CUDA only)
  bool scale_pending_ = false;
  bool norm_valid_ = false;
};

}  // namespace kvc
