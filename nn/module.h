// Module: named parameters and submodules, train/eval mode, state load/save, device/dtype moves.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace kvc {

// A seed for an independent random stream (a submodule, a dropout layer, the teacher's noise)
// derived from a parent seed: SplitMix64 of both, so nearby seeds and streams do not collide.
uint64_t derive_seed(uint64_t seed, uint64_t stream);

// The base of every layer. Parameters and children are registered by name, and
// named_parameters() yields the dotted keys (`net.3.weight`, `k_compress.conv.weight`) that are
// the PyTorch state_dict keys and the checkpoint's dataset names.
//
// Order: named_parameters() walks the registrations in the order they were made (a child's keys
// at the position of its registration). PyTorch lists a module's own parameters before its
// children's; the keys are identical, and everything that matches the two (checkpoints,
// load_state, goldens) goes by name, never by position.
//
// Parameters are shared handles: the TensorImpl a module registers stays the same object for
// the module's life (load_state copies values into it, to() swaps its storage), so an optimizer
// that holds the handles keeps working after either.
class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // check_input(x), then forward(x).
  Tensor operator()(const Tensor& x);
  // Modules without a single-tensor forward (CompressorPair) keep the default, which throws.
  virtual Tensor forward(const Tensor& x);
  // Throws kvc::Error naming the layer and both shapes when x does not fit; default accepts all.
  virtual void check_input(const Tensor& x) const;
  // The layer's name in error messages ("conv", "Mix").
  virtual std::string name() const { return "Module"; }

  // ---- parameters ----
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<Tensor> parameters() const;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children() const;
  int64_t num_parameters() const;  // total elements
  void zero_grad();                // drops every parameter's gradient
  // Sets requires_grad on every parameter (false freezes, as the teacher is).
  void requires_grad(bool on);

  // ---- mode ----
  void train(bool on = true);  // recursive, like PyTorch
  void eval() { train(false); }
  bool training() const { return training_; }

  // ---- state ----
  // key -> the live parameter (not a copy).
  std::map<std::string, Tensor> state() const;
  // Copies every value into the existing parameter, converting dtype and device. Every
  // parameter's shape must match (the error names the key and both shapes). strict: the keys
  // must be exactly the module's (errors list the missing and the unexpected ones); otherwise
  // missing keys are left as they are and unknown keys are ignored.
  void load_state(const std::map<std::string, Tensor>& state, bool strict = true);

  // ---- conversion, in place: handles held elsewhere stay valid; gradients are dropped ----
  void to(Device device);
  void to(DType dtype);
  DType dtype() const;    // of the first parameter (f32 for a module without parameters)
  Device device() const;  // likewise

  // ---- random streams ----
  // The call counters of every Dropout below this module, in registration order: what a resume
  // needs to continue the same masks. set_rng_counters takes the same layout back.
  std::vector<uint64_t> rng_counters() const;
  void set_rng_counters(const std::vector<uint64_t>& counters);

 protected:
  // Registers `t` as parameter `name` (requires_grad set) and returns the same handle.
  Tensor register_parameter(const std::string& name, Tensor t);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

  // Hooks for modules that own random state (Dropout): append/restore this module's own
  // counters; the base class recurses into the children.
  virtual void append_own_rng_counters(std::vector<uint64_t>* /*out*/) const {}
  virtual size_t restore_own_rng_counters(const std::vector<uint64_t>& /*in*/, size_t pos) {
    return pos;
  }

 private:
  struct Entry {
    std::string name;
    Tensor parameter;               // defined for a parameter
    std::shared_ptr<Module> child;  // set for a submodule
  };
  void add_child(const std::string& name, std::shared_ptr<Module> child);
  void check_new_name(const std::string& name) const;
  void collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>* out) const;
  void collect_rng(std::vector<uint64_t>* out) const;
  size_t restore_rng(const std::vector<uint64_t>& in, size_t pos);

  std::vector<Entry> entries_;  // registration order
  bool training_ = true;
};

}  // namespace kvc
