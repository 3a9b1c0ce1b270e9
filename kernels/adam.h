// The fused Adam(W) update and the global grad-norm clip over flat buffers, for every backend.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvc::kernels {

// Scalars of one Adam step, computed on the host in double (as PyTorch does for its scalars).
// Adam's hyperparameters, as the optimizer is configured with them (optim::AdamOptions).
struct AdamHyperparams {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled = false;  // true: AdamW (decay the parameter); false: Adam (L2 added to the grad)
};

// One step's arguments: the hyperparameters and the step's number.
struct AdamStepArgs : AdamHyperparams {
  int64_t step = 1;  // this step's number, counted from 1 (for the bias corrections)
};

// A gradient buffer (or a part of one): the global norm runs over several.
template <typename T>
struct GradSpan {
  const T* data = nullptr;
  int64_t n = 0;
};

#define KVC_ADAM_KERNELS                                                                     \
  /* For each i < n, with g = grads[i] * (grad_scale ? *grad_scale : 1), exactly as          \
     torch.optim.Adam(W) single-tensor (float math in T; scalars from args in double):       \
       decoupled:  p *= 1 - lr * wd;        else if wd != 0: g += wd * p                     \
       m = m + (1 - beta1) * (g - m);       v = beta2 * v + (1 - beta2) * g * g              \
       p -= (lr / (1 - beta1^step)) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)             \
     grad_scale points to device memory on CUDA (the clip scale; no host sync); grads is not \
     modified. */                                                                            \
  template <typename T>                                                                      \
  void adam_step(T* params, const T* grads, T* exp_avg, T* exp_avg_sq, int64_t n,            \
                 const AdamStepArgs& args, const T* grad_scale);                             \
  /* norm_scale[0] = sqrt(sum of g^2 over every element of every span) (accumulated in       \
     double on CPU, at least float on CUDA); s = max_norm / (norm_scale[0] + 1e-6);          \
     norm_scale[1] = s > 1 ? 1 : s, so a NaN norm gives a NaN scale and an infinite one 0    \
     (torch.nn.utils.clip_grad_norm_'s clamp). norm_scale is device memory on CUDA: the      \
     launcher must not synchronize. */                                                       \
  template <typename T>                                                                      \
  void grad_norm_scale(const GradSpan<T>* spans, int64_t count, double max_norm, T* norm_scale);

namespace cpu {
KVC_ADAM_KERNELS
}
namespace cuda {
KVC_ADAM_KERNELS
// A step whose scalars live in device memory, for a step captured in a CUDA graph (scalars passed
// by value would be frozen into it): adam_stage writes the step's coefficients into `coeffs`
// (kAdamCoeffBytes of device memory, asynchronously, in stream order) and adam_step_staged is
// adam_step reading them from there.
inline constexpr size_t kAdamCoeffBytes = 128;
template <typename T>
void adam_stage(const AdamStepArgs& args, void* coeffs);
template <typename T>
void adam_step_staged(T* params, const T* grads, T* exp_avg, T* exp_avg_sq, int64_t n,
                      const void* coeffs, const T* grad_scale);

// One range of the flat buffers for adam_step_staged_norm.
template <typename T>
struct AdamSpan {
  T* params = nullptr;
  const T* grads = nullptr;
  T* exp_avg = nullptr;
  T* exp_avg_sq = nullptr;
  int64_t n = 0;
};
// adam_step_staged over every span, with no clip scale, that also takes the global norm of the
// gradients as it reads them: norm_scale as grad_norm_scale over the same gradients with an
// unlimited max_norm writes it ([norm, 1]; a NaN norm gives a NaN scale). For a step whose norm
// is reported but clips nothing, the gradients are read once instead of twice. The updated
// values are those of adam_step_staged bit for bit; the norm is summed in another order than
// grad_norm_scale's, so it may differ from it in the last bits.
template <typename T>
void adam_step_staged_norm(const AdamSpan<T>* spans, int64_t count, const void* coeffs,
                           T* norm_scale);
}  // namespace cuda
#undef KVC_ADAM_KERNELS

// The explicit instantiations of every launcher above for dtype T, expanded by each backend.
#define KVC_ADAM_INSTANTIATE(T)                                                             \
  template void adam_step<T>(T*, const T*, T*, T*, int64_t, const AdamStepArgs&, const T*); \
  template void grad_norm_scale<T>(const GradSpan<T>*, int64_t, double, T*);

}  // namespace kvc::kernels
