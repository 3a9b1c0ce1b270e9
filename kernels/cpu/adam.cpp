// CPU Adam(W) step and grad-norm clip over flat buffers: one loop each.
#include "kernels/adam.h"

#include <cmath>

#include "kernels/math/adam.h"

namespace kvc::kernels::cpu {

template <typename T>
void adam_step(T* params, const T* grads, T* exp_avg, T* exp_avg_sq, int64_t n,
               const AdamStepArgs& args, const T* grad_scale) {
  const math::AdamCoeffs<T> c = math::adam_coeffs<T>(args);
  const T scale = grad_scale ? *grad_scale : T(1);
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad_scale ? grads[i] * scale : grads[i];
    math::adam_update(c, g, params[i], exp_avg[i], exp_avg_sq[i]);
  }
}

template <typename T>
void grad_norm_scale(const GradSpan<T>* spans, int64_t count, double max_norm, T* norm_scale) {
  // Eight partial sums, then added in a fixed order: independent additions the compiler
  // vectorizes, where one chain of dependent double additions ran at their latency (4x slower).
  constexpr int kParts = 8;
  double part[kParts] = {};
  for (int64_t s = 0; s < count; ++s) {
    const T* grads = spans[s].data;
    const int64_t n = spans[s].n;
    int64_t i = 0;
    for (; i + kParts <= n; i += kParts) {
      for (int u = 0; u < kParts; ++u) part[u] += static_cast<double>(grads[i + u]) * grads[i + u];
    }
    for (; i < n; ++i) part[0] += static_cast<double>(grads[i]) * grads[i];
  }
  double sum = 0.0;
  for (int u = 0; u < kParts; ++u) sum += part[u];
  const double norm = std::sqrt(sum);
  const double s = max_norm / (norm + 1e-6);
  norm_scale[0] = static_cast<T>(norm);
  norm_scale[1] = static_cast<T>(s > 1.0 ? 1.0 : s);
}

KVC_ADAM_INSTANTIATE(float)
KVC_ADAM_INSTANTIATE(double)

}  // namespace kvc::kernels::cpu
