// Module: registration, traversal, state loading and in-place conversion of parameters.
#include "nn/module.h"

#include <sstream>

#include "core/autograd.h"

namespace kvc {

uint64_t derive_seed(uint64_t seed, uint64_t stream) {
  auto mix = [](uint64_t z) {  // SplitMix64's finalizer
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  return mix(seed ^ mix(stream));
}

Tensor Module::operator()(const Tensor& x) {
  check_input(x);
  return forward(x);
}

Tensor Module::forward(const Tensor& x) {
  KVC_FAIL(name(), ": has no single-input forward (called with ", x.defined() ? x.shape() : Shape{},
           ")");
}

void Module::check_input(const Tensor& x) const {
  KVC_CHECK(x.defined(), name(), ": input is an undefined tensor");
}

void Module::check_new_name(const std::string& name) const {
  KVC_CHECK(!name.empty(), this->name(), ": empty parameter or submodule name");
  for (const Entry& e : entries_) {
    KVC_CHECK(e.name != name, this->name(), ": '", name, "' is registered twice");
  }
}

Tensor Module::register_parameter(const std::string& name, Tensor t) {
  check_new_name(name);
  KVC_CHECK(t.defined(), this->name(), ": parameter '", name, "' is an undefined tensor");
  KVC_CHECK(t.is_leaf(), this->name(), ": parameter '", name, "' ", t.shape(),
            " must be a leaf tensor, not the output of a recorded op");
  t.set_requires_grad(true);
  entries_.push_back(Entry{name, t, nullptr});
  return t;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> child) {
  check_new_name(name);
  KVC_CHECK(child != nullptr, this->name(), ": submodule '", name, "' is null");
  entries_.push_back(Entry{name, Tensor(), std::move(child)});
}

void Module::collect(const std::string& prefix,
                     std::vector<std::pair<std::string, Tensor>>* out) const {
  for (const Entry& e : entries_) {
    if (e.child) {
      e.child->collect(prefix + e.name + ".", out);
    } else {
      out->emplace_back(prefix + e.name, e.parameter);
    }
  }
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", &out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& kv : named_parameters()) out.push_back(kv.second);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::children() const {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  for (const Entry& e : entries_) {
    if (e.child) out.emplace_back(e.name, e.child);
  }
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const Tensor& p : parameters()) n += p.numel();
  return n;
}

void Module::zero_grad() {
  for (Tensor& p : parameters()) p.zero_grad();
}

void Module::requires_grad(bool on) {
  for (Tensor& p : parameters()) p.set_requires_grad(on);
}

void Module::train(bool on) {
  training_ = on;
  for (const Entry& e : entries_) {
    if (e.child) e.child->train(on);
  }
}

std::map<std::string, Tensor> Module::state() const {
  std::map<std::string, Tensor> out;
  for (auto& kv : named_parameters()) out.emplace(kv.first, kv.second);
  return out;
}

void Module::load_state(const std::map<std::string, Tensor>& state, bool strict) {
  const auto params = named_parameters();
  if (strict) {
    std::vector<std::string> missing, unexpected;
    std::map<std::string, bool> known;
    for (auto& kv : params) {
      known[kv.first] = true;
      if (state.find(kv.first) == state.end()) missing.push_back(kv.first);
    }
    for (auto& kv : state) {
      if (!known.count(kv.first)) unexpected.push_back(kv.first);
    }
    if (!missing.empty() || !unexpected.empty()) {
      std::ostringstream os;
      auto list = [&os](const char* what, const std::vector<std::string>& keys) {
        os << " " << what << ":";
        for (size_t i = 0; i < keys.size(); ++i) os << (i ? ", " : " ") << "'" << keys[i] << "'";
        os << ";";
      };
      if (!missing.empty()) list("missing keys", missing);
      if (!unexpected.empty()) list("unexpected keys", unexpected);
      std::string text = os.str();
      text.pop_back();
      KVC_FAIL(name(), ": load_state does not match the module's parameters;", text);
    }
  }
  // Check every shape before copying anything, so a failed load leaves the module untouched.
  for (auto& kv : params) {
    auto it = state.find(kv.first);
    if (it == state.end()) continue;
    KVC_CHECK(it->second.defined(), name(), ": load_state: '", kv.first,
              "' is an undefined tensor");
    KVC_CHECK(it->second.shape() == kv.second.shape(), name(), ": load_state: '", kv.first,
              "' has shape ", it->second.shape(), " in the state but ", kv.second.shape(),
              " in the module");
  }
  NoGradGuard no_grad;
  for (auto& kv : params) {
    auto it = state.find(kv.first);
    if (it == state.end()) continue;
    Tensor src = it->second.to(kv.second.dtype());  // dtype first, then one copy across devices
    Tensor dst = kv.second;
    dst.copy_from(src);
  }
}

namespace {

// Points `param`'s TensorImpl at `converted`'s storage: the handle keeps its identity.
void adopt_storage(const Tensor& param, const Tensor& converted) {
  TensorImpl* impl = param.impl();
  impl->storage = converted.impl()->storage;
  impl->offset = converted.impl()->offset;
  impl->dtype = converted.dtype();
  impl->grad.reset();  // a gradient of the old dtype/device cannot be accumulated into any more
}

}  // namespace

void Module::to(Device device) {
  for (const Tensor& p : parameters()) {
    if (p.device() != device) adopt_storage(p, p.to(device));
  }
}

void Module::to(DType dtype) {
  for (const Tensor& p : parameters()) {
    if (p.dtype() != dtype) adopt_storage(p, p.to(dtype));
  }
}

DType Module::dtype() const {
  const auto params = named_parameters();
  return params.empty() ? DType::f32 : params.front().second.dtype();
}

Device Module::device() const {
  const auto params = named_parameters();
  return params.empty() ? Device::cpu() : params.front().second.device();
}

void Module::collect_rng(std::vector<uint64_t>* out) const {
  append_own_rng_counters(out);
  for (const Entry& e : entries_) {
    if (e.child) e.child->collect_rng(out);
  }
}

size_t Module::restore_rng(const std::vector<uint64_t>& in, size_t pos) {
  pos = restore_own_rng_counters(in, pos);
  for (const Entry& e : entries_) {
    if (e.child) pos = e.child->restore_rng(in, pos);
  }
  return pos;
}

std::vector<uint64_t> Module::rng_counters() const {
  std::vector<uint64_t> out;
  collect_rng(&out);
  return out;
}

void Module::set_rng_counters(const std::vector<uint64_t>& counters) {
  const size_t want = rng_counters().size();
  KVC_CHECK(counters.size() == want, name(), ": set_rng_counters got ", counters.size(),
            " counters but the module has ", want, " random streams");
  restore_rng(counters, 0);
}

}  // namespace kvc
