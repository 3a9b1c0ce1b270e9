// The CUDA-graph-captured training step (kernels/graph.h, Adam::stage_step/apply_step): replays
// give the same parameters and losses as the step launched op by op, allocate nothing, and a
// body that cannot be captured fails with an error while the stream stays usable. And the
// StepRunner's norm taken inside the update, on both devices.
#include <limits>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "data/synthetic.h"
#include "kernels/graph.h"
#include "kernels/memory.h"
#include "nn/compressor_pair.h"
#include "optim/adam.h"
#include "test_util.h"
#include "train/step_runner.h"

namespace kvc {
namespace {

CompressorOptions small_pair(const std::string& kind, Device device = Device::cuda()) {
  CompressorOptions o;
  o.kind = kind;
  o.heads = 2;
  o.dim_head = 32;
  o.block = 8;
  o.seed = 7;
  o.device = device;
  return o;
}

#ifdef KVC_WITH_CUDA
struct Run {
  std::vector<double> losses, params;
};

// The learning rate changes every step (as the schedule does): the replays must see it.
double lr_at(size_t step) { return 1e-2 / static_cast<double>(step + 1); }

// Eager: every step launched op by op, with Adam::step().
Run eager_run(const std::string& kind, const std::vector<Batch>& batches) {
  CompressorPair pair(small_pair(kind));
  Adam adam(pair.named_parameters());
  Run r;
  for (size_t i = 0; i < batches.size(); ++i) {
    adam.set_lr(lr_at(i));
    adam.zero_grad();
    const Tensor loss = pair.distill_loss(batches[i].q, batches[i].k, batches[i].v);
    backward(loss);
    adam.set_clip_scale(1.0);
    adam.step();
    r.losses.push_back(loss.item());
  }
  r.params = adam.flat_params().to_vector();
  return r;
}

// Two eager warm-up steps through the same body, then the body captured once and replayed with
// each batch copied into the captured inputs.
Run graph_run(const std::string& kind, const std::vector<Batch>& batches, size_t* allocations) {
  CompressorPair pair(small_pair(kind));
  Adam adam(pair.named_parameters());
  Tensor q = Tensor::zeros(batches[0].q.shape(), batches[0].q.options());
  Tensor k = Tensor::zeros(batches[0].k.shape(), batches[0].k.options());
  Tensor v = Tensor::zeros(batches[0].v.shape(), batches[0].v.options());
  Tensor loss;
  auto body = [&] {
    adam.zero_grad();
    loss = pair.distill_loss(q, k, v);
    backward(loss);
    adam.set_clip_scale(1.0);
    adam.apply_step();
  };
  kernels::cuda::StepGraph graph;
  Run r;
  for (size_t i = 0; i < batches.size(); ++i) {
    q.copy_from(batches[i].q);
    k.copy_from(batches[i].k);
    v.copy_from(batches[i].v);
    adam.set_lr(lr_at(i));
    adam.stage_step();
    if (i < 2) {
      body();
    } else {
      if (!graph.captured()) {
        graph.capture(body);
        *allocations = kernels::cuda::allocator_stats().device_allocations;
      }
      graph.replay();
    }
    r.losses.push_back(loss.item());
  }
  *allocations = kernels::cuda::allocator_stats().device_allocations - *allocations;
  r.params = adam.flat_params().to_vector();
  return r;
}
#endif

TEST_CASE("cuda: a training step replayed from a CUDA graph equals the eager step, bit for bit") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  KVShape shape;  // b 2, h 2, d 32, seq 256, nq 32
  SyntheticKV data(shape, 11, Device::cuda());
  std::vector<Batch> batches;
  for (int i = 0; i < 6; ++i) batches.push_back(data.next());
  const auto check_replay = [&](const std::string& kind) {
    CAPTURE(kind);
    const Run eager = eager_run(kind, batches);
    size_t allocations = 0;
    const Run graph = graph_run(kind, batches, &allocations);
    // Same kernels with the same arguments in the same order: the same bits. The losses of the
    // replayed steps show that each replay read its own batch and learning rate.
    CHECK(graph.losses == eager.losses);
    CHECK(graph.params == eager.params);
    CHECK(allocations == 0);  // replays allocate nothing
  };
  for (const std::string kind : {"conv", "attention_pool", "grouped_mlp", "mlp"}) {
    check_replay(kind);
  }
  // Under TF32 the MLP kinds run their products of the two batch indices on forked streams, and
  // enhanced_mlp finishes its hidden gradient in dW1's transposition: the capture holds the
  // fork and join, and the bits stay the same.
  test::PrecisionScope tf32(kernels::MathPrecision::tf32);
  for (const std::string kind : {"grouped_mlp", "enhanced_mlp"}) check_replay(kind);
#endif
}

TEST_CASE(
    "cuda: a body that synchronizes cannot be captured; the error is clear, the stream usable") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  const Tensor x = Tensor::ones({1000}, f32().with_device(Device::cuda()));
  kernels::cuda::StepGraph graph;
  std::string msg;
  try {
    graph.capture([&] { (void)sum(x).item(); });  // a device-to-host read inside the capture
  } catch (const Error& e) {
    msg = e.what();
  }
  INFO("message: ", msg);
  CHECK(msg.find("cuda") != std::string::npos);
  CHECK_FALSE(graph.captured());
  CHECK(sum(x).item() == 1000.0);  // the stream still works
#endif
}

TEST_CASE("cuda: the trainer's StepRunner replays its graphs to the bits of the op-by-op step") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  KVShape shape;
  SyntheticKV data(shape, 12, Device::cuda());
  std::vector<Batch> batches;
  for (int i = 0; i < 5; ++i) batches.push_back(data.next());
  for (const std::string task : {"distill", "teacher"}) {
    CAPTURE(task);
    std::vector<double> params[2], losses[2];
    bool used_graph[2] = {false, false};
    for (int graph = 0; graph < 2; ++graph) {
      const CompressorOptions o = small_pair("efficient_conv");
      CompressorPair pair(o);
      const auto teacher = CompressorPair::make_teacher(o, 0.1);
      Adam adam(pair.named_parameters());
      train::StepRunnerOptions ro;
      ro.task = task;
      ro.allow_graph = graph == 1;
      train::StepRunner runner(pair, teacher.get(), adam, ro);
      for (size_t i = 0; i < batches.size(); ++i) {
        adam.set_lr(lr_at(i));
        losses[graph].push_back(runner.forward_backward(batches[i]).item());
        runner.update();
      }
      used_graph[graph] = runner.using_graph();
      params[graph] = adam.flat_params().to_vector();
    }
    CHECK_FALSE(used_graph[0]);
    CHECK(used_graph[1]);
    CHECK(losses[1] == losses[0]);
    CHECK(params[1] == params[0]);
  }
#endif
}

// With no clipping, the steps StepRunner is not asked to read before their update take the
// gradient norm inside the update (Adam::apply_step_with_norm): the weights and losses are those
// of steps that all take it first (the clip scale is 1, a multiply by 1 changes no bit), and the
// norm differs at most in its last bits. On CUDA the graph replays the same bits.
void check_norm_in_update(Device device) {
  KVShape shape;
  SyntheticKV data(shape, 13, device);
  std::vector<Batch> batches;
  for (int i = 0; i < 6; ++i) batches.push_back(data.next());
  struct Result {
    std::vector<double> losses, norms, params;
    bool graph = false;
  };
  const auto run = [&](bool every_norm_first, bool allow_graph) {
    CompressorPair pair(small_pair("grouped_mlp", device));
    Adam adam(pair.named_parameters());
    train::StepRunnerOptions ro;
    ro.clip = std::numeric_limits<double>::infinity();
    ro.allow_graph = allow_graph;
    train::StepRunner runner(pair, nullptr, adam, ro);
    Result r;
    for (size_t i = 0; i < batches.size(); ++i) {
      adam.set_lr(1e-2 / static_cast<double>(i + 1));
      const bool first = every_norm_first || i % 3 == 0;
      const Tensor& loss = runner.forward_backward(batches[i], first);
      CHECK(runner.norm_after_update() == !first);
      if (first) r.norms.push_back(adam.last_grad_norm());
      runner.update();
      if (!first) r.norms.push_back(adam.last_grad_norm());
      r.losses.push_back(loss.item());
    }
    r.graph = runner.using_graph();
    r.params = adam.flat_params().to_vector();
    return r;
  };
  const Result reference = run(true, false);
  for (const bool graph : {false, true}) {
    if (graph && !device.is_cuda()) continue;
    CAPTURE(graph);
    const Result mixed = run(false, graph);
    CHECK(mixed.graph == graph);
    CHECK(mixed.losses == reference.losses);
    CHECK(mixed.params == reference.params);
    REQUIRE(mixed.norms.size() == reference.norms.size());
    for (size_t i = 0; i < mixed.norms.size(); ++i) {
      CHECK(mixed.norms[i] == doctest::Approx(reference.norms[i]).epsilon(1e-6));
    }
  }
  // A step that clips always takes its norm first.
  CompressorPair pair(small_pair("conv", device));
  Adam adam(pair.named_parameters());
  train::StepRunnerOptions ro;
  ro.clip = 1.0;
  train::StepRunner runner(pair, nullptr, adam, ro);
  (void)runner.forward_backward(batches[0], /*norm_first=*/false);
  CHECK_FALSE(runner.norm_after_update());
}

TEST_CASE("train: with no clipping a step may take its gradient norm in the update, same bits") {
  check_norm_in_update(Device::cpu());
}

TEST_CASE("cuda: with no clipping a step may take its gradient norm in the update, same bits") {
  KVC_REQUIRE_CUDA();
  check_norm_in_update(Device::cuda());
}

}  // namespace
}  // namespace kvc
