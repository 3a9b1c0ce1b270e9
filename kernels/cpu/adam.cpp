// CPU Adam(W) step and grad-norm clip over flat buffers: one loop each.
#include "kernels/adam.h"

#include <cmath>

namespace kvc::kernels::cpu {

template <typename T>
void adam_step(T* params, const T* grads, T* exp_avg, T* exp_avg_sq, int64_t n,
               const AdamStepArgs& args, const T* grad_scale) {
  const double bc1 = 1.0 - std::pow(args.beta1, static_cast<double>(args.step));
  const double bc2 = 1.0 - std::pow(args.beta2, static_cast<double>(args.step));
  // The scalars in double, then once to T: PyTorch's single-tensor path does the same.
  const T step_size = static_cast<T>(args.lr / bc1);
  const T bc2_sqrt = static_cast<T>(std::sqrt(bc2));
  const T beta2 = static_cast<T>(args.beta2);
  const T one_minus_beta1 = static_cast<T>(1.0 - args.beta1);
  const T one_minus_beta2 = static_cast<T>(1.0 - args.beta2);
  const T eps = static_cast<T>(args.eps);
  const T wd = static_cast<T>(args.weight_decay);
  const T decay = static_cast<T>(1.0 - args.lr * args.weight_decay);
  const bool l2 = !args.decoupled && args.weight_decay != 0.0;
  const bool decoupled = args.decoupled && args.weight_decay != 0.0;
  const T scale = grad_scale ? *grad_scale : T(1);
  for (int64_t i = 0; i < n; ++i) {
    T p = params[i];
    T g = grad_scale ? grads[i] * scale : grads[i];
    if (decoupled) p *= decay;
    if (l2) g += wd * p;
    const T m = exp_avg[i] + one_minus_beta1 * (g - exp_avg[i]);
    const T v = beta2 * exp_avg_sq[i] + one_minus_beta2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    params[i] = p - step_size * (m / (std::sqrt(v) / bc2_sqrt + eps));
  }
}

template <typename T>
void grad_norm_scale(const T* grads, int64_t n, double max_norm, T* norm_scale) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(grads[i]) * grads[i];
  const double norm = std::sqrt(sum);
  const double s = max_norm / (norm + 1e-6);
  norm_scale[0] = static_cast<T>(norm);
  norm_scale[1] = static_cast<T>(s > 1.0 ? 1.0 : s);
}

#define KVC_INSTANTIATE(T)                                                                  \
  template void adam_step<T>(T*, const T*, T*, T*, int64_t, const AdamStepArgs&, const T*); \
  template void grad_norm_scale<T>(const T*, int64_t, double, T*);
KVC_INSTANTIATE(float)
KVC_INSTANTIATE(double)
#undef KVC_INSTANTIATE

}  // namespace kvc::kernels::cpu
