// Finite-difference gradient check: one backward against central differences per element.
#include "core/gradcheck.h"

#include <cmath>
#include <memory>

#include "core/autograd.h"

namespace kvc {

namespace {

// Puts back each input's requires_grad flag and gradient however the check ends.
class InputStateGuard {
 public:
  explicit InputStateGuard(const std::vector<std::pair<std::string, Tensor>>& inputs) {
    for (const auto& [name, t] : inputs) saved_.push_back({t, t.requires_grad(), t.grad()});
  }
  ~InputStateGuard() {
    for (Saved& s : saved_) {
      s.tensor.set_requires_grad(s.requires_grad);
      s.tensor.set_grad(s.grad);
    }
  }
  InputStateGuard(const InputStateGuard&) = delete;
  InputStateGuard& operator=(const InputStateGuard&) = delete;

 private:
  struct Saved {
    Tensor tensor;
    bool requires_grad;
    Tensor grad;
  };
  std::vector<Saved> saved_;
};

// Writes one float64 element on whatever device t lives on, without touching the others.
void set_element(const Tensor& t, int64_t index, double value) {
  void* dst = static_cast<char*>(t.raw_data()) + index * static_cast<int64_t>(sizeof(double));
  copy_bytes(dst, t.device(), &value, Device::cpu(), sizeof(double));
}

// The backward pass's side of the check: the gradient of sum(f() * R) for a random R.
struct Analytic {
  Shape out_shape;
  std::vector<double> seed;                // R, flattened
  std::vector<std::vector<double>> grads;  // one per input (zeros where none reached it)
  std::vector<bool> reached;               // whether backward reached the input
};

// Backward of sum(y * R) is backward(y) seeded with R.
Analytic analytic_gradients(const std::function<Tensor()>& f,
                            const std::vector<std::pair<std::string, Tensor>>& inputs,
                            uint64_t seed) {
  Analytic out;
  const size_t tape_before = Tape::current().size();
  Tensor y = f();
  KVC_CHECK(y.defined(), "gradcheck: the function returned an undefined tensor");
  KVC_CHECK(y.dtype() == DType::f64, "gradcheck: the function returned a ", dtype_name(y.dtype()),
            " tensor of shape ", y.shape(), "; it must be float64");
  out.out_shape = y.shape();
  const Tensor r = Tensor::rand(out.out_shape, seed, 0, -1.0, 1.0, f64().with_device(y.device()));
  out.seed = r.to_vector();
  if (y.requires_grad()) {
    backward(y, r);
  } else if (Tape::current().size() > tape_before) {
    Tape::current().clear();  // f recorded ops but returned something detached from them
  }
  y = Tensor();
  for (const auto& [name, t] : inputs) {
    const Tensor g = t.grad();
    out.reached.push_back(g.defined());
    out.grads.push_back(g.defined() ? g.to_vector()
                                    : std::vector<double>(static_cast<size_t>(t.numel()), 0.0));
  }
  return out;
}

// Central differences of `loss` over every element of `t`, compared with `analytic`.
GradcheckResult compare_with_differences(const std::string& name, const Tensor& t,
                                         const std::vector<double>& analytic,
                                         const std::function<double()>& loss,
                                         const GradcheckOptions& opt) {
  GradcheckResult res;
  res.tensor = name;
  const std::vector<double> values = t.to_vector();
  double diff_sq = 0, numeric_sq = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(values.size()); ++i) {
    const double x0 = values[static_cast<size_t>(i)];
    const double xp = x0 + opt.eps, xm = x0 - opt.eps;
    set_element(t, i, xp);
    const double lp = loss();
    set_element(t, i, xm);
    const double lm = loss();
    set_element(t, i, x0);
    const double numeric = (lp - lm) / (xp - xm);  // the step as represented, not as asked
    const double a = analytic[static_cast<size_t>(i)];
    const double err = std::fabs(a - numeric);
    diff_sq += err * err;
    numeric_sq += numeric * numeric;
    const double rel = err / std::fmax(std::fmax(std::fabs(a), std::fabs(numeric)), opt.rel_floor);
    // Written so that a NaN on either side fails and shows as the worst element.
    if (!(err <= opt.atol + opt.rtol * std::fabs(numeric))) res.passed = false;
    if (res.worst_index < 0 || !(err <= res.max_abs_error)) {
      res.max_abs_error = err;
      res.worst_index = i;
      res.worst_analytic = a;
      res.worst_numeric = numeric;
    }
    if (!(rel <= res.max_rel_error)) res.max_rel_error = rel;
  }
  res.rel_l2_error = numeric_sq == 0 ? std::sqrt(diff_sq) : std::sqrt(diff_sq / numeric_sq);
  return res;
}

}  // namespace

std::vector<GradcheckResult> gradcheck(const std::function<Tensor()>& f,
                                       const std::vector<std::pair<std::string, Tensor>>& inputs,
                                       const GradcheckOptions& opt) {
  KVC_CHECK(opt.eps > 0, "gradcheck: eps must be positive, got ", opt.eps);
  for (const auto& [name, t] : inputs) {
    KVC_CHECK(t.defined(), "gradcheck: input '", name, "' is an undefined tensor");
    KVC_CHECK(t.dtype() == DType::f64, "gradcheck: input '", name, "' of shape ", t.shape(), " is ",
              dtype_name(t.dtype()), "; finite differences need float64");
  }
  InputStateGuard restore(inputs);
  for (const auto& [name, t] : inputs) {
    Tensor h = t;  // a handle: the flags live in the shared impl
    h.set_requires_grad(true);
    h.zero_grad();
  }
  const Analytic analytic = analytic_gradients(f, inputs, opt.seed);

  // Numeric: central differences of L = sum(f() * R), nothing recorded.
  NoGradGuard no_grad;
  const std::function<double()> loss = [&]() {
    const Tensor out = f();
    KVC_CHECK(out.defined() && out.shape() == analytic.out_shape,
              "gradcheck: the function returned shape ", out.defined() ? out.shape() : Shape{},
              " after a perturbation, first ", analytic.out_shape);
    const std::vector<double> v = out.to_vector();
    long double s = 0;  // long double: the difference of two nearby sums must not drown
    for (size_t i = 0; i < v.size(); ++i) s += static_cast<long double>(v[i]) * analytic.seed[i];
    return static_cast<double>(s);
  };
  std::vector<GradcheckResult> results;
  for (size_t ti = 0; ti < inputs.size(); ++ti) {
    const auto& [name, t] = inputs[ti];
    results.push_back(compare_with_differences(name, t, analytic.grads[ti], loss, opt));
    results.back().reached = analytic.reached[ti];
  }
  return results;
}

bool all_passed(const std::vector<GradcheckResult>& results) {
  for (const GradcheckResult& r : results) {
    if (!r.passed) return false;
  }
  return true;
}

}  // namespace kvc
