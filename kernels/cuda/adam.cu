// CUDA Adam(W) step over a range of the flat buffers (one launch) and the global grad-norm clip
// scale, both reading/writing their scalars in device memory: no host synchronization.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/adam.h"
#include "kernels/cuda/common.cuh"
#include "kernels/math/adam.h"

namespace kvc::kernels::cuda {

namespace {

// One element: the update of math::adam_update, written back.
template <typename T>
__device__ __forceinline__ void adam_element(const math::AdamCoeffs<T>& c, T g, T& p, T& m, T& v,
                                             const T* grad_scale, T scale) {
  if (grad_scale) g = mul_rn(g, scale);
  math::adam_update(c, g, p, m, v);
}

// The coefficients come by value, or from device memory when `staged` is set (a captured step).
// `vec4` (float32 with every buffer 16-byte aligned): four elements a thread per iteration, as
// float4 loads and stores, the same arithmetic per element; the tail after the last full four
// goes element by element. kNorm: the CTA's sum of the gradients' squares (as read, in double)
// goes to sumsq[blockIdx.x].
template <typename T, bool kNorm>
__global__ void adam_kernel(T* params, const T* grads, T* exp_avg, T* exp_avg_sq, int64_t n,
                            math::AdamCoeffs<T> by_value, const math::AdamCoeffs<T>* staged,
                            const T* grad_scale, bool vec4, double* sumsq) {
  const math::AdamCoeffs<T> c = staged ? *staged : by_value;
  const T scale = grad_scale ? *grad_scale : T(1);
  double acc = 0.0;
  const auto square = [&acc](T g) {
    if constexpr (kNorm) {
      acc = fma(static_cast<double>(g), static_cast<double>(g), acc);
    } else {
      (void)g;
    }
  };
  int64_t first = 0;
  if constexpr (std::is_same_v<T, float>) {
    if (vec4) {
      KVC_GRID_LOOP(i, n / 4) {
        float4 p = reinterpret_cast<const float4*>(params)[i];
        float4 m = reinterpret_cast<const float4*>(exp_avg)[i];
        float4 v = reinterpret_cast<const float4*>(exp_avg_sq)[i];
        const float4 g = reinterpret_cast<const float4*>(grads)[i];
        adam_element(c, g.x, p.x, m.x, v.x, grad_scale, scale);
        adam_element(c, g.y, p.y, m.y, v.y, grad_scale, scale);
        adam_element(c, g.z, p.z, m.z, v.z, grad_scale, scale);
        adam_element(c, g.w, p.w, m.w, v.w, grad_scale, scale);
        square(g.x), square(g.y), square(g.z), square(g.w);
        reinterpret_cast<float4*>(params)[i] = p;
        reinterpret_cast<float4*>(exp_avg)[i] = m;
        reinterpret_cast<float4*>(exp_avg_sq)[i] = v;
      }
      first = n / 4 * 4;
    }
  }
  KVC_GRID_LOOP(j, n - first) {
    const int64_t i = first + j;
    T p = params[i], m = exp_avg[i], v = exp_avg_sq[i];
    const T g = grads[i];
    adam_element(c, g, p, m, v, grad_scale, scale);
    square(g);
    params[i] = p;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
  }
  if constexpr (kNorm) {
    __shared__ double shared[32];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) sumsq[blockIdx.x] = acc;
  }
}

// Whether adam_kernel may take four float32 elements at a time.
template <typename T>
bool adam_vec4(const T* params, const T* grads, const T* exp_avg, const T* exp_avg_sq) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return std::is_same_v<T, float> && aligned(params) && aligned(grads) && aligned(exp_avg) &&
         aligned(exp_avg_sq);
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
  const math::AdamCoeffs<T> c = math::adam_coeffs<T>(args);
  adam_kernel<T, false><<<grid_for(n), kThreads, 0, stream()>>>(
      params, grads, exp_avg, exp_avg_sq, n, c, nullptr, grad_scale,
      adam_vec4(params, grads, exp_avg, exp_avg_sq), nullptr);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void adam_stage(const AdamStepArgs& args, void* coeffs) {
  static_assert(sizeof(math::AdamCoeffs<T>) <= kAdamCoeffBytes, "coefficient buffer too small");
  const math::AdamCoeffs<T> c = math::adam_coeffs<T>(args);
  copy_h2d(coeffs, &c, sizeof(c));  // staged by the driver: `c` may go out of scope at once
}

template <typename T>
void adam_step_staged(T* params, const T* grads, T* exp_avg, T* exp_avg_sq, int64_t n,
                      const void* coeffs, const T* grad_scale) {
  if (n <= 0) return;
  adam_kernel<T, false><<<grid_for(n), kThreads, 0, stream()>>>(
      params, grads, exp_avg, exp_avg_sq, n, math::AdamCoeffs<T>{},
      static_cast<const math::AdamCoeffs<T>*>(coeffs), grad_scale,
      adam_vec4(params, grads, exp_avg, exp_avg_sq), nullptr);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void adam_step_staged_norm(const AdamSpan<T>* spans, int64_t count, const void* coeffs,
                           T* norm_scale) {
  // One slot a CTA (grid_for's grid for each span), then one kernel over all the slots, as
  // grad_norm_scale does with its parts.
  int64_t total = 0;
  for (int64_t s = 0; s < count; ++s) total += spans[s].n > 0 ? grid_for(spans[s].n) : 0;
  Scratch sumsq(static_cast<size_t>(std::max<int64_t>(total, 1)) * sizeof(double));
  int64_t first = 0;
  for (int64_t s = 0; s < count; ++s) {
    const AdamSpan<T>& a = spans[s];
    if (a.n <= 0) continue;
    const int grid = grid_for(a.n);
    adam_kernel<T, true><<<grid, kThreads, 0, stream()>>>(
        a.params, a.grads, a.exp_avg, a.exp_avg_sq, a.n, math::AdamCoeffs<T>{},
        static_cast<const math::AdamCoeffs<T>*>(coeffs), nullptr,
        adam_vec4(a.params, a.grads, a.exp_avg, a.exp_avg_sq), sumsq.as<double>() + first);
    KVC_CUDA_CHECK(cudaGetLastError());
    first += grid;
  }
  norm_scale_kernel<T><<<1, kNormThreads, 0, stream()>>>(
      sumsq.as<double>(), total, std::numeric_limits<double>::infinity(), norm_scale);
  KVC_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void grad_norm_scale(const GradSpan<T>* spans, int64_t count, double max_norm, T* norm_scale) {
  // Each span's squares in parts of about kNormSegment elements (at most 1024 a span), every
  // part's sum in its own slot of one buffer, then one kernel over all the slots.
  std::vector<int64_t> parts(static_cast<size_t>(count));
  int64_t total = 0;
  for (int64_t s = 0; s < count; ++s) {
    const int64_t n = spans[s].n;
    parts[s] = n <= 0 ? 0 : std::min<int64_t>((n + kNormSegment - 1) / kNormSegment, 1024);
    total += parts[s];
  }
  Scratch partial(static_cast<size_t>(std::max<int64_t>(total, 1)) * sizeof(double));
  int64_t first = 0;
  for (int64_t s = 0; s < count; ++s) {
    if (parts[s] == 0) continue;
    const int64_t seg = (spans[s].n + parts[s] - 1) / parts[s];
    sumsq_partial_kernel<T><<<static_cast<int>(parts[s]), kNormThreads, 0, stream()>>>(
        spans[s].data, spans[s].n, seg, partial.as<double>() + first);
    KVC_CUDA_CHECK(cudaGetLastError());
    first += parts[s];
  }
  norm_scale_kernel<T>
      <<<1, kNormThreads, 0, stream()>>>(partial.as<double>(), total, max_norm, norm_scale);
  KVC_CUDA_CHECK(cudaGetLastError());
}

KVC_ADAM_INSTANTIATE(float)
KVC_ADAM_INSTANTIATE(double)
template void adam_stage<float>(const AdamStepArgs&, void*);
template void adam_stage<double>(const AdamStepArgs&, void*);
template void adam_step_staged<float>(float*, const float*, float*, float*, int64_t, const void*,
                                      const float*);
template void adam_step_staged<double>(double*, const double*, double*, double*, int64_t,
                                       const void*, const double*);
template void adam_step_staged_norm<float>(const AdamSpan<float>*, int64_t, const void*, float*);
template void adam_step_staged_norm<double>(const AdamSpan<double>*, int64_t, const void*, double*);

}  // namespace kvc::kernels::cuda
