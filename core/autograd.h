// The tape: ops append one entry each; backward() walks it in reverse once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace kvc {

// One recorded op: the tensors it read (kept alive for backward) and a closure that receives
// the gradient of its output and calls accumulate_grad() on the inputs that need one. backward()
// frees the closure and the inputs, and so the state they kept, as soon as the op is done with.
struct TapeEntry {
  const char* op = "";
  std::vector<Tensor> inputs;
  // Weak: an output nobody holds any more (not the root, not a later op's input) gets no
  // gradient, and its memory goes as soon as it can.
  std::weak_ptr<TensorImpl> output;
  std::function<void(const Tensor& grad_output)> backward;
  // During backward: the output, once a later op gave it a gradient and let go of its inputs.
  std::shared_ptr<TensorImpl> output_with_grad;
};

class Tape {
 public:
  // This thread's tape.
  static Tape& current();

  // Records `output = op(inputs)` if grad mode is on and some input requires grad; marks output
  // as requiring grad then. Returns whether it recorded.
  bool record(const char* op, std::vector<Tensor> inputs, Tensor& output,
              std::function<void(const Tensor&)> backward);

  size_t size() const { return entries_.size(); }
  uint64_t generation() const { return generation_; }
  // Frees every entry (and the tensors they saved); tensors made before can no longer backward.
  void clear();

 private:
  friend void backward(const Tensor&, const Tensor&);
  std::vector<TapeEntry> entries_;
  uint64_t generation_ = 1;
};

// True unless a NoGradGuard is alive on this thread.
bool grad_enabled();

// Turns recording off for its lifetime (eval, targets, optimizer steps). Nests.
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// d(root)/d(every tensor that requires grad), accumulated into .grad(). `seed` is d(root) and
// may be omitted only for a one-element root. Frees the tape afterwards.
void backward(const Tensor& root, const Tensor& seed = Tensor());

// The one checked path by which gradients reach a tensor: shape, dtype and device must match.
// The first gradient is copied into the tensor's grad_home where it has one.
void accumulate_grad(const Tensor& target, const Tensor& grad);

// For kernels that write a parameter's gradient directly (GEMM with beta 0 or 1): returns the
// buffer to write into (the tensor's gradient, else its grad_home, else a new one) and sets
// *accumulate to whether it already holds a gradient to add to.
Tensor grad_buffer(const Tensor& target, bool* accumulate);

}  // namespace kvc
