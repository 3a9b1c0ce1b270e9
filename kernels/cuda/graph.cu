// StepGraph: stream capture into a CUDA graph with a private memory pool, and its replay.
#include "kernels/cuda/common.cuh"
#include "kernels/graph.h"
#include "kernels/memory.h"

namespace kvc::kernels::cuda {

StepGraph::~StepGraph() {
  if (exec_) (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (pool_) release_pool(pool_);
}

void StepGraph::capture(const std::function<void()>& body) {
  KVC_CHECK(!exec_, "cuda graph: already captured");
  if (!pool_) pool_ = create_pool();
  // Relaxed: the allocator may still call cudaMalloc for a size it has not cached yet.
  KVC_CUDA_CHECK(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeRelaxed));
  set_active_pool(pool_);
  cudaGraph_t graph = nullptr;
  try {
    body();
  } catch (...) {
    set_active_pool(0);
    (void)cudaStreamEndCapture(stream(), &graph);  // leave the stream usable
    if (graph) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    throw;
  }
  set_active_pool(0);
  const cudaError_t end = cudaStreamEndCapture(stream(), &graph);
  if (end != cudaSuccess) {
    (void)cudaGetLastError();
    if (graph) (void)cudaGraphDestroy(graph);
    KVC_FAIL("cuda graph: capture failed: ", cudaGetErrorName(end), " (", cudaGetErrorString(end),
             ")");
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  KVC_CUDA_CHECK(inst);
  exec_ = exec;
}

void StepGraph::replay() {
  KVC_CHECK(exec_, "cuda graph: replay before capture");
  KVC_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), stream()));
}

}  // namespace kvc::kernels::cuda
