// CPU mean squared error and its gradient.
#include "kernels/loss.h"

namespace kvc::kernels::cpu {

template <typename T>
void mse_forward(const T* pred, const T* target, T* out, int64_t n) {
  // Double accumulation: a float loss over millions of elements would otherwise drift.
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(pred[i]) - static_cast<double>(target[i]);
    acc += d * d;
  }
  *out = static_cast<T>(n > 0 ? acc / static_cast<double>(n) : 0.0);
}

template <typename T>
void mse_backward(const T* pred, const T* target, const T* grad_out, T* gpred, T* gtarget,
                  int64_t n) {
  if (n == 0) return;
  const T s = T(2) * grad_out[0] / static_cast<T>(n);
  if (gpred) {
    for (int64_t i = 0; i < n; ++i) gpred[i] = s * (pred[i] - target[i]);
  }
  if (gtarget) {
    for (int64_t i = 0; i < n; ++i) gtarget[i] = s * (target[i] - pred[i]);
  }
}

#define KVC_INSTANTIATE(T)                                       \
  template void mse_forward<T>(const T*, const T*, T*, int64_t); \
  template void mse_backward<T>(const T*, const T*, const T*, T*, T*, int64_t);
KVC_INSTANTIATE(float)
KVC_INSTANTIATE(double)
#undef KVC_INSTANTIATE

}  // namespace kvc::kernels::cpu
