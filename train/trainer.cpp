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
#include <cstdio>
#include <cstring>
#include <ctime>
#include <limits>
#include <map>

#include "core/autograd.h"
#include "data/file_checks.h"
#include "data/h5_dataset.h"
#include "data/synthetic.h"
#include "optim/schedule.h"
#include "train/data_parallel.h"
#include "train/loss_plot.h"
#include "train/progress.h"
#include "train/run_folder.h"
#include "train/signals.h"
#include "train/step_runner.h"
#include "train/step_stats.h"

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
                                      Device device, Split split, Shard shard) {
  if (is_synthetic(data))
    return std::make_unique<SyntheticKV>(shape, seed, device, DType::f32, split, shard);
  return std::make_unique<H5KVDataset>(data, shape.batch, seed, device, DType::f32, split,
                                       shape.queries, shape.query_heads, shard);
}

Tensor task_loss(CompressorPair& pair, const CompressorPair* teacher, const std::string& task,
                 const Batch& batch) {
  if (task == "teacher") {
    KVC_CHECK(teacher != nullptr, "train: task teacher needs a teacher pair");
    return pair.teacher_loss(*teacher, batch.k, batch.v);
  }
  KVC_CHECK(task == "distill", "train: unknown task '", task, "' (expected distill or teacher)");
  return pair.distill_loss(batch.q, batch.k, batch.v, batch.q_pos);
}

double evaluate(CompressorPair& pair, const CompressorPair* teacher, const std::string& task,
                KVSource& source, int64_t n, dist::Communicator* comm) {
  return evaluate_with_recall(pair, teacher, task, source, n, 0, comm).loss;
}

EvalResult evaluate_with_recall(CompressorPair& pair, const CompressorPair* teacher,
                                const std::string& task, KVSource& source, int64_t n, int64_t topk,
                                dist::Communicator* comm) {
  if (source.batches_per_epoch() > 0) {
    n = std::min<int64_t>(n, static_cast<int64_t>(source.batches_per_epoch()));
  }
  n = std::max<int64_t>(n, 1);
  const bool was_training = pair.training();
  pair.eval();
  NoGradGuard no_grad;
  double sum = 0;
  EvalResult out;
  SelectionRecall recall;
  try {
    const int64_t first = comm ? comm->rank() : 0, stride = comm ? comm->size() : 1;
    for (int64_t i = first; i < n; i += stride) {
      const Batch batch = source.batch_at(static_cast<uint64_t>(i));
      sum += task_loss(pair, teacher, task, batch).item();
      if (task != "distill") continue;
      out.queries += batch.q.size(0) * batch.q.size(2);
      // Recall only when asked (topk > 0); the left-out count comes with it.
      if (topk > 0) recall += pair.selection_recall(batch.q, batch.k, batch.q_pos, topk);
    }
  } catch (...) {
    pair.train(was_training);
    throw;
  }
  pair.train(was_training);
  if (comm) {
    // Every rank gets the sums over all ranks' batches (the counts are exact in a double).
    double sums[5] = {sum, recall.sum, static_cast<double>(recall.count),
                      static_cast<double>(recall.queries_without_block),
                      static_cast<double>(out.queries)};
    comm->allreduce_sum(sums, 5);
    sum = sums[0];
    recall.sum = sums[1];
    recall.count = static_cast<int64_t>(sums[2]);
    recall.queries_without_block = static_cast<int64_t>(sums[3]);
    out.queries = static_cast<int64_t>(sums[4]);
  }
  out.loss = sum / static_cast<double>(n);
  out.recall_at_k = recall.mean();
  out.queries_without_block = recall.queries_without_block;
  return out;
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
  o.stride = r.stride;
  o.query_heads = r.query_heads;
  o.causal = r.causal;
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

Trainer::Trainer(TrainOptions options)
    : opt_(std::move(options)), comm_(opt_.comm ? opt_.comm : dist::single_process()) {
  Checkpoint resumed;
  const bool resuming = !opt_.resume.empty();
  if (resuming) {
    resumed = load_checkpoint(opt_.resume, /*with_optim=*/true);
    KVC_CHECK(resumed.has_optim, "checkpoint: ", opt_.resume,
              " holds weights only (no /optim group): it cannot be resumed");
    adopt_resumed_settings(resumed);
  }
  KVC_CHECK(opt_.steps > 0, "train: --steps ", opt_.steps, " must be positive");
  KVC_CHECK(opt_.task == "distill" || opt_.task == "teacher", "train: unknown task '", opt_.task,
            "' (expected distill or teacher)");
  open_sources(resuming);
  validate_settings(opt_);

  const CompressorOptions co = compressor_options(opt_, opt_.device);
  pair_ =
      resuming ? pair_from_checkpoint(resumed, opt_.device) : std::make_shared<CompressorPair>(co);
  pair_->train(true);
  if (opt_.task == "teacher") teacher_ = CompressorPair::make_teacher(co);

  AdamOptions ao;
  ao.lr = opt_.lr;
  ao.weight_decay = opt_.weight_decay;
  ao.decoupled = opt_.weight_decay > 0;
  adam_ = std::make_unique<Adam>(pair_->named_parameters(), ao);
  if (resuming) load_state_dict(resumed);
  check_ranks_agree(*comm_, opt_, *adam_);
  if (comm_->is_root()) open_output_folder();  // rank 0 alone writes
}

Trainer::~Trainer() = default;

void Trainer::adopt_resumed_settings(const Checkpoint& resumed) {
  const CheckpointMeta& m = resumed.meta;
  // The checkpoint's stored settings win; the flags keep the loop's rhythm and may extend the
  // run (steps > 0).
  const int64_t steps = opt_.steps;
  for (const Setting& s : settings_table()) {
    if (s.stored != Stored::no) copy_setting(opt_, m, s);
  }
  opt_.data = is_synthetic(m.data) ? std::string() : m.data;
  opt_.weight_decay = resumed.optim.weight_decay;
  opt_.steps = steps > 0 ? steps : m.steps;
  replan_ = replan_on_resume({m.lr_replan_step, m.lr_replan_lr}, m.step, m.steps, opt_.steps, m.lr,
                             m.warmup);
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

void Trainer::open_sources(bool resuming) {
  // Each rank draws its shard of the global train batch; evaluation takes whole global batches,
  // a share of them on each rank.
  train_src_ = make_source(opt_.data, opt_, opt_.seed, opt_.device, Split::train,
                           Shard{comm_->rank(), comm_->size()});
  KVShape eval_shape = opt_;
  eval_shape.batch *= comm_->size();
  eval_src_ = make_source(opt_.data, eval_shape, opt_.seed, opt_.device, Split::eval);
  if (is_synthetic(opt_.data)) return;
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
  opt_.query_heads = fs.query_heads;
  const auto* file = dynamic_cast<const H5KVDataset*>(train_src_.get());
  KVC_CHECK(!opt_.causal || !file->file_has_queries() || file->info().has_positions,
            "train: --causal needs the queries' positions, but ", opt_.data,
            " has 'q' without 'q_pos' (N, nq)");
}

void Trainer::open_output_folder() {
  if (opt_.out.empty()) opt_.out = default_run_dir(opt_.compressor);
  make_output_dir(opt_.out);
  lock_ = std::make_unique<FolderLock>(opt_.out);  // one run per folder
  claim_run_folder(opt_.out, opt_.resume, opt_.overwrite);
  remove_stale_temp_files(opt_.out);
}

void Trainer::load_state_dict(const Checkpoint& ck) {
  try {
    adam_->load_state_dict(ck.optim);
    train_src_->load_state_dict(ck.rng);
    warn_on_other_rank_count(ck);
    const auto dropout = ck.rng.find("dropout");
    if (dropout != ck.rng.end()) pair_->set_rng_counters(dropout->second);
  } catch (const Error& e) {
    KVC_FAIL("checkpoint: ", opt_.resume, ": ", e.what());
  }
  step_ = ck.meta.step;
  KVC_CHECK(ck.optim.step == step_, "checkpoint: ", opt_.resume, " is at step ", step_,
            " but its optimizer at step ", ck.optim.step);
  metrics_ = ck.metrics;
  metrics_.truncate_after(step_);
  metrics_.mark_resume(step_);
  elapsed_before_ = metrics_.max_elapsed();
  best_ = BestEval::of(metrics_);
}

// The data position is the global batch's index, the same on every rank; a resume on another
// number of ranks continues with another global batch.
void Trainer::warn_on_other_rank_count(const Checkpoint& ck) const {
  const auto ranks = ck.rng.find("data_ranks");
  const uint64_t saved = ranks != ck.rng.end() && !ranks->second.empty() ? ranks->second[0] : 1;
  if (saved != static_cast<uint64_t>(comm_->size()) && comm_->is_root()) {
    spdlog::warn(
        "{} was trained by {} rank(s), this run has {}: the global batch changes from {} to {}",
        opt_.resume, saved, comm_->size(), saved * opt_.batch, comm_->size() * opt_.batch);
  }
}

double Trainer::evaluate() {
  return train::evaluate(*pair_, teacher_.get(), opt_.task, *eval_src_, opt_.eval_batches,
                         comm_.get());
}

EvalResult Trainer::evaluate_with_recall() {
  return train::evaluate_with_recall(*pair_, teacher_.get(), opt_.task, *eval_src_,
                                     opt_.eval_batches, opt_.topk, comm_.get());
}

Checkpoint Trainer::snapshot() const {
  Checkpoint ck;
  CheckpointMeta& m = ck.meta;
  static_cast<RunSettings&>(m) = opt_;
  m.step = step_;
  m.data = is_synthetic(opt_.data) ? "synthetic" : opt_.data;
  m.lr_replan_step = replan_.step;
  m.lr_replan_lr = replan_.lr;
  ck.params = pair_->named_parameters();
  ck.has_optim = true;
  ck.optim = adam_->state_dict();
  train_src_->state_dict(ck.rng);
  if (comm_->size() > 1) ck.rng["data_ranks"] = {static_cast<uint64_t>(comm_->size())};
  const std::vector<uint64_t> counters = pair_->rng_counters();
  if (!counters.empty()) ck.rng["dropout"] = counters;
  ck.metrics = metrics_;
  return ck;
}

void Trainer::save(const std::string& path) const {
  if (comm_->is_root()) save_checkpoint(path, snapshot());
}

void Trainer::write_logs() const {
  if (!comm_->is_root()) return;
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

// ---- the loop
// ----------------------------------------------------------------------------------

struct Trainer::Session {
  using Clock = std::chrono::steady_clock;
  Session(Trainer& t, bool tty, int64_t log_every, StepRunnerOptions step, int64_t read_every)
      : progress(t.step_, t.opt_.steps, tty, log_every),
        runner(*t.pair_, t.teacher_.get(), *t.adam_, std::move(step)),
        stats(read_every, t.pair_->named_parameters().front().second.options()),
        start(Clock::now()),
        elapsed_before(t.elapsed_before_),
        quiet(t.opt_.progress == ProgressMode::none) {}

  double elapsed() const {
    return elapsed_before + std::chrono::duration<double>(Clock::now() - start).count();
  }
  // Books the launched step's loss and gradient norm (read later), stamped with the time now.
  void record_step(StepRecord r, const Tensor& loss, const Tensor& norm_scale) {
    r.elapsed = elapsed();
    stats.record(r, loss, norm_scale);
  }
  // A line above the progress bar (none with --progress none).
  void note(const std::string& line) {
    if (!quiet) progress.note(line);
  }

  TrainResult res;
  Progress progress;
  StepRunner runner;
  StepStats stats;
  Clock::time_point start;
  double elapsed_before;
  bool quiet;
};

struct Trainer::StepPlan {
  StepRecord record;  // step, lr, batch index
  bool last = false, interrupted = false, stop = false, eval_now = false, save_now = false;
};

TrainResult Trainer::run() {
  std::unique_ptr<Session> s = begin_run();
  while (step_ < opt_.steps) {
    const StepPlan plan = plan_step(step_ + 1);
    adam_->set_lr(plan.record.lr);
    const Batch batch = train_src_->next();
    // A step read back before its update (so a bad one found here never reaches the weights)
    // needs its gradient norm first; any other, when nothing is clipped, has the optimizer take
    // the norm as it reads the gradients.
    const bool read_now = s->stats.one_slot_left() || plan.eval_now || plan.save_now;
    const Tensor& loss = s->runner.forward_backward(batch, /*norm_first=*/read_now);
    if (!s->runner.norm_after_update()) s->record_step(plan.record, loss, adam_->norm_scale());
    if (read_now) book_steps(*s, s->stats.pending() == 1 ? &batch : nullptr);
    s->runner.update();  // the optimizer
    if (s->runner.norm_after_update()) s->record_step(plan.record, loss, adam_->norm_scale());
    step_ = plan.record.step;
    if (!after_step(*s, plan)) break;
  }
  return finish_run(*s);
}

std::unique_ptr<Trainer::Session> Trainer::begin_run() {
  spdlog::info("output folder {}", opt_.out);
  spdlog::info("{}{}", step_ > 0 ? str("resuming at step ", step_, ": ") : std::string(),
               describe());
  spdlog::info("settings: {}; {}; {}", settings_summary(opt_, SettingGroup::model),
               settings_summary(opt_, SettingGroup::shape),
               settings_summary(opt_, SettingGroup::train));
  write_logs();  // also proves the folder writable before any work

  const bool tty = opt_.progress == ProgressMode::tty ||
                   (opt_.progress == ProgressMode::automatic && Progress::stderr_is_tty());
  const int64_t log_every =
      opt_.progress == ProgressMode::none ? std::numeric_limits<int64_t>::max() : opt_.log_every;
  StepRunnerOptions step;
  step.task = opt_.task;
  step.clip = opt_.clip > 0 ? opt_.clip : std::numeric_limits<double>::infinity();
  step.allow_graph = opt_.cuda_graph;
  step.reduce_gradients = gradient_reducer(*comm_, *adam_);
  // On the CPU reading is free: every step is read before its optimizer step.
  const int64_t read_every =
      opt_.device.is_cpu() ? 1 : std::max<int64_t>(1, std::min<int64_t>(opt_.log_every, 50));
  auto s = std::make_unique<Session>(*this, tty, log_every, step, read_every);
  s->res.out_dir = opt_.out;
  s->res.checkpoint = opt_.out + "/checkpoint.h5";
  s->res.first_eval = s->res.last_eval = s->res.first_loss = s->res.last_loss = kNaN;

  if (step_ == 0 && opt_.eval_every > 0) {
    // The untrained pair's eval loss: the baseline the curve falls from (not saved as best).
    const EvalResult r = evaluate_with_recall();
    metrics_.set_eval_loss(0, r.loss);
    metrics_.set_recall(0, r.recall_at_k);
    s->res.first_eval = r.loss;
    s->progress.set_eval_loss(r.loss);
    s->note(str("step 0: ", eval_note(r), " (untrained)"));
  }
  return s;
}

Trainer::StepPlan Trainer::plan_step(int64_t step) const {
  StepPlan p;
  p.record.step = step;
  p.record.lr = replanned_learning_rate(step, opt_.steps, opt_.lr, opt_.warmup, replan_);
  p.record.batch_index = train_src_->position();
  p.last = step == opt_.steps;
  p.interrupted = dist::any_rank(*comm_, interrupt_requested());  // every rank stops together
  p.stop = opt_.stop_at > 0 && step >= opt_.stop_at;
  p.eval_now = (opt_.eval_every > 0 && step % opt_.eval_every == 0) || p.last;
  p.save_now =
      (opt_.save_every > 0 && step % opt_.save_every == 0) || p.last || p.interrupted || p.stop;
  return p;
}

void Trainer::book_steps(Session& s, const Batch* batch) {
  std::vector<StepRecord> records = s.stats.read();
  average_losses_over_ranks(*comm_, records);  // the global batch's; the norms are global already
  for (const StepRecord& r : records) {
    if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) fail_non_finite(s, r, batch);
    metrics_.append({r.step, r.loss, kNaN, r.lr, r.grad_norm, r.elapsed});
    if (std::isnan(s.res.first_loss)) s.res.first_loss = r.loss;
    s.res.last_loss = r.loss;
    if (!s.quiet) s.progress.update(r.step, r.loss, r.lr, r.grad_norm);
  }
}

void Trainer::fail_non_finite(Session& s, const StepRecord& r, const Batch* batch) {
  s.progress.finish();
  write_logs();
  const char* what = !std::isfinite(r.loss) ? "loss" : "gradient norm";
  const double value = !std::isfinite(r.loss) ? r.loss : r.grad_norm;
  const bool bad_data = batch != nullptr && (has_non_finite(batch->k) || has_non_finite(batch->v) ||
                                             has_non_finite(batch->q));
  const std::string& ckpt = s.res.checkpoint;
  const std::string last_good = ::access(ckpt.c_str(), F_OK) == 0
                                    ? "the last good checkpoint is " + ckpt
                                    : std::string("no checkpoint was written yet");
  if (bad_data) {
    KVC_FAIL("train: the ", what, " became ", value, " at step ", r.step, " because batch ",
             r.batch_index, " of ", train_src_->describe(), " contains NaN or Inf values; ",
             last_good);
  }
  KVC_FAIL("train: the ", what, " became ", value, " at step ", r.step, " (lr ", r.lr,
           "); stopping; ", last_good, " (try a lower --lr or --clip)");
}

std::string Trainer::eval_note(const EvalResult& r) const {
  std::string s = "eval loss " + format_loss(r.loss);
  if (!std::isnan(r.recall_at_k)) {
    char recall[32];
    std::snprintf(recall, sizeof(recall), "%.4f", r.recall_at_k);  // as `eval` prints it
    s += str(", recall@", opt_.topk, " ", recall);
  }
  if (opt_.causal) {
    s += str(" (", r.queries_without_block, " of ", r.queries,
             " queries see no complete block: left out)");
  }
  return s;
}

void Trainer::evaluate_and_record(Session& s) {
  const EvalResult r = evaluate_with_recall();
  const double e = r.loss;
  metrics_.set_eval_loss(step_, e);
  metrics_.set_recall(step_, r.recall_at_k);
  if (std::isnan(s.res.first_eval)) s.res.first_eval = e;
  s.res.last_eval = e;
  KVC_CHECK(std::isfinite(e), "train: eval loss became ", e, " at step ", step_,
            "; the last good checkpoint is ", s.res.checkpoint);
  const bool best = best_.add(step_, e);
  s.progress.set_eval_loss(e);
  s.note(str("step ", step_, ": ", eval_note(r), best ? " (best)" : ""));
  if (best && opt_.save_best) save(opt_.out + "/best.h5");
}

bool Trainer::after_step(Session& s, const StepPlan& plan) {
  if (plan.eval_now) evaluate_and_record(s);
  const std::string& ckpt = s.res.checkpoint;
  const bool early =
      plan.eval_now && !plan.last && opt_.patience > 0 && best_.evals_since >= opt_.patience;
  if (plan.save_now || early) {
    save(ckpt);
    write_logs();
    if (!plan.interrupted && !plan.stop && !early)
      s.note(str("step ", step_, ": saved checkpoint.h5"));
  }
  if (early) {
    s.progress.finish();
    s.res.early_stopped = true;
    s.progress.note(str("early stop at step ", step_, ": no lower eval loss in the last ",
                        opt_.patience, " evaluations (best ", format_loss(best_.loss), " at step ",
                        best_.step, ", in best.h5); saved ", ckpt));
    return false;
  }
  if (plan.interrupted || plan.stop) {
    s.progress.finish();
    s.res.interrupted = plan.interrupted;
    s.res.stopped = plan.stop;
    // Always said, even with --progress none: it tells how to continue.
    s.progress.note(str(plan.interrupted ? "interrupted" : "stopped", " at step ", step_,
                        "; saved ", ckpt, " (continue with --resume ", ckpt, ")"));
    return false;
  }
  return true;
}

TrainResult Trainer::finish_run(Session& s) {
  s.progress.finish();
  TrainResult& res = s.res;
  res.step = step_;
  res.best_eval = best_.loss;
  if (!res.interrupted && !res.stopped) {
    spdlog::info(
        "done: step {}, train loss {:.4e} -> {:.4e}, eval loss {:.4e} (best {:.4e}), {:.1f}s",
        step_, res.first_loss, res.last_loss, res.last_eval, best_.loss, s.elapsed());
  }
  spdlog::info("output folder {}: checkpoint.h5{}, metrics.csv, loss.svg (loss curve)", opt_.out,
               ::access((opt_.out + "/best.h5").c_str(), F_OK) == 0 ? ", best.h5" : "");
  return res;
}

}  // namespace kvc::train
