// KVC_CUDA_CHECK / KVC_CUBLAS_CHECK: turn CUDA runtime and cuBLAS failures into kvc::Error.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "base/error.h"

namespace kvc::kernels::cuda::detail {

// Out-of-memory gets its own exception type so train/bench can say "out of GPU memory".
[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file,
                                          int line) {
  const std::string msg = str("cuda: ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
                              ") in ", expr, " at ", file, ":", line);
  if (err == cudaErrorMemoryAllocation) throw OutOfMemoryError(msg);
  throw Error(msg);
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* expr,
                                            const char* file, int line) {
  const std::string msg =
      str("cublas: ", cublasGetStatusName(status), " (", cublasGetStatusString(status), ") in ",
          expr, " at ", file, ":", line);
  if (status == CUBLAS_STATUS_ALLOC_FAILED) throw OutOfMemoryError(msg);
  throw Error(msg);
}

}  // namespace kvc::kernels::cuda::detail

#define KVC_CUDA_CHECK(expr)                                                               \
  do {                                                                                     \
    const cudaError_t kvc_err_ = (expr);                                                   \
    if (kvc_err_ != cudaSuccess)                                                           \
      ::kvc::kernels::cuda::detail::throw_cuda_error(kvc_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define KVC_CUBLAS_CHECK(expr)                                                                  \
  do {                                                                                          \
    const cublasStatus_t kvc_status_ = (expr);                                                  \
    if (kvc_status_ != CUBLAS_STATUS_SUCCESS)                                                   \
      ::kvc::kernels::cuda::detail::throw_cublas_error(kvc_status_, #expr, __FILE__, __LINE__); \
  } while (0)
