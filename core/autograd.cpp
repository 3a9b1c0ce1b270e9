// The tape, grad mode, backward and the checked gradient accumulation.
#include "core/autograd.h"

#include "kernels/elementwise.h"

namespace kvc {

namespace {
thread_local bool t_grad_enabled = true;

// The gradient backward() is handing to the closure being run, and whether its storage was
// already given to some tensor as that tensor's gradient. While the closure runs, the walker
// holds this gradient and nothing else does (every gradient buffer has one owner), so one view
// of it (a reshape's gradient, say) may become a tensor's gradient without a copy: the walker
// drops its handle right after. A second one must be copied.
struct Handoff {
  const Storage* storage = nullptr;
  bool given = false;
};
thread_local Handoff t_handoff;

bool is_handoff(const std::shared_ptr<Storage>& s) {
  return t_handoff.storage != nullptr && s.get() == t_handoff.storage;
}
}  // namespace

Tape& Tape::current() {
  thread_local Tape tape;
  return tape;
}

bool Tape::record(const char* op, std::vector<Tensor> inputs, Tensor& output,
                  std::function<void(const Tensor&)> backward_fn) {
  if (!t_grad_enabled) return false;
  bool needed = false;
  for (const Tensor& t : inputs) needed = needed || (t.defined() && t.requires_grad());
  if (!needed) return false;
  output.set_requires_grad(true);
  output.impl()->tape_index = static_cast<int64_t>(entries_.size());
  output.impl()->tape_generation = generation_;
  entries_.push_back(
      TapeEntry{op, std::move(inputs), output.impl_ptr(), std::move(backward_fn), nullptr});
  return true;
}

void Tape::clear() {
  entries_.clear();
  ++generation_;
}

bool grad_enabled() { return t_grad_enabled; }

NoGradGuard::NoGradGuard() : previous_(t_grad_enabled) { t_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { t_grad_enabled = previous_; }

void backward(const Tensor& root, const Tensor& seed) {
  KVC_CHECK(root.defined(), "backward: the root tensor is undefined");
  KVC_CHECK(root.requires_grad(), "backward: tensor of shape ", root.shape(),
            " does not require grad (no input of the ops that made it requires grad)");
  Tape& tape = Tape::current();
  TensorImpl* r = root.impl();
  if (r->tape_index >= 0) {
    KVC_CHECK(r->tape_generation == tape.generation(),
              "backward: the tape that recorded this tensor (shape ", root.shape(),
              ") was already freed by an earlier backward(); run the forward again");
  }
  Tensor g;
  if (seed.defined()) {
    KVC_CHECK(seed.shape() == root.shape(), "backward: seed gradient of shape ", seed.shape(),
              " does not match the root's shape ", root.shape());
    g = seed;
  } else {
    KVC_CHECK(root.numel() == 1, "backward: root of shape ", root.shape(),
              " is not a scalar; pass a seed gradient of the same shape");
    g = Tensor::ones(root.shape(), root.options());
  }
  accumulate_grad(root, g);
  if (r->tape_index < 0) return;  // a leaf: its gradient is the seed

  // Walk once, newest first, from the root's own entry: later entries cannot feed the root.
  struct ClearOnExit {
    Tape& tape;
    ~ClearOnExit() { tape.clear(); }
  } clear_on_exit{tape};
  for (int64_t i = r->tape_index; i >= 0; --i) {
    TapeEntry& e = tape.entries_[static_cast<size_t>(i)];
    // Every op that reads this one's output is newer and has run, so its gradient is final. The
    // closure, and what it alone saved (a fused op's activations, masks, rounded copies), is
    // freed as soon as it has run, or now when no gradient reached the op, as PyTorch frees a
    // node's saved tensors: an earlier op's backward then finds that memory free.
    const auto backward_fn = std::move(e.backward);
    e.backward = nullptr;
    std::shared_ptr<TensorImpl> out =
        e.output_with_grad ? std::move(e.output_with_grad) : e.output.lock();
    e.output_with_grad.reset();
    if (out && out->grad) {
      // Take the gradient out: an intermediate's gradient is not kept (as in PyTorch), and a
      // single owner lets accumulate_grad hand the buffer on without a copy.
      Tensor grad_out(std::move(out->grad));
      out->grad.reset();
      struct ResetHandoff {
        ~ResetHandoff() { t_handoff = Handoff{}; }
      } reset_handoff;
      t_handoff = Handoff{grad_out.impl()->storage.get(), false};
      backward_fn(grad_out);
    }
    // The inputs too: an intermediate that got a gradient here goes to the entry that made it
    // (its TensorImpl carries the gradient there), and one that no other op still holds is freed
    // as soon as that entry has run, instead of at the end of backward.
    TapeEntry& done = tape.entries_[static_cast<size_t>(i)];
    for (const Tensor& input : done.inputs) {
      const TensorImpl* t = input.impl();
      if (t != nullptr && t->grad && t->tape_index >= 0 && t->tape_index < i &&
          t->tape_generation == tape.generation()) {
        tape.entries_[static_cast<size_t>(t->tape_index)].output_with_grad = input.impl_ptr();
      }
    }
    std::vector<Tensor>().swap(done.inputs);
  }
  // The root keeps its gradient only when it is a leaf, handled above.
}

void accumulate_grad(const Tensor& target, const Tensor& grad) {
  if (!target.requires_grad()) return;  // e.g. a constant input of a recorded op
  KVC_CHECK(grad.shape() == target.shape(), "accumulate_grad: gradient of shape ", grad.shape(),
            " does not match tensor of shape ", target.shape());
  KVC_CHECK(grad.dtype() == target.dtype(), "accumulate_grad: gradient dtype ",
            dtype_name(grad.dtype()), " does not match tensor dtype ", dtype_name(target.dtype()));
  KVC_CHECK(grad.device() == target.device(), "accumulate_grad: gradient on ", grad.device().name(),
            " but tensor on ", target.device().name());
  TensorImpl* t = target.impl();
  const std::shared_ptr<Storage>& storage = grad.impl()->storage;
  if (!t->grad && t->grad_home) {
    Tensor(t->grad_home).copy_from(grad);
    t->grad = t->grad_home;
    return;
  }
  if (!t->grad) {
    // Reuse the buffer when nothing else can see it, or when the only other holder is the
    // walker's handle of the gradient being handed on (see Handoff) and no other tensor got it
    // yet; otherwise a later in-place accumulation would write into another tensor's gradient.
    const bool sole_view = grad.impl_ptr().use_count() == 1;
    const bool exclusive =
        sole_view && (storage.use_count() == 1 ||
                      (storage.use_count() == 2 && is_handoff(storage) && !t_handoff.given));
    if (exclusive && is_handoff(storage)) t_handoff.given = true;
    t->grad = (exclusive ? grad.detach() : grad.clone()).impl_ptr();
    return;
  }
  if (is_handoff(t->grad->storage)) {
    // This gradient is the one the running closure is still reading: add out of place.
    t->grad = Tensor(t->grad).clone().impl_ptr();
  }
  Tensor acc(t->grad);
  const int64_t n = acc.numel();
  KVC_DISPATCH_FLOAT(acc.dtype(), "accumulate_grad", [&] {
    if (acc.device().is_cpu()) {
      kernels::cpu::axpby<scalar_t>(acc.data<scalar_t>(), grad.data<scalar_t>(), n, 1, 1);
    } else {
      KVC_CUDA_ONLY(
          kernels::cuda::axpby<scalar_t>(acc.data<scalar_t>(), grad.data<scalar_t>(), n, 1, 1));
    }
  });
}

Tensor grad_buffer(const Tensor& target, bool* accumulate) {
  TensorImpl* t = target.impl();
  if (t->grad) {
    // A kernel will write into it; never into the gradient the running closure still reads.
    if (is_handoff(t->grad->storage)) t->grad = Tensor(t->grad).clone().impl_ptr();
    *accumulate = true;
    return Tensor(t->grad);
  }
  *accumulate = false;
  if (t->grad_home) {
    t->grad = t->grad_home;
    return Tensor(t->grad);
  }
  Tensor g = Tensor::empty(target.shape(), target.options());
  t->grad = g.impl_ptr();
  return g;
}

}  // namespace kvc
