// cuBLAS and cuBLASLt are opened at their first call, not linked (kernels/cuda/cublas_loader.cpp
// says why): a process that never multiplies on a GPU never loads them.
#pragma once

namespace kvc::kernels::cuda {

// Opens both libraries now and looks up every function the library calls in them; throws Error
// naming the library or the function that is missing.
void load_cublas();

}  // namespace kvc::kernels::cuda
