// CUDA Adam(W) step over the flat parameter buffer (one launch) and the global grad-norm clip
// scale, both reading/writing their scalars in device memory: no host synchronization.
#include <cmath>

#include "kernels/adam.h"
#include "kernels/cuda/common.cuh"

namespace kvc::kernels::cuda {

namespace {

struct AdamScalars {
  double step_size, bc2_sqrt, beta2, one_minus_beta1, one_minus_beta2, eps, wd, decay;
  bool l2, decoupled;
};

// The update of kernels/cpu/adam.cpp, operation for operation with rounded (unfused) products,
// so both backends produce the same bits.
template <typename T>
__global__ void adam_kernel(T* params, const T* grads, T* exp_avg, T* exp_avg_sq, int64_t n,
                            AdamScalars s, const T* grad_scale) {
  const T step_size = static_cast<T>(s.step_size), bc2_sqrt = static_cast<T>(s.bc2_sqrt);
  const T beta2 = static_cast<T>(s.beta2), omb1 = static_cast<T>(s.one_minus_beta1);
  const T omb2 = static_cast<T>(s.one_minus_beta2), eps = static_cast<T>(s.eps);
  const T wd = static_cast<T>(s.wd), decay = static_cast<T>(s.decay);
  const T scale = grad_scale ? *grad_scale : T(1);
  KVC_GRID_LOOP(i, n) {
    T p = params[i];
    T g = grad_scale ? mul_rn(grads[i], scale) : grads[i];
    if (s.decoupled) p = mul_rn(p, decay);
    if (s.l2) g = add_rn(g, mul_rn(wd, p));
    const T m = add_rn(exp_avg[i], mul_rn(omb1, g - exp_avg[i]));
    const T v = add_rn(mul_rn(beta2, exp_avg_sq[i]), mul_rn(mul_rn(omb2, g), g));
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    params[i] = p - mul_rn(step_size, m / (sqrt(v) / bc2_sqrt + eps));
  }
}

constexpr int kNormThreads = 512;
constexpr int64_t kNormSegment = 16384;

template <typename T>
__global__ void sumsq_partial_kernel(const T* x, int64_t n, int64_t seg, double* partial) {
  __shared__ double shared[32];
  const int64_t begin = blockIdx.x * seg, end = min(n, begin + seg);
  double acc = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const double v = static_cast<double>(x[i]);
    acc += v * v;
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename T>
__global__ void norm_scale_kernel(const double* partial, int64_t parts, double max_norm,
                                  T* norm_scale) {
  __shared__ double shared[32];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < parts; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) {
    const double norm = sqrt(acc);
    const double s = max_norm / (norm + 1e-6);
    norm_scale[0] = static_cast<T>(norm);
    norm_scale[1] = static_cast<T>(s > 1.0 ? 1.0 : s);  // NaN stays NaN, as on the CPU
  }
}

}  // namespace

template <typename T>
void adam_step(T* params, const T* grads, T* exp_avg, T* exp_avg_sq, int64_t n,
               const AdamStepArgs& args, const T* grad_scale) {
  if (n <= 0) return;
  AdamScalars s;
  const double bc1 = 1.0 - std::pow(args.beta1, static_cast<double>(args.step));
  const double bc2 = 1.0 - std::pow(args.beta2, static_cast<double>(args.step));
  s.step_size = args.lr / bc1;
  s.bc2_sqrt = std::sqrt(bc2);
  s.beta2 = args.beta2;
  s.one_minus_beta1 = 1.0 - args.beta1;
  s.one_minus_beta2 = 1.0 - args.beta2;
  s.eps = args.eps;
  s.wd = args.weight_decay;
  s.decay = 1.0 - args.lr * args.weight_decay;
  s.l2 = !args.decoupled && args.weight_decay != 0.0;
  s.decoupled = args.decoupled && args.weight_decay != 0.0;
  adam_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(params, grads, exp_avg, exp_avg_sq, n, s,
                                                         grad_scale);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void grad_norm_scale(const T* grads, int64_t n, double max_norm, T* norm_scale) {
  const int64_t parts =
      std::max<int64_t>(1, std::min<int64_t>((n + kNormSegment - 1) / kNormSegment, 1024));
  const int64_t seg = std::max<int64_t>(1, (n + parts - 1) / parts);
  Scratch partial(static_cast<size_t>(parts) * sizeof(double));
  sumsq_partial_kernel<T>
      <<<static_cast<int>(parts), kNormThreads, 0, stream()>>>(grads, n, seg, partial.as<double>());
  KVC_CUDA_CHECK(cudaGetLastError());
  norm_scale_kernel<T>
      <<<1, kNormThreads, 0, stream()>>>(partial.as<double>(), parts, max_norm, norm_scale);
  KVC_CUDA_CHECK(cudaGetLastError());
}

#define KVC_INSTANTIATE(T)                                                                  \
  template void adam_step<T>(T*, const T*, T*, T*, int64_t, const AdamStepArgs&, const T*); \
  template void grad_norm_scale<T>(const T*, int64_t, double, T*);
KVC_INSTANTIATE(float)
KVC_INSTANTIATE(double)
#undef KVC_INSTANTIATE

}  // namespace kvc::kernels::cuda
