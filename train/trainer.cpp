// The training loop: steps, evaluation, checkpoints, logs, NaN guard and
// interrupts.
#include "train/trainer.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <limits>
#include <map>

#include "core/autograd.h"
#include "data/file_checks.h"
#include "data/h5_dataset.h"
#include "data/synthetic.h"
#include "optim/schedule.h"
#include "train/loss_plot.h"
#include "train/progress.h"
#include "train/run_folder.h"
#include "train/signals.h"
#include "train/step_runner.h"

namespace kvc::train {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

bool is_synthetic(const std::string& data) { return data.empty() || data == "synthetic"; }

// True when some element is NaN or infinite (a host copy: only used once the
// loss went bad).
bool has_non_finite(const Tensor& t) {
  if (!t.defined()) return false;
  for (double v : t.to_vector()) {
    if (!std::isfinite(v)) return true;
  }
  return false;
}

}  // namespace

// ---- helpers shared with eval / infer / bench
// ------------------------------------------------

std::unique_ptr<KVSource> make_source(const std::string& data, const KVShape& shape, uint64_t seed,
                                      Device device, Split split) {
  if (is_synthetic(data))
    return std::make_unique<SyntheticKV>(shape, seed, device, DType::f32, split);
  return std::make_unique<H5KVDataset>(data, shape.batch, seed, device, DType::f32, split,
                                       shape.queries);
}

Tensor task_loss(CompressorPair& pair, const CompressorPair* teacher, const std::string& task,
                 const Batch& batch) {
  if (task == "teacher") {
    KVC_CHECK(teacher != nullptr, "train: task teacher needs a teacher pair");
    return pair.teacher_loss(*teacher, batch.k, batch.v);
  }
  KVC_CHECK(task == "distill", "train: unknown task '", task, "' (expected distill or teacher)");
  return pair.distill_loss(batch.q, batch.k, batch.v);
}

double evaluate(CompressorPair& pair, const CompressorPair* teacher, const std::string& task,
                KVSource& source, int64_t n) {
  if (source.batches_per_epoch() > 0) {
    n = std::min<int64_t>(n, static_cast<int64_t>(source.batches_per_epoch()));
  }
  n = std::max<int64_t>(n, 1);
  const bool was_training = pair.training();
  pair.eval();
  NoGradGuard no_grad;
  double sum = 0;
  try {
    for (int64_t i = 0; i < n; ++i) {
      sum += task_loss(pair, teacher, task, source.batch_at(static_cast<uint64_t>(i))).item();
    }
  } catch (...) {
    pair.train(was_training);
    throw;
  }
  pair.train(was_training);
  return sum / static_cast<double>(n);
}

CompressorOptions compressor_options(const RunSettings& r, Device device) {
  CompressorOptions o;
  o.kind = r.compressor;
  o.heads = r.heads;
  o.dim_head = r.dim_head;
  o.block = r.block;
  o.expand = r.expand;
  o.dropout = r.dropout;
  o.reduction = r.reduction;
  o.seed = r.seed;
  o.dtype = DType::f32;
  o.device = device;
  return o;
}

std::shared_ptr<CompressorPair> pair_from_checkpoint(const Checkpoint& ck, Device device) {
  // The attributes' sizes decide what the pair allocates: a stored tensor must back them first.
  const CheckpointMeta& m = ck.meta;
  const Shape positions{m.heads, m.block, m.dim_head};
  const auto stored = std::find_if(ck.params.begin(), ck.params.end(), [](const auto& p) {
    return p.first == "k_intrablock_positions";
  });
  KVC_CHECK(stored != ck.params.end() && stored->second.shape() == positions,
            "checkpoint: /params/", "k_intrablock_positions is ",
            stored == ck.params.end() ? "missing" : str(stored->second.shape()),
            " but the attributes heads, block and dim_head say ", positions);
  std::shared_ptr<CompressorPair> pair;
  try {
    pair = std::make_shared<CompressorPair>(compressor_options(ck.meta, device));
  } catch (const Error& e) {
    KVC_FAIL("checkpoint: its attributes do not describe a valid compressor: ", e.what());
  }
  std::map<std::string, Tensor> state(ck.params.begin(), ck.params.end());
  try {
    pair->load_state(state, /*strict=*/true);
  } catch (const Error& e) {
    KVC_FAIL("checkpoint: /params do not fit a ", ck.meta.compressor, " pair (h ", ck.meta.heads,
             ", d ", ck.meta.dim_head, ", n ", ck.meta.block, "): ", e.what());
  }
  return pair;
}

void make_output_dir(const std::string& dir) {
  KVC_CHECK(!dir.empty(), "train: empty output folder name");
  std::string partial;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    partial = dir.substr(0, pos);
    if (partial.empty()) continue;
    if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) {
      KVC_FAIL("cannot create output folder ", dir, ": ", std::strerror(errno));
    }
  }
  struct stat st {};
  KVC_CHECK(::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode), "cannot create output folder ",
            dir, ": ", (errno ? std::strerror(errno) : "not a folder"));
  KVC_CHECK(::access(dir.c_str(), W_OK | X_OK) == 0, "output folder ", dir,
            " is not writable: ", std::strerror(errno));
}

void remove_stale_temp_files(const std::string& dir) { sweep_stale_temp_files(dir); }

std::string default_run_dir(const std::string& kind) {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tm);
  const std::string base = std::string("runs/") + stamp + "-" + kind;
  std::string dir = base;
  struct stat st {};
  for (int i = 2; ::stat(dir.c_str(), &st) == 0; ++i) dir = base + "-" + std::to_string(i);
  return dir;
}

// ---- Trainer
// ----------------------------------------------------------------------------------

Trainer::Trainer(TrainOptions options) : opt_(std::move(options)), best_eval_(kNaN) {
  Checkpoint resumed;
  const bool resuming = !opt_.resume.empty();
  if (resuming) {
    resumed = load_checkpoint(opt_.resume, /*with_optim=*/true);
    KVC_CHECK(resumed.has_optim, "checkpoint: ", opt_.resume,
              " holds weights only (no /optim group): it cannot be resumed");
    const CheckpointMeta& m = resumed.meta;
    // The checkpoint's stored settings win; the flags keep the loop's rhythm and may extend
    // the run (steps > 0).
    const int64_t steps = opt_.steps;
    for (const Setting& s : settings_table()) {
      if (s.stored != Stored::no) copy_setting(opt_, m, s);
    }
    opt_.data = is_synthetic(m.data) ? std::string() : m.data;
    opt_.weight_decay = resumed.optim.weight_decay;
    opt_.steps = steps > 0 ? steps : m.steps;
    replan_ = replan_on_resume({m.lr_replan_step, m.lr_replan_lr}, m.step, m.steps, opt_.steps,
                               m.lr, m.warmup);
    if (replan_.step == m.step && m.steps != opt_.steps) {
      spdlog::info(
          "the run's length changes from {} to {} steps: the learning rate blends from {:.3e} at "
          "step {} into the schedule planned for {} steps",
          m.steps, opt_.steps, replan_.lr, m.step, opt_.steps);
    }
    if (opt_.out.empty()) {
      const size_t slash = opt_.resume.find_last_of('/');
      opt_.out = slash == std::string::npos ? "." : opt_.resume.substr(0, slash);
    }
  }
  KVC_CHECK(opt_.steps > 0, "train: --steps ", opt_.steps, " must be positive");
  KVC_CHECK(opt_.task == "distill" || opt_.task == "teacher", "train: unknown task '", opt_.task,
            "' (expected distill or teacher)");

  // Data first: a file decides h, seq and d.
  train_src_ = make_source(opt_.data, opt_, opt_.seed, opt_.device, Split::train);
  eval_src_ = make_source(opt_.data, opt_, opt_.seed, opt_.device, Split::eval);
  if (!is_synthetic(opt_.data)) {
    const KVShape fs = train_src_->shape();
    if (resuming) {
      KVC_CHECK(fs.heads == opt_.heads && fs.dim_head == opt_.dim_head, "train: ", opt_.data,
                " has h ", fs.heads, " and d ", fs.dim_head, ", the checkpoint h ", opt_.heads,
                " and d ", opt_.dim_head);
    }
    opt_.heads = fs.heads;
    opt_.dim_head = fs.dim_head;
    opt_.seq = fs.seq;
    opt_.queries = fs.queries;
  }
  validate_settings(opt_);

  const CompressorOptions co = compressor_options(opt_, opt_.device);
  if (resuming) {
    pair_ = pair_from_checkpoint(resumed, opt_.device);
  } else {
    pair_ = std::make_shared<CompressorPair>(co);
  }
  pair_->train(true);
  if (opt_.task == "teacher") teacher_ = CompressorPair::make_teacher(co);

  AdamOptions ao;
  ao.lr = opt_.lr;
  ao.weight_decay = opt_.weight_decay;
  ao.decoupled = opt_.weight_decay > 0;
  adam_ = std::make_unique<Adam>(pair_->named_parameters(), ao);
  if (resuming) restore(resumed);

  if (opt_.out.empty()) opt_.out = default_run_dir(opt_.compressor);
  make_output_dir(opt_.out);
  lock_ = std::make_unique<FolderLock>(opt_.out);  // one run per folder
  claim_run_folder(opt_.out, opt_.resume, opt_.overwrite);
  remove_stale_temp_files(opt_.out);
}

Trainer::~Trainer() = default;

void Trainer::restore(const Checkpoint& ck) {
  const OptimState& o = ck.optim;
  std::map<std::string, const Tensor*> avg_sq;
  for (const auto& [key, t] : o.exp_avg_sq) avg_sq[key] = &t;
  for (const auto& [key, t] : o.exp_avg) {
    const auto it = avg_sq.find(key);
    KVC_CHECK(it != avg_sq.end(), "checkpoint: ", opt_.resume, " has /optim/exp_avg/", key,
              " but no /optim/exp_avg_sq/", key);
    adam_->set_state(key, t, *it->second);
  }
  KVC_CHECK(static_cast<int64_t>(o.exp_avg.size()) == adam_->num_params(),
            "checkpoint: ", opt_.resume, " has moments for ", o.exp_avg.size(),
            " tensors, the pair has ", adam_->num_params());
  adam_->set_step_count(o.step);
  step_ = ck.meta.step;
  KVC_CHECK(o.step == step_, "checkpoint: ", opt_.resume, " is at step ", step_,
            " but its optimizer at step ", o.step);

  const auto pos = ck.rng.find("data_position");
  KVC_CHECK(pos != ck.rng.end() && pos->second.size() == 1, "checkpoint: ", opt_.resume,
            " lacks /rng/data_position");
  train_src_->set_position(pos->second[0]);
  const auto dropout = ck.rng.find("dropout");
  if (dropout != ck.rng.end()) pair_->set_rng_counters(dropout->second);

  metrics_ = ck.metrics;
  metrics_.truncate_after(step_);
  metrics_.mark_resume(step_);
  for (const MetricsRow& r : metrics_.rows()) {
    if (std::isfinite(r.elapsed)) elapsed_before_ = std::max(elapsed_before_, r.elapsed);
    if (!std::isfinite(r.eval_loss) || r.step == 0) continue;
    if (!(r.eval_loss >= best_eval_)) {
      best_eval_ = r.eval_loss;
      best_step_ = r.step;
      evals_since_best_ = 0;
    } else {
      ++evals_since_best_;
    }
  }
}

double Trainer::evaluate() {
  return train::evaluate(*pair_, teacher_.get(), opt_.task, *eval_src_, opt_.eval_batches);
}

Checkpoint Trainer::snapshot() const {
  Checkpoint ck;
  CheckpointMeta& m = ck.meta;
  static_cast<RunSettings&>(m) = opt_;
  m.step = step_;
  m.data = is_synthetic(opt_.data) ? "synthetic" : opt_.data;
  m.eval_batches = opt_.eval_batches;
  m.lr_replan_step = replan_.step;
  m.lr_replan_lr = replan_.lr;
  ck.params = pair_->named_parameters();
  ck.has_optim = true;
  OptimState& o = ck.optim;
  o.step = adam_->step_count();
  for (const std::string& key : adam_->names()) {
    o.exp_avg.emplace_back(key, adam_->exp_avg(key));
    o.exp_avg_sq.emplace_back(key, adam_->exp_avg_sq(key));
  }
  const AdamOptions& ao = adam_->options();
  o.lr = ao.lr;
  o.beta1 = ao.beta1;
  o.beta2 = ao.beta2;
  o.eps = ao.eps;
  o.weight_decay = ao.weight_decay;
  o.decoupled = ao.decoupled;
  ck.rng["data_position"] = {train_src_->position()};
  const std::vector<uint64_t> counters = pair_->rng_counters();
  if (!counters.empty()) ck.rng["dropout"] = counters;
  ck.metrics = metrics_;
  return ck;
}

void Trainer::save(const std::string& path) const { save_checkpoint(path, snapshot()); }

void Trainer::write_logs() const {
  write_metrics_csv(opt_.out + "/metrics.csv", metrics_);
  write_loss_svg(opt_.out + "/loss.svg", metrics_,
                 opt_.compressor + " pair, task " + opt_.task + " (" + opt_.device.name() + ")");
}

std::string Trainer::describe() const {
  return str(opt_.compressor, " pair, task ", opt_.task, ", ",
             settings_summary(opt_, SettingGroup::shape), ", ", adam_->numel(), " parameters, ",
             adam_->options().decoupled ? "AdamW" : "Adam", " lr ", opt_.lr, ", data ",
             train_src_->describe(), ", device ", opt_.device.name());
}

TrainResult Trainer::run() {
  using Clock = std::chrono::steady_clock;
  TrainResult res;
  res.out_dir = opt_.out;
  res.checkpoint = opt_.out + "/checkpoint.h5";
  res.first_eval = res.last_eval = kNaN;
  res.first_loss = res.last_loss = kNaN;
  const std::string ckpt = res.checkpoint;

  spdlog::info("output folder {}", opt_.out);
  spdlog::info("{}{}", step_ > 0 ? str("resuming at step ", step_, ": ") : std::string(),
               describe());
  spdlog::info("settings: {}; {}; {}", settings_summary(opt_, SettingGroup::model),
               settings_summary(opt_, SettingGroup::shape),
               settings_summary(opt_, SettingGroup::train));
  write_logs();  // also proves the folder writable before any work

  const bool tty = opt_.progress == ProgressMode::tty ||
                   (opt_.progress == ProgressMode::automatic && Progress::stderr_is_tty());
  Progress progress(
      step_, opt_.steps, tty,
      opt_.progress == ProgressMode::none ? std::numeric_limits<int64_t>::max() : opt_.log_every);
  const auto start = Clock::now();
  auto elapsed = [&] {
    return elapsed_before_ + std::chrono::duration<double>(Clock::now() - start).count();
  };
  auto note = [&](const std::string& s) {
    if (opt_.progress != ProgressMode::none) progress.note(s);
  };

  auto do_eval = [&] {
    const double e = evaluate();
    metrics_.set_eval_loss(step_, e);
    if (std::isnan(res.first_eval)) res.first_eval = e;
    res.last_eval = e;
    KVC_CHECK(std::isfinite(e), "train: eval loss became ", e, " at step ", step_,
              "; the last good checkpoint is ", ckpt);
    const bool best = !(e >= best_eval_);  // also true when best_eval_ is NaN (none yet)
    if (best) {
      best_eval_ = e;
      best_step_ = step_;
    }
    evals_since_best_ = best ? 0 : evals_since_best_ + 1;
    progress.set_eval_loss(e);
    note(str("step ", step_, ": eval loss ", format_loss(e), best ? " (best)" : ""));
    if (best && opt_.save_best) save(opt_.out + "/best.h5");
  };

  if (step_ == 0 && (opt_.eval_every > 0)) {
    // The untrained pair's eval loss: the baseline the curve falls from (not
    // saved as best).
    const double e = evaluate();
    metrics_.set_eval_loss(0, e);
    res.first_eval = e;
    progress.set_eval_loss(e);
    note(str("step 0: eval loss ", format_loss(e), " (untrained)"));
  }

  const double nan_check_clip = opt_.clip > 0 ? opt_.clip : std::numeric_limits<double>::infinity();
  StepRunnerOptions step_options;
  step_options.task = opt_.task;
  step_options.clip = nan_check_clip;
  step_options.allow_graph = opt_.cuda_graph;
  StepRunner runner(*pair_, teacher_.get(), *adam_, step_options);
  // Reading a loss from the GPU waits for the device, and waiting every step would leave the GPU
  // idle while the next step is launched. So each step's loss and gradient norm are copied, on
  // the device, into a small buffer that is read in one transfer every `read_every` steps and
  // before anything that needs them (eval, checkpoints, interrupts, the end). A non-finite value
  // is still reported with its own step, and no checkpoint is written after it. On the CPU
  // reading is free: every step is read before its optimizer step.
  const bool on_cpu = opt_.device.is_cpu();
  const int64_t read_every =
      on_cpu ? 1 : std::max<int64_t>(1, std::min<int64_t>(opt_.log_every, 50));
  struct PendingStep {
    int64_t step;
    double lr;
    uint64_t batch_index;
    double elapsed;
  };
  std::vector<PendingStep> pending;
  Tensor step_stats =
      Tensor::empty({read_every, 2}, pair_->named_parameters().front().second.options());
  const size_t stat_bytes = dtype_size(step_stats.dtype());
  // Reads the pending steps' [loss, grad norm] and books them; throws on the first non-finite.
  // `batch` is the last step's batch when it is the only pending one (the CPU), to tell bad
  // data from a diverging run.
  auto read_pending = [&](const Batch* batch) {
    if (pending.empty()) return;
    const std::vector<double> v = step_stats.to_vector();  // the one wait for the device
    for (size_t i = 0; i < pending.size(); ++i) {
      const PendingStep& p = pending[i];
      const double loss = v[2 * i], grad_norm = v[2 * i + 1];
      if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
        progress.finish();
        write_logs();
        const char* what = !std::isfinite(loss) ? "loss" : "gradient norm";
        const double value = !std::isfinite(loss) ? loss : grad_norm;
        const bool bad_data =
            batch != nullptr &&
            (has_non_finite(batch->k) || has_non_finite(batch->v) || has_non_finite(batch->q));
        const std::string last_good = ::access(ckpt.c_str(), F_OK) == 0
                                          ? "the last good checkpoint is " + ckpt
                                          : std::string("no checkpoint was written yet");
        if (bad_data) {
          KVC_FAIL("train: the ", what, " became ", value, " at step ", p.step, " because batch ",
                   p.batch_index, " of ", train_src_->describe(), " contains NaN or Inf values; ",
                   last_good);
        }
        KVC_FAIL("train: the ", what, " became ", value, " at step ", p.step, " (lr ", p.lr,
                 "); stopping; ", last_good, " (try a lower --lr or --clip)");
      }
      metrics_.append({p.step, loss, kNaN, p.lr, grad_norm, p.elapsed});
      if (std::isnan(res.first_loss)) res.first_loss = loss;
      res.last_loss = loss;
      if (opt_.progress != ProgressMode::none) progress.update(p.step, loss, p.lr, grad_norm);
    }
    pending.clear();
  };

  while (step_ < opt_.steps) {
    const int64_t next = step_ + 1;
    const double lr = replanned_learning_rate(next, opt_.steps, opt_.lr, opt_.warmup, replan_);
    adam_->set_lr(lr);
    const uint64_t batch_index = train_src_->position();
    const Batch batch = train_src_->next();
    const Tensor& loss_t = runner.forward_backward(batch);
    {  // stats[slot] = [loss, grad norm], device to device
      char* slot = static_cast<char*>(step_stats.raw_data()) + 2 * pending.size() * stat_bytes;
      copy_bytes(slot, opt_.device, loss_t.raw_data(), opt_.device, stat_bytes);
      copy_bytes(slot + stat_bytes, opt_.device, adam_->norm_scale().raw_data(), opt_.device,
                 stat_bytes);
    }
    pending.push_back({next, lr, batch_index, elapsed()});

    const bool last = next == opt_.steps;
    const bool interrupted = interrupt_requested();
    const bool stop = opt_.stop_at > 0 && next >= opt_.stop_at;
    const bool eval_now = (opt_.eval_every > 0 && next % opt_.eval_every == 0) || last;
    const bool save_now =
        (opt_.save_every > 0 && next % opt_.save_every == 0) || last || interrupted || stop;
    // Read before the update, so a bad step found here never reaches the weights; the batch
    // is the pending step's own only when it is the only one.
    if (on_cpu || static_cast<int64_t>(pending.size()) == read_every || eval_now || save_now) {
      read_pending(pending.size() == 1 ? &batch : nullptr);
    }
    runner.update();
    step_ = next;

    if (eval_now) do_eval();
    const bool early = eval_now && !last && opt_.patience > 0 && evals_since_best_ >= opt_.patience;
    if (save_now || early) {
      save(ckpt);
      write_logs();
      if (!interrupted && !stop && !early) note(str("step ", step_, ": saved checkpoint.h5"));
    }
    if (early) {
      progress.finish();
      res.early_stopped = true;
      progress.note(str("early stop at step ", step_, ": no lower eval loss in the last ",
                        opt_.patience, " evaluations (best ", format_loss(best_eval_), " at step ",
                        best_step_, ", in best.h5); saved ", ckpt));
      break;
    }
    if (interrupted || stop) {
      progress.finish();
      res.interrupted = interrupted;
      res.stopped = stop;
      // Always said, even with --progress none: it tells how to continue.
      progress.note(str(interrupted ? "interrupted" : "stopped", " at step ", step_, "; saved ",
                        ckpt, " (continue with --resume ", ckpt, ")"));
      break;
    }
  }
  progress.finish();
  res.step = step_;
  res.best_eval = best_eval_;
  if (!res.interrupted && !res.stopped) {
    spdlog::info(
        "done: step {}, train loss {:.4e} -> {:.4e}, eval loss {:.4e} "
        "(best {:.4e}), "
        "{:.1f}s",
        step_, res.first_loss, res.last_loss, res.last_eval, best_eval_, elapsed());
  }
  spdlog::info("output folder {}: checkpoint.h5{}, metrics.csv, loss.svg (loss curve)", opt_.out,
               ::access((opt_.out + "/best.h5").c_str(), F_OK) == 0 ? ", best.h5" : "");
  return res;
}

}  // namespace kvc::train
