// `kvcompress bench`: times forward, backward, optimizer and a full training step per kind;
// GB/s and TFLOP/s divide the work model of train/step_work.h by the measured median times.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>

#include "cli/cli_options.h"
#include "core/autograd.h"
#include "data/synthetic.h"
#include "dist/communicator.h"
#include "kernels/graph.h"
#include "kernels/memory.h"
#include "nn/compressor_pair.h"
#include "optim/adam.h"
#include "train/step_work.h"

namespace kvc::cli {

namespace {

struct BenchArgs {
  RunSettings run;  // the model and shape flags, and the seed
  std::string config = "small";
  std::string device = "auto";
  std::string precision = "fp32";
  bool json = false;
  bool no_graph = false;
  int64_t warmup_reps = 3;  // untimed runs first (not the LR warmup of train)
  int64_t reps = 10;
};

struct Timing {
  double forward_ms = 0, backward_ms = 0, optimizer_ms = 0, step_ms = 0;
  double eager_step_ms = 0;  // the step launched op by op (step_ms: replayed as a graph, if it was)
  bool graph = false;
  // Under MPI: the sum of the flat gradient over the ranks, and the share of a data-parallel step
  // left to compute: step / (step + all-reduce), the throughput of N ranks over N times one's.
  double allreduce_ms = 0, scaling = 1;
};

void sync(Device device) {
#ifdef KVC_WITH_CUDA
  if (device.is_cuda()) kernels::cuda::synchronize();
#else
  (void)device;
#endif
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median milliseconds of `body` over reps after warmup_reps untimed runs; `setup` runs
// untimed before each.
double time_ms(Device device, int64_t warmup_reps, int64_t reps, const std::function<void()>& setup,
               const std::function<void()>& body) {
  using Clock = std::chrono::steady_clock;
  std::vector<double> ms;
  for (int64_t i = 0; i < warmup_reps + reps; ++i) {
    setup();
    sync(device);
    const auto t0 = Clock::now();
    body();
    sync(device);
    const auto t1 = Clock::now();
    if (i >= warmup_reps) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  return median(ms);
}

// The allocator's peak of bytes handed out to tensors since the last reset_peak (each device's
// allocator counts its own).
double peak_memory_bytes(Device device) {
#ifdef KVC_WITH_CUDA
  if (device.is_cuda()) {
    return static_cast<double>(kernels::cuda::allocator_stats().peak_bytes_in_use);
  }
#else
  (void)device;
#endif
  return static_cast<double>(kernels::cpu::peak_bytes_in_use());
}

// The peak of what the device's allocator held (in use, cached, parked) since the last reset_peak:
// CUDA's caching allocator keeps freed blocks; the CPU's gives them back.
double peak_reserved_bytes(Device device) {
#ifdef KVC_WITH_CUDA
  if (device.is_cuda()) {
    return static_cast<double>(kernels::cuda::allocator_stats().peak_bytes_reserved);
  }
#endif
  return peak_memory_bytes(device);
}

void reset_peak(Device device) {
#ifdef KVC_WITH_CUDA
  if (device.is_cuda()) {
    kernels::cuda::reset_peak_stats();
    return;
  }
#else
  (void)device;
#endif
  kernels::cpu::reset_peak_stats();
}

struct Result {
  std::string kind;
  Timing t;
  train::StepWork w;
  int64_t params = 0;
  double tokens_per_s = 0, gbps = 0, tflops = 0;
  // Peak memory over the timed full steps (what PyTorch's max_memory_allocated measures around
  // its timed steps), and over what came before them: building the pair and the optimizer,
  // making the batch, the forward, backward and optimizer phases. The forward's peak (with what
  // the set-up holds) and the backward's (from the end of a forward) are kept apart too. And what
  // the allocator held at most over the timed steps (in use, cached and parked).
  double peak_bytes = 0, setup_peak_bytes = 0, forward_peak_bytes = 0, backward_peak_bytes = 0;
  double peak_reserved_bytes = 0;
};

#ifdef KVC_WITH_CUDA
// The step replayed from a CUDA graph: sets t.step_ms and t.graph, or logs why it could not be
// captured and leaves the eager time.
void time_graph_step(const std::string& kind, const BenchArgs& a, Device device, Adam& adam,
                     const std::function<void()>& full_step, Timing& t) {
  kernels::cuda::StepGraph graph;
  try {
    graph.capture(full_step);
  } catch (const Error& e) {
    spdlog::warn(
        "bench: {}: the step could not be captured as a CUDA graph ({}); timing it "
        "op by op",
        kind, e.what());
  }
  if (!graph.captured()) return;
  t.step_ms = time_ms(
      device, a.warmup_reps, a.reps, [] {},
      [&] {
        adam.stage_step();
        graph.replay();
      });
  t.graph = true;
}
#endif

// Tokens per second, GB/s and TFLOP/s of the step time and the step's work.
void set_rates(Result& r, const RunSettings& s) {
  const double step_s = r.t.step_ms * 1e-3;
  r.tokens_per_s = static_cast<double>(s.batch * s.seq) / step_s;
  r.gbps = (r.w.forward_bytes + r.w.backward_bytes + r.w.optimizer_bytes) / step_s * 1e-9;
  r.tflops = (r.w.forward_flops + r.w.backward_flops) / step_s * 1e-12;
}

Result bench_kind(const std::string& kind, const BenchArgs& a, const RunSettings& s, Device device,
                  dist::Communicator& comm) {
  const CompressorOptions o = compressor_options(kind, s, device);
#ifdef KVC_WITH_CUDA
  // The blocks an earlier kind of this run left cached go back first, as the PyTorch side empties
  // its cache after each kind: what this kind's allocator holds is its own.
  if (device.is_cuda()) kernels::cuda::empty_cache();
#endif
  reset_peak(device);
  CompressorPair pair(o);
  pair.train(true);
  Adam adam(pair.named_parameters(), AdamOptions{});
  const KVShape& ks = s;
  SyntheticKV data(ks, s.seed, device);
  const Batch batch = data.next();

  Result r;
  r.kind = kind;
  r.params = adam.numel();
  // The peak since the last reset, counted into the set-up's peak.
  const auto take_peak = [&] {
    const double p = peak_memory_bytes(device);
    r.setup_peak_bytes = std::max(r.setup_peak_bytes, p);
    return p;
  };
  Tensor loss;
  auto forward = [&] { loss = pair.distill_loss(batch.q, batch.k, batch.v, batch.q_pos); };
  auto drop_tape = [&] {
    loss = Tensor();
    Tape::current().clear();
  };
  take_peak();
  reset_peak(device);
  r.t.forward_ms = time_ms(device, a.warmup_reps, a.reps, drop_tape, forward);
  drop_tape();
  r.forward_peak_bytes = take_peak();
  r.t.backward_ms = time_ms(
      device, a.warmup_reps, a.reps,
      [&] {
        drop_tape();
        adam.zero_grad();
        forward();
        take_peak();
        reset_peak(device);  // what follows is the backward's alone
      },
      [&] { backward(loss); });
  drop_tape();
  r.backward_peak_bytes = take_peak();
  // The update as train runs it: the clip's norm and scale, then Adam; with no clipping
  // (--clip 0), Adam taking the norm as it reads the gradients, as train does on every step it
  // does not read back before the update.
  const auto update = [&] {
    if (s.clip > 0) {
      adam.set_clip_scale(s.clip);
      adam.apply_step();
    } else {
      adam.apply_step_with_norm();
    }
  };
  // The optimizer alone applies one gradient over and over: at the learning rate it would move
  // every parameter the same way every rep, and the full steps below would start from parameters
  // no training reaches (on the CPU, GELU's erf and exp then take their slow paths: enhanced_mlp's
  // step at `small` read 4.0 ms where training runs it in 2.7). At a learning rate of 0 the
  // update does the same arithmetic on the same bytes and leaves every parameter as it was.
  const double lr = adam.lr();
  adam.set_lr(0.0);
  r.t.optimizer_ms = time_ms(
      device, a.warmup_reps, a.reps, [] {},
      [&] {
        adam.stage_step();
        update();
      });
  adam.set_lr(lr);
  take_peak();
#ifdef KVC_WITH_CUDA
  // The phases above ran steps a training run never runs (forward alone, backward alone, the
  // optimizer alone), each leaving its own pattern of cached blocks. They go back before the
  // full steps, so that what the allocator holds over them is what a training run holds, as the
  // PyTorch side's is what its warm-up full steps left.
  if (device.is_cuda()) kernels::cuda::empty_cache();
#endif
  reset_peak(device);
  auto full_step = [&] {
    adam.zero_grad();
    forward();
    backward(loss);
    update();
  };
  r.t.eager_step_ms = time_ms(
      device, a.warmup_reps, a.reps, [] {},
      [&] {
        adam.stage_step();
        full_step();
        loss = Tensor();
      });
  r.t.step_ms = r.t.eager_step_ms;
#ifdef KVC_WITH_CUDA
  // Dropout masks are drawn from counters passed by value: a replay would repeat them.
  if (device.is_cuda() && !a.no_graph && s.dropout == 0.0) {
    time_graph_step(kind, a, device, adam, full_step, r.t);
  }
#endif
  if (comm.size() > 1) {  // the trainer's all-reduce: after backward, outside any graph
    const std::vector<Tensor> segments = adam.grad_segments();
    r.t.allreduce_ms = time_ms(
        device, a.warmup_reps, a.reps, [] {},
        [&] {
          for (const Tensor& g : segments) {
            comm.allreduce_sum(g.data<float>(), g.numel(), device);
          }
        });
    r.t.scaling = r.t.step_ms / (r.t.step_ms + r.t.allreduce_ms);
  }
  r.w = train::step_work(o, ks, r.params);
  set_rates(r, s);
  r.peak_bytes = peak_memory_bytes(device);
  r.peak_reserved_bytes = peak_reserved_bytes(device);
  return r;
}

// The results as one JSON object on stdout (with the all-reduce fields under MPI).
void print_json(const BenchArgs& a, const RunSettings& s, Device device,
                const std::vector<Result>& results, const dist::Communicator& comm) {
  std::printf(
      "{\"config\": \"%s\", \"device\": \"%s\", \"precision\": \"%s\", "
      "\"batch\": %lld, "
      "\"heads\": %lld, \"seq\": %lld, \"block\": %lld, \"dim_head\": %lld, "
      "\"queries\": %lld, \"warmup_reps\": %lld, \"reps\": %lld, \"results\": [",
      a.config.c_str(), device.name().c_str(), a.precision.c_str(), static_cast<long long>(s.batch),
      static_cast<long long>(s.heads), static_cast<long long>(s.seq),
      static_cast<long long>(s.block), static_cast<long long>(s.dim_head),
      static_cast<long long>(s.queries), static_cast<long long>(a.warmup_reps),
      static_cast<long long>(a.reps));
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    std::printf(
        "%s\n  {\"kind\": \"%s\", \"params\": %lld, \"forward_ms\": %.6g, "
        "\"backward_ms\": %.6g, \"optimizer_ms\": %.6g, \"step_ms\": %.6g, "
        "\"tokens_per_s\": %.6g, \"gb_per_s\": %.6g, \"tflop_per_s\": %.6g, "
        "\"eager_step_ms\": %.6g, \"graph\": %s, "
        "\"forward_flops\": %.6g, \"backward_flops\": %.6g, \"step_bytes\": "
        "%.6g, "
        "\"peak_bytes\": %.0f, \"setup_peak_bytes\": %.0f, \"forward_peak_bytes\": %.0f, "
        "\"backward_peak_bytes\": %.0f, \"peak_reserved_bytes\": %.0f",
        i ? "," : "", r.kind.c_str(), static_cast<long long>(r.params), r.t.forward_ms,
        r.t.backward_ms, r.t.optimizer_ms, r.t.step_ms, r.tokens_per_s, r.gbps, r.tflops,
        r.t.eager_step_ms, r.t.graph ? "true" : "false", r.w.forward_flops, r.w.backward_flops,
        r.w.forward_bytes + r.w.backward_bytes + r.w.optimizer_bytes, r.peak_bytes,
        r.setup_peak_bytes, r.forward_peak_bytes, r.backward_peak_bytes, r.peak_reserved_bytes);
    if (comm.size() > 1) {
      std::printf(", \"ranks\": %d, \"allreduce_ms\": %.6g, \"scaling_efficiency\": %.6g",
                  comm.size(), r.t.allreduce_ms, r.t.scaling);
    }
    std::printf("}");
  }
  std::printf("\n]}\n");
}

int run_bench(const CLI::App* cmd, const BenchArgs& in) {
  BenchArgs a = in;
  if (a.json) spdlog::set_level(spdlog::level::warn);  // stdout carries only the JSON
  // The config sets the shape; shape flags given explicitly override it.
  RunSettings s = shape_preset(a.config);
  for (const train::Setting& setting : train::settings_table()) {
    const bool preset_wins = setting.group == train::SettingGroup::shape &&
                             cmd->count(train::setting_flag(setting)) == 0;
    if (!preset_wins) copy_setting(s, a.run, setting);
  }
  validate_shape(s);
  const Device device = dist::rank_device(resolve_device(a.device));
  apply_precision(a.precision, device);
  const std::vector<std::string> kinds = selected_kinds(s);
  const std::shared_ptr<dist::Communicator> comm = dist::gradient_communicator(device);
  const bool ranks = comm->size() > 1, print = comm->is_root();  // rank 0 alone prints

  std::vector<Result> results;
  if (!a.json && print) {
    std::printf(
        "bench: config %s (b %lld, h %lld, seq %lld, n %lld, d %lld, "
        "nq %lld), %s, "
        "%s, median of %lld reps after %lld untimed\n",
        a.config.c_str(), static_cast<long long>(s.batch), static_cast<long long>(s.heads),
        static_cast<long long>(s.seq), static_cast<long long>(s.block),
        static_cast<long long>(s.dim_head), static_cast<long long>(s.queries),
        device.name().c_str(), a.precision.c_str(), static_cast<long long>(a.reps),
        static_cast<long long>(a.warmup_reps));
    std::printf("%-22s %10s %10s %10s %10s %10s %12s %9s %9s %13s\n", "kind", "fwd ms", "bwd ms",
                "optim ms", "eager ms", "step ms", "tokens/s", "GB/s", "TFLOP/s", "step peak MiB");
    if (ranks) {
      std::printf(
          "(%d ranks through %s: per rank, then the all-reduce of the gradient and the "
          "scaling efficiency)\n",
          comm->size(), comm->name().c_str());
    }
  }
  for (const std::string& kind : kinds) {
    const Result r = bench_kind(kind, a, s, device, *comm);
    results.push_back(r);
    if (!a.json && print) {
      std::printf("%-22s %10.3f %10.3f %10.3f %10.3f %10.3f %12.4g %9.3f %9.4f %13.1f\n",
                  kind.c_str(), r.t.forward_ms, r.t.backward_ms, r.t.optimizer_ms,
                  r.t.eager_step_ms, r.t.step_ms, r.tokens_per_s, r.gbps, r.tflops,
                  r.peak_bytes / 1048576.0);
      if (ranks) {
        std::printf("%-22s allreduce %.3f ms/step, scaling efficiency %.1f%%\n", "",
                    r.t.allreduce_ms, 100 * r.t.scaling);
      }
      std::fflush(stdout);
    }
  }
  if (a.json && print) print_json(a, s, device, results, *comm);
  return kExitOk;
}

}  // namespace

Command add_bench_command(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  a->run.compressor = "all";
  CLI::App* cmd = app.add_subcommand("bench",
                                     "time forward, backward, optimizer and a "
                                     "full training step per compressor kind, with peak memory "
                                     "(the timed steps' peak of bytes allocated to tensors)");
  add_setting_flags(cmd, &a->run, train::SettingGroup::model, /*allow_all=*/true);
  cmd->add_option("--config", a->config, "shape preset small|nsa|long (shape flags override it)")
      ->capture_default_str()
      ->check(CLI::IsMember(shape_preset_names()));
  add_setting_flags(cmd, &a->run, train::SettingGroup::shape);
  add_setting_flag(cmd, &a->run, train::setting("clip"));  // the step's update, as train's
  add_device_flag(cmd, &a->device);
  add_precision_flag(cmd, &a->precision);
  cmd->add_flag("--json", a->json, "print one JSON object instead of the table");
  cmd->add_flag("--no-graph", a->no_graph,
                "time the step launched op by op instead of replayed as a CUDA graph (the graph "
                "is used on CUDA without dropout)");
  cmd->add_option("--warmup-reps", a->warmup_reps,
                  "untimed runs of each phase before the timed ones")
      ->capture_default_str()
      ->check(non_negative());
  cmd->add_option("--reps", a->reps, "timed runs (the median is reported)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--seed", a->run.seed, "seed of weights and data")->capture_default_str();
  return {cmd, [cmd, a] { return run_bench(cmd, *a); }};
}

}  // namespace kvc::cli
