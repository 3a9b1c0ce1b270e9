// The building blocks of the compressors: Linear, Mix, Conv1d, ReLU, GELU, Dropout, Sequential.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"

namespace kvc {

// Where a layer's initial values come from: Philox stream `seed`, one offset per parameter
// tensor taken in construction order, so every parameter of a model draws distinct numbers and
// the same options always give the same model. `options` sets dtype and device.
struct ParamInit {
  uint64_t seed = 0;
  TensorOptions options;
  uint64_t next_offset = 0;

  uint64_t take() { return next_offset++; }
  // U(-bound, bound) of `shape`, from the next offset.
  Tensor uniform(const Shape& shape, double bound);
};

// Linear's sizes (as nn.Linear's in_features, out_features) and its switches, set by name:
// LinearOptions(in, out).bias(false).
class LinearOptions {
 public:
  LinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}
  LinearOptions& bias(bool on) {
    bias_ = on;
    return *this;
  }
  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  bool bias() const { return bias_; }

 private:
  int64_t in_features_, out_features_;
  bool bias_ = true;
};

// PyTorch nn.Linear: y = x W^T + b over the last axis. Init U(1/sqrt(in)) (SPEC's `mlp`).
class Linear : public Module {
 public:
  Linear(const LinearOptions& options, ParamInit& init);
  Tensor forward(const Tensor& x) override;  // (..., in) -> (..., out)
  void check_input(const Tensor& x) const override;
  std::string name() const override { return "Linear"; }
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }

 private:
  int64_t in_, out_;
  Tensor weight_;  // (out, in)
  Tensor bias_;    // (out) or undefined
};

// Grouped linear, einops EinMix('b h w i -> b h w o', weight 'h i o', bias 'h o').
// Init U(1/sqrt(in)) for weight and bias.
class Mix : public Module {
 public:
  Mix(int64_t heads, int64_t in, int64_t out, ParamInit& init);
  Tensor forward(const Tensor& x) override;  // (b, h, w, in) -> (b, h, w, out)
  // forward(x + shift) for shift (1, h, 1, in) broadcast over b and w (the positions of blocks):
  // the shift moves into the bias, mix(x, W, mix(shift, W, B)), so backward needs no gradient
  // of x when x needs none.
  Tensor forward_shifted(const Tensor& x, const Tensor& shift);
  // That bias, mix(shift, W, B) as (h, out).
  Tensor shifted_bias(const Tensor& shift);
  void check_input(const Tensor& x) const override;
  std::string name() const override { return "Mix"; }
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }

 private:
  int64_t heads_, in_, out_;
  Tensor weight_;  // (h, in, out)
  Tensor bias_;    // (h, out)
};

// Conv1d's channels (as nn.Conv1d's) and the rest set by name, each 1 unless set:
// Conv1dOptions(c, c).kernel(n).stride(n).groups(h).
class Conv1dOptions {
 public:
  Conv1dOptions(int64_t in_channels, int64_t out_channels)
      : in_channels_(in_channels), out_channels_(out_channels) {}
  Conv1dOptions& kernel(int64_t k) {
    kernel_ = k;
    return *this;
  }
  Conv1dOptions& stride(int64_t s) {
    stride_ = s;
    return *this;
  }
  Conv1dOptions& groups(int64_t g) {
    groups_ = g;
    return *this;
  }
  int64_t in_channels() const { return in_channels_; }
  int64_t out_channels() const { return out_channels_; }
  int64_t kernel() const { return kernel_; }
  int64_t stride() const { return stride_; }
  int64_t groups() const { return groups_; }

 private:
  int64_t in_channels_, out_channels_;
  int64_t kernel_ = 1, stride_ = 1, groups_ = 1;
};

// PyTorch nn.Conv1d with padding 0, groups and stride == kernel (non-overlapping windows, the
// only convolution the compressors use), computed as mix over the windows. Init U(1/sqrt(fan_in))
// for weight and bias, fan_in = in_channels / groups * kernel (PyTorch's default bound).
class Conv1d : public Module {
 public:
  Conv1d(const Conv1dOptions& options, ParamInit& init);
  Tensor forward(const Tensor& x) override;  // (b, c_in, L) -> (b, c_out, floor(L / k))
  void check_input(const Tensor& x) const override;
  std::string name() const override { return "Conv1d"; }
  // The same convolution as mix over windows laid out (b, groups, windows, k * c_in/groups) ->
  // (b, groups, windows, c_out/groups): for compressors whose blocks already are the windows.
  Tensor forward_windows(const Tensor& windows) const;
  // forward_windows(windows + shift), shift (1, g, 1, k*c_in), the way Mix::forward_shifted does.
  Tensor forward_windows_shifted(const Tensor& windows, const Tensor& shift) const;
  // forward_windows without the bias: the linear part alone.
  Tensor forward_windows_linear(const Tensor& windows) const;
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }
  int64_t groups() const { return options_.groups(); }

 private:
  Tensor grouped_weight() const;  // as mix's (groups, k * c_in/groups, c_out/groups), on the tape
  Conv1dOptions options_;
  Tensor weight_;  // (c_out, c_in / groups, kernel)
  Tensor bias_;    // (c_out)
};

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override;  // any shape
  std::string name() const override { return "ReLU"; }
};

// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)).
class GELU : public Module {
 public:
  Tensor forward(const Tensor& x) override;  // any shape
  std::string name() const override { return "GELU"; }
};

// Inverted dropout. The mask of a training forward is Philox (seed, counter); the counter then
// advances, so each call draws a fresh mask and a resume that restores the counter (see
// Module::rng_counters) continues the same sequence. Eval, or p == 0, is the identity.
class Dropout : public Module {
 public:
  Dropout(double p, uint64_t seed);
  Tensor forward(const Tensor& x) override;  // any shape
  std::string name() const override { return "Dropout"; }
  double p() const { return p_; }
  uint64_t seed() const { return seed_; }
  uint64_t counter() const { return counter_; }

 protected:
  void append_own_rng_counters(std::vector<uint64_t>* out) const override;
  size_t restore_own_rng_counters(const std::vector<uint64_t>& in, size_t pos) override;

 private:
  double p_;
  uint64_t seed_;
  uint64_t counter_ = 0;
};

// nn.Sequential: children named "0", "1", ... so keys come out as `net.0.weight`.
class Sequential : public Module {
 public:
  Sequential() = default;
  // Appends the next child (named by its index) and returns it.
  template <typename M>
  std::shared_ptr<M> add(std::shared_ptr<M> m) {
    register_module(std::to_string(size_++), m);
    layers_.push_back(m);
    return m;
  }
  Tensor forward(const Tensor& x) override;  // each child's operator() in turn
  // The children from index `first` on, in turn (a caller ran the ones before itself).
  Tensor forward_from(int64_t first, const Tensor& x);
  std::string name() const override { return "Sequential"; }
  int64_t size() const { return size_; }

 private:
  int64_t size_ = 0;
  std::vector<std::shared_ptr<Module>> layers_;
};

}  // namespace kvc
