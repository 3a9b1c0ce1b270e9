// CUDA Graph capture and replay of a fixed-shape piece of work (the training step), so that its
// dozens of kernel launches cost one launch and no host time per step.
#pragma once

#include <functional>

namespace kvc::kernels::cuda {

// Records everything `body` launches on the CUDA stream into a graph, then replays it. While
// capturing, nothing executes and memory comes from a pool private to this graph (the replays
// write the same addresses, so no one else may get them). The body must not synchronize with or
// read from the device, and every buffer it reads must keep its address across replays (refill
// inputs in place). Scalars passed by value to kernels are frozen into the graph: what changes
// per step must live in device memory, written before each replay.
class StepGraph {
 public:
  StepGraph() = default;
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  // Captures and instantiates. Throws kvc::Error naming the CUDA error when the body did
  // something a capture cannot hold (the stream is left usable, nothing ran).
  void capture(const std::function<void()>& body);
  bool captured() const { return exec_ != nullptr; }
  // Launches the captured work on the CUDA stream (asynchronous).
  void replay();

 private:
  void* exec_ = nullptr;  // cudaGraphExec_t
  int pool_ = 0;
};

}  // namespace kvc::kernels::cuda
