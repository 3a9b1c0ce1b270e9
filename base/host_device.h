// KVC_HOST_DEVICE: marks small inline functions that both the CPU build and CUDA kernels call, so
// one definition serves both backends.
#pragma once

#if defined(__CUDACC__)
#define KVC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define KVC_HOST_DEVICE inline
#endif
