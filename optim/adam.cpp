// Adam / AdamW over flat parameter and moment buffers and per-module gradient segments.
#include "optim/adam.h"

#include <cmath>
#include <map>
#include <unordered_set>

#include "core/op_util.h"
#include "kernels/adam.h"
#include "kernels/fill.h"

namespace kvc {

namespace {

// Each parameter starts at a 64-byte boundary so vectorized CUDA loads stay aligned.
size_t aligned_elements(size_t n, DType dtype) {
  const size_t per = 64 / dtype_size(dtype);
  return (n + per - 1) / per * per;
}

// The gradient segment a parameter name belongs to: the part before the first '.', or "" for a
// name without one.
std::string module_of(const std::string& name) {
  const size_t dot = name.find('.');
  return dot == std::string::npos ? std::string() : name.substr(0, dot);
}

// A (shape) view of `flat` starting `offset` elements in, sharing its storage.
std::shared_ptr<TensorImpl> view_impl(const Tensor& flat, size_t offset, const Shape& shape) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = flat.impl()->storage;
  impl->offset = flat.impl()->offset + offset * dtype_size(flat.dtype());
  impl->shape = shape;
  impl->dtype = flat.dtype();
  return impl;
}

void check_options(const AdamOptions& o) {
  KVC_CHECK(std::isfinite(o.lr) && o.lr >= 0, "adam: learning rate ", o.lr,
            " must be finite and >= 0");
  KVC_CHECK(o.beta1 >= 0 && o.beta1 < 1, "adam: beta1 ", o.beta1, " is outside [0, 1)");
  KVC_CHECK(o.beta2 >= 0 && o.beta2 < 1, "adam: beta2 ", o.beta2, " is outside [0, 1)");
  KVC_CHECK(o.eps >= 0, "adam: negative eps ", o.eps);
  KVC_CHECK(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "adam: weight_decay ",
            o.weight_decay, " must be finite and >= 0");
}

}  // namespace

Adam::Adam(const std::vector<std::pair<std::string, Tensor>>& named_params, AdamOptions options,
           size_t min_segment_bytes)
    : options_(options) {
  check_options(options_);
  KVC_CHECK(!named_params.empty(), "adam: no parameters to optimize");
  dtype_ = named_params.front().second.defined() ? named_params.front().second.dtype() : dtype_;
  device_ = named_params.front().second.defined() ? named_params.front().second.device() : device_;

  std::unordered_set<std::string> seen_names;
  std::unordered_set<const TensorImpl*> seen_impls;
  size_t total = 0;
  for (const auto& [name, p] : named_params) {
    KVC_CHECK(p.defined(), "adam: parameter '", name, "' is an undefined tensor");
    KVC_CHECK(seen_names.insert(name).second, "adam: parameter name '", name, "' appears twice");
    KVC_CHECK(seen_impls.insert(p.impl()).second, "adam: parameter '", name,
              "' is the same tensor as an earlier one");
    KVC_CHECK(p.dtype() == dtype_, "adam: parameter '", name, "' ", p.shape(), " is ",
              dtype_name(p.dtype()), " but '", named_params.front().first, "' is ",
              dtype_name(dtype_));
    KVC_CHECK(p.device() == device_, "adam: parameter '", name, "' ", p.shape(), " is on ",
              p.device().name(), " but '", named_params.front().first, "' is on ", device_.name());
    KVC_CHECK(p.is_leaf(), "adam: parameter '", name, "' ", p.shape(),
              " was produced by an op (not a leaf tensor)");
    Slot slot;
    slot.param = p.impl_ptr();
    slot.offset = total;
    slot.numel = p.numel();
    total += aligned_elements(static_cast<size_t>(p.numel()), dtype_);
    names_.push_back(name);
    slots_.push_back(std::move(slot));
    numel_ += p.numel();
  }

  const TensorOptions opt = TensorOptions{}.with_dtype(dtype_).with_device(device_);
  const Shape flat_shape{static_cast<int64_t>(total)};
  // The values move first, each parameter's own storage freed as it goes, and only then come the
  // gradient and moment buffers: the peak while building is twice the parameters, not five
  // times (the whole-model copies would otherwise all coexist with the old storages).
  flat_params_ = Tensor::zeros(flat_shape, opt);
  std::vector<std::shared_ptr<TensorImpl>> old_grads(slots_.size());
  for (size_t i = 0; i < slots_.size(); ++i) {
    TensorImpl& p = *slots_[i].param;
    // The parameter's own impl is re-pointed, so every handle to it (the module's member) sees
    // the flat storage.
    Tensor(view_impl(flat_params_, slots_[i].offset, p.shape))
        .copy_from(Tensor(slots_[i].param).detach());
    p.storage = flat_params_.impl()->storage;
    p.offset = flat_params_.impl()->offset + slots_[i].offset * dtype_size(dtype_);
    old_grads[i] = std::move(p.grad);
  }
  // The gradient segments: runs of one module's parameters, a run opening a segment of its own
  // when it and the segment so far are both large enough.
  const auto offset_of = [&](size_t slot) {
    return slot < slots_.size() ? slots_[slot].offset : total;
  };
  std::vector<size_t> run_starts;
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (i == 0 || module_of(names_[i]) != module_of(names_[i - 1])) run_starts.push_back(i);
  }
  run_starts.push_back(slots_.size());
  const size_t min_elements = min_segment_bytes / dtype_size(dtype_);
  for (size_t r = 0; r + 1 < run_starts.size(); ++r) {
    const size_t first = run_starts[r], end = run_starts[r + 1];
    const bool own =
        segments_.empty() || (offset_of(first) - segments_.back().begin >= min_elements &&
                              offset_of(end) - offset_of(first) >= min_elements);
    if (own) {
      Segment seg;
      seg.begin = offset_of(first);
      seg.first_slot = first;
      segments_.push_back(std::move(seg));
    }
    segments_.back().end_slot = end;
    for (size_t i = first; i < end; ++i) slots_[i].segment = segments_.size() - 1;
  }
  for (Segment& seg : segments_) {
    const size_t end = offset_of(seg.end_slot);
    seg.numel = end - seg.begin;
    seg.storage =
        std::make_shared<Storage>(seg.numel * dtype_size(dtype_), device_, Storage::OnDemand{});
    for (size_t i = seg.first_slot; i < seg.end_slot; ++i) {
      const size_t from = slots_[i].offset + static_cast<size_t>(slots_[i].numel);
      const size_t to = i + 1 < seg.end_slot ? slots_[i + 1].offset : end;
      if (to > from) seg.padding.emplace_back(from - seg.begin, to - from);
      slots_[i].grad =
          view_impl(segment_view(seg), slots_[i].offset - seg.begin, slots_[i].param->shape);
    }
  }
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& slot = slots_[i];
    slot.param->grad_home = slot.grad;
    if (old_grads[i]) {  // an existing gradient: settle_grads copies it into the segment
      slot.param->grad = std::move(old_grads[i]);
    }
  }
  flat_exp_avg_ = Tensor::zeros(flat_shape, opt);
  flat_exp_avg_sq_ = Tensor::zeros(flat_shape, opt);
  norm_scale_ = Tensor::zeros({2}, opt);
}

size_t Adam::index_of(const std::string& name) const {
  for (size_t i = 0; i < names_.size(); ++i) {
    if (names_[i] == name) return i;
  }
  KVC_FAIL("adam: no parameter named '", name, "' (", names_.size(), " parameters)");
}

Tensor Adam::slice(const Tensor& flat, size_t i) const {
  return Tensor(view_impl(flat, slots_[i].offset, slots_[i].param->shape));
}

Tensor Adam::param(const std::string& name) const { return slice(flat_params_, index_of(name)); }
Tensor Adam::grad(const std::string& name) {
  const size_t i = index_of(name);
  settle_grad(i);
  return Tensor(slots_[i].grad).detach();
}
Tensor Adam::exp_avg(const std::string& name) const { return slice(flat_exp_avg_, index_of(name)); }
Tensor Adam::exp_avg_sq(const std::string& name) const {
  return slice(flat_exp_avg_sq_, index_of(name));
}

void Adam::set_state(const std::string& name, const Tensor& exp_avg, const Tensor& exp_avg_sq) {
  const size_t i = index_of(name);
  const Shape& shape = slots_[i].param->shape;
  KVC_CHECK(exp_avg.defined() && exp_avg.shape() == shape, "adam: exp_avg for '", name,
            "' has shape ", exp_avg.defined() ? exp_avg.shape() : Shape{},
            " but the parameter has ", shape);
  KVC_CHECK(exp_avg_sq.defined() && exp_avg_sq.shape() == shape, "adam: exp_avg_sq for '", name,
            "' has shape ", exp_avg_sq.defined() ? exp_avg_sq.shape() : Shape{},
            " but the parameter has ", shape);
  slice(flat_exp_avg_, i).copy_from(exp_avg.to(dtype_));
  slice(flat_exp_avg_sq_, i).copy_from(exp_avg_sq.to(dtype_));
}

AdamState Adam::state_dict() const {
  AdamState s;
  static_cast<AdamOptions&>(s) = options_;
  s.step = step_;
  for (size_t i = 0; i < names_.size(); ++i) {
    s.exp_avg.emplace_back(names_[i], slice(flat_exp_avg_, i));
    s.exp_avg_sq.emplace_back(names_[i], slice(flat_exp_avg_sq_, i));
  }
  return s;
}

void Adam::load_state_dict(const AdamState& state) {
  std::map<std::string, const Tensor*> avg_sq;
  for (const auto& [key, t] : state.exp_avg_sq) avg_sq[key] = &t;
  for (const auto& [key, t] : state.exp_avg) {
    const auto it = avg_sq.find(key);
    KVC_CHECK(it != avg_sq.end(), "adam: the state has exp_avg/", key, " but no exp_avg_sq/", key);
    set_state(key, t, *it->second);
  }
  KVC_CHECK(state.exp_avg.size() == names_.size(), "adam: the state has moments for ",
            state.exp_avg.size(), " tensors, the optimizer has ", names_.size());
  set_step_count(state.step);
}

void Adam::set_lr(double lr) {
  KVC_CHECK(std::isfinite(lr) && lr >= 0, "adam: learning rate ", lr, " must be finite and >= 0");
  options_.lr = lr;
}

void Adam::set_step_count(int64_t step) {
  KVC_CHECK(step >= 0, "adam: negative step count ", step);
  step_ = step;
}

Adam::~Adam() {
  for (Slot& slot : slots_) {
    if (slot.param->grad_home == slot.grad) slot.param->grad_home.reset();
  }
}

void Adam::settle_grad(size_t i) {
  Slot& slot = slots_[i];
  TensorImpl& p = *slot.param;
  // A module moved with to() (or a parameter re-assigned) would silently stop training.
  KVC_CHECK(p.storage == flat_params_.impl()->storage, "adam: parameter '", names_[i],
            "' no longer lives in the optimizer's flat buffer (its storage was replaced, e.g. by "
            "a device or dtype move after the optimizer was made)");
  Segment& seg = segments_[slot.segment];
  if (p.grad != slot.grad) {
    Tensor view(slot.grad);
    if (p.grad) {
      view.copy_from(Tensor(p.grad));
    } else {
      view.fill_(0.0);
    }
    p.grad = slot.grad;
  }
  // New memory (allocated by a backward or by the lines above) has garbage in its padding.
  if (seg.storage->allocated() && seg.padding_zeroed_for != seg.storage->allocations()) {
    const Tensor all = segment_view(seg);
    for (const auto& [offset, count] : seg.padding) {
      Tensor(view_impl(all, offset, Shape{static_cast<int64_t>(count)})).fill_(0.0);
    }
    seg.padding_zeroed_for = seg.storage->allocations();
  }
}

void Adam::settle_grads() {
  for (size_t i = 0; i < slots_.size(); ++i) settle_grad(i);
}

Tensor Adam::segment_view(const Segment& seg) const {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = seg.storage;
  impl->shape = Shape{static_cast<int64_t>(seg.numel)};
  impl->dtype = dtype_;
  return Tensor(std::move(impl));
}

std::vector<Tensor> Adam::grad_segments() {
  settle_grads();
  std::vector<Tensor> out;
  for (const Segment& seg : segments_) out.push_back(segment_view(seg));
  return out;
}

bool Adam::segment_in_use_elsewhere(const Segment& seg) const {
  // Ours: the segment's own handle and each slot's view; each view is held by its slot and by
  // its parameter's grad_home. Any other holder is a tensor someone kept.
  const long views = static_cast<long>(seg.end_slot - seg.first_slot);
  if (seg.storage.use_count() != 1 + views) return true;
  for (size_t i = seg.first_slot; i < seg.end_slot; ++i) {
    const Slot& slot = slots_[i];
    const long expected = slot.param->grad_home == slot.grad ? 2 : 1;
    if (slot.grad.use_count() != expected + (slot.param->grad == slot.grad ? 1 : 0)) return true;
  }
  return false;
}

void Adam::zero_grad() {
  for (Slot& slot : slots_) {
    slot.param->grad.reset();
    slot.param->grad_home = slot.grad;  // a parameter re-homed by another optimizer comes back
  }
  for (Segment& seg : segments_) {
    if (!segment_in_use_elsewhere(seg)) seg.storage->release();
  }
  scale_pending_ = false;
}

void Adam::set_clip_scale(double max_norm) {
  KVC_CHECK(max_norm > 0 && !std::isnan(max_norm), "clip_grad_norm: max_norm ", max_norm,
            " must be > 0");
  settle_grads();
  KVC_DISPATCH_FLOAT(dtype_, "clip_grad_norm", [&] {
    std::vector<kernels::GradSpan<scalar_t>> spans;
    for (const Segment& seg : segments_) {
      spans.push_back(
          {static_cast<const scalar_t*>(seg.storage->data()), static_cast<int64_t>(seg.numel)});
    }
    KVC_LAUNCH(device_,
               K::grad_norm_scale<scalar_t>(spans.data(), static_cast<int64_t>(spans.size()),
                                            max_norm, norm_scale_.data<scalar_t>()));
  });
  scale_pending_ = true;
  norm_valid_ = true;
}

double Adam::clip_grad_norm(double max_norm) {
  set_clip_scale(max_norm);
  return last_grad_norm();
}

double Adam::last_grad_norm() const {
  KVC_CHECK(norm_valid_, "adam: last_grad_norm() before any clip_grad_norm()");
  return norm_scale_.to_vector()[0];
}

void Adam::step() {
  stage_step();
  apply_step();
}

void Adam::stage_step() {
  ++step_;
  static_cast<AdamOptions&>(staged_) = options_;
  staged_.step = step_;
#ifdef KVC_WITH_CUDA
  if (device_.is_cuda()) {
    if (!step_coeffs_.defined()) {
      const int64_t doubles = static_cast<int64_t>(kernels::cuda::kAdamCoeffBytes / sizeof(double));
      step_coeffs_ =
          Tensor::zeros({doubles}, TensorOptions{}.with_dtype(DType::f64).with_device(device_));
    }
    KVC_DISPATCH_FLOAT(dtype_, "adam", [&] {
      kernels::cuda::adam_stage<scalar_t>(staged_, step_coeffs_.data<double>());
    });
  }
#endif
}

void Adam::apply_step() {
  KVC_CHECK(staged_.step > 0, "adam: apply_step() before stage_step()");
  settle_grads();
  KVC_DISPATCH_FLOAT(dtype_, "adam", [&] {
    const scalar_t* scale = scale_pending_ ? norm_scale_.data<scalar_t>() + 1 : nullptr;
    for (const Segment& seg : segments_) {  // one launch per segment
      scalar_t* p = flat_params_.data<scalar_t>() + seg.begin;
      const scalar_t* g = static_cast<const scalar_t*>(seg.storage->data());
      scalar_t* m = flat_exp_avg_.data<scalar_t>() + seg.begin;
      scalar_t* v = flat_exp_avg_sq_.data<scalar_t>() + seg.begin;
      const int64_t n = static_cast<int64_t>(seg.numel);
      if (device_.is_cuda()) {
        KVC_CUDA_ONLY(kernels::cuda::adam_step_staged<scalar_t>(
            p, g, m, v, n, step_coeffs_.data<double>(), scale));
      } else {
        kernels::cpu::adam_step<scalar_t>(p, g, m, v, n, staged_, scale);
      }
    }
  });
  scale_pending_ = false;
}

void Adam::apply_step_with_norm() {
  KVC_CHECK(staged_.step > 0, "adam: apply_step_with_norm() before stage_step()");
  KVC_CHECK(!scale_pending_, "adam: apply_step_with_norm() with a clip scale pending");
  if (!device_.is_cuda()) {  // the CPU keeps its two loops: the norm's, then the update's
    set_clip_scale(std::numeric_limits<double>::infinity());
    scale_pending_ = false;  // the scale is 1: the update needs no multiply
    apply_step();
    return;
  }
  settle_grads();
  KVC_DISPATCH_FLOAT(dtype_, "adam", [&] {
    std::vector<kernels::cuda::AdamSpan<scalar_t>> spans;
    for (const Segment& seg : segments_) {
      spans.push_back({flat_params_.data<scalar_t>() + seg.begin,
                       static_cast<const scalar_t*>(seg.storage->data()),
                       flat_exp_avg_.data<scalar_t>() + seg.begin,
                       flat_exp_avg_sq_.data<scalar_t>() + seg.begin,
                       static_cast<int64_t>(seg.numel)});
    }
    KVC_CUDA_ONLY(kernels::cuda::adam_step_staged_norm<scalar_t>(
        spans.data(), static_cast<int64_t>(spans.size()), step_coeffs_.data<double>(),
        norm_scale_.data<scalar_t>()));
  });
  norm_valid_ = true;
}

}  // namespace kvc
