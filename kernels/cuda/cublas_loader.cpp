// cuBLAS and cuBLASLt opened at their first call instead of linked. Loading them runs their
// start-up code in every process that links them, GPU or not: about 0.4 s and 210 MB on a
// CPU-only machine, which `kvcompress --help`, every CPU run and every test process paid. Each
// function the library calls is defined here under its own name (the headers' declarations make
// the compiler check every signature, and the link fails on any function left out); its first
// call opens the library and looks the function up, later calls go straight to it. These
// definitions are not exported, so the opened libraries' own calls bind within themselves.
#include "kernels/cuda/cublas_loader.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <string>
#include <vector>

#include "base/error.h"

namespace kvc::kernels::cuda {
namespace {

// The folder of the CUDA runtime this process loaded, with a trailing '/' (the toolkit keeps
// cuBLAS beside it), or "" if it cannot be told.
std::string runtime_folder() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&cudaGetDeviceCount), &info) == 0 || !info.dli_fname) {
    return "";
  }
  const std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash + 1);
}

// libNAME.so.<the headers' major version>: from the search path, else from the runtime's folder.
void* open_library(const std::string& name) {
  const std::string file = name + ".so." + std::to_string(CUBLAS_VER_MAJOR);
  void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle != nullptr) return handle;
  const std::string first_error = dlerror();
  const std::string folder = runtime_folder();
  if (!folder.empty()) handle = dlopen((folder + file).c_str(), RTLD_NOW | RTLD_LOCAL);
  KVC_CHECK(handle != nullptr, "cannot load ", file, " (", first_error,
            "): it comes with the CUDA toolkit; put its folder on LD_LIBRARY_PATH");
  return handle;
}

void* cublas_library() {
  static void* handle = open_library("libcublas");
  return handle;
}
void* cublaslt_library() {
  static void* handle = open_library("libcublasLt");
  return handle;
}

template <typename F>
F resolve(void* library, const char* symbol) {
  void* address = dlsym(library, symbol);
  KVC_CHECK(address != nullptr, "the loaded cuBLAS has no ", symbol);
  return reinterpret_cast<F>(address);
}

// Every forwarded function and its library, for load_cublas.
struct Forwarded {
  void* (*library)();
  const char* symbol;
};
std::vector<Forwarded>& forwarded() {
  static std::vector<Forwarded> all;
  return all;
}
struct Forward {
  Forward(void* (*library)(), const char* symbol) { forwarded().push_back({library, symbol}); }
};

}  // namespace
}  // namespace kvc::kernels::cuda

// NAME (after the headers' macros: cublasCreate is cublasCreate_v2) with PARAMS, forwarding
// ARGS to the function of that name in LIBRARY.
#define KVC_CUBLAS_NAME_(name) #name
#define KVC_CUBLAS_NAME(name) KVC_CUBLAS_NAME_(name)
#define KVC_CUBLAS_FORWARD(library, ret, name, params, args)                                     \
  extern "C" __attribute__((visibility("hidden"))) ret CUBLASWINAPI name params {                \
    using Target = ret(CUBLASWINAPI*) params; /* C++ overloads make decltype(&name) ambiguous */ \
    static const auto target = ::kvc::kernels::cuda::resolve<Target>(                            \
        ::kvc::kernels::cuda::library(), KVC_CUBLAS_NAME(name));                                 \
    return target args;                                                                          \
  }                                                                                              \
  static const ::kvc::kernels::cuda::Forward kvc_forward_##name(&::kvc::kernels::cuda::library,  \
                                                                KVC_CUBLAS_NAME(name));

KVC_CUBLAS_FORWARD(cublas_library, cublasStatus_t, cublasCreate, (cublasHandle_t * handle),
                   (handle))
KVC_CUBLAS_FORWARD(cublas_library, cublasStatus_t, cublasSetStream,
                   (cublasHandle_t handle, cudaStream_t stream), (handle, stream))
KVC_CUBLAS_FORWARD(cublas_library, cublasStatus_t, cublasSetWorkspace,
                   (cublasHandle_t handle, void* workspace, size_t bytes),
                   (handle, workspace, bytes))
KVC_CUBLAS_FORWARD(cublas_library, const char*, cublasGetStatusName, (cublasStatus_t status),
                   (status))
KVC_CUBLAS_FORWARD(cublas_library, const char*, cublasGetStatusString, (cublasStatus_t status),
                   (status))
KVC_CUBLAS_FORWARD(cublas_library, cublasStatus_t, cublasGemmStridedBatchedEx,
                   (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                    int m, int n, int k, const void* alpha, const void* a, cudaDataType a_type,
                    int lda, long long int stride_a, const void* b, cudaDataType b_type, int ldb,
                    long long int stride_b, const void* beta, void* c, cudaDataType c_type, int ldc,
                    long long int stride_c, int batch_count, cublasComputeType_t compute_type,
                    cublasGemmAlgo_t algo),
                   (handle, transa, transb, m, n, k, alpha, a, a_type, lda, stride_a, b, b_type,
                    ldb, stride_b, beta, c, c_type, ldc, stride_c, batch_count, compute_type, algo))

KVC_CUBLAS_FORWARD(cublaslt_library, cublasStatus_t, cublasLtCreate, (cublasLtHandle_t * handle),
                   (handle))
KVC_CUBLAS_FORWARD(cublaslt_library, cublasStatus_t, cublasLtMatmul,
                   (cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                    const void* a, cublasLtMatrixLayout_t a_desc, const void* b,
                    cublasLtMatrixLayout_t b_desc, const void* beta, const void* c,
                    cublasLtMatrixLayout_t c_desc, void* d, cublasLtMatrixLayout_t d_desc,
                    const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream),
                   (handle, desc, alpha, a, a_desc, b, b_desc, beta, c, c_desc, d, d_desc, algo,
                    workspace, workspace_bytes, stream))
KVC_CUBLAS_FORWARD(cublaslt_library, cublasStatus_t, cublasLtMatmulDescCreate,
                   (cublasLtMatmulDesc_t * desc, cublasComputeType_t compute, cudaDataType_t scale),
                   (desc, compute, scale))
KVC_CUBLAS_FORWARD(cublaslt_library, cublasStatus_t, cublasLtMatmulDescDestroy,
                   (cublasLtMatmulDesc_t desc), (desc))
KVC_CUBLAS_FORWARD(cublaslt_library, cublasStatus_t, cublasLtMatmulDescSetAttribute,
                   (cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const void* buf,
                    size_t bytes),
                   (desc, attr, buf, bytes))
KVC_CUBLAS_FORWARD(cublaslt_library, cublasStatus_t, cublasLtMatrixLayoutCreate,
                   (cublasLtMatrixLayout_t * layout, cudaDataType type, uint64_t rows,
                    uint64_t cols, int64_t ld),
                   (layout, type, rows, cols, ld))
KVC_CUBLAS_FORWARD(cublaslt_library, cublasStatus_t, cublasLtMatrixLayoutDestroy,
                   (cublasLtMatrixLayout_t layout), (layout))
KVC_CUBLAS_FORWARD(cublaslt_library, cublasStatus_t, cublasLtMatrixLayoutSetAttribute,
                   (cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr,
                    const void* buf, size_t bytes),
                   (layout, attr, buf, bytes))
KVC_CUBLAS_FORWARD(cublaslt_library, cublasStatus_t, cublasLtMatmulPreferenceCreate,
                   (cublasLtMatmulPreference_t * pref), (pref))
KVC_CUBLAS_FORWARD(cublaslt_library, cublasStatus_t, cublasLtMatmulPreferenceDestroy,
                   (cublasLtMatmulPreference_t pref), (pref))
KVC_CUBLAS_FORWARD(cublaslt_library, cublasStatus_t, cublasLtMatmulPreferenceSetAttribute,
                   (cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
                    const void* buf, size_t bytes),
                   (pref, attr, buf, bytes))
KVC_CUBLAS_FORWARD(cublaslt_library, cublasStatus_t, cublasLtMatmulAlgoGetHeuristic,
                   (cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                    cublasLtMatrixLayout_t a_desc, cublasLtMatrixLayout_t b_desc,
                    cublasLtMatrixLayout_t c_desc, cublasLtMatrixLayout_t d_desc,
                    cublasLtMatmulPreference_t pref, int requested,
                    cublasLtMatmulHeuristicResult_t results[], int* returned),
                   (handle, desc, a_desc, b_desc, c_desc, d_desc, pref, requested, results,
                    returned))

namespace kvc::kernels::cuda {

void load_cublas() {
  for (const Forwarded& f : forwarded()) resolve<void (*)()>(f.library(), f.symbol);
}

}  // namespace kvc::kernels::cuda
