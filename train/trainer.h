// Trainer: the training loop of `kvcompress train` (SPEC sections 4 and 7), and
// the helpers that eval, infer and bench share with it (data sources,
// evaluation, checkpoint <-> pair).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "data/batch.h"
#include "dist/communicator.h"
#include "nn/compressor_pair.h"
#include "optim/adam.h"
#include "optim/lr_replan.h"
#include "train/checkpoint.h"
#include "train/metrics.h"
#include "train/settings.h"
#include "train/step_stats.h"

namespace kvc {
class FolderLock;
}

namespace kvc::train {

enum class ProgressMode : uint8_t { automatic, tty, log, none };

// A run: its settings (the table's) plus where it runs and writes.
struct TrainOptions : RunSettings {
  Device device = Device::cpu();
  // Output. out empty: a new folder runs/<timestamp>-<kind> (under the current directory).
  std::string out;
  std::string resume;  // checkpoint to continue from (its stored settings win)
  ProgressMode progress = ProgressMode::automatic;
  bool save_best = true;  // write best.h5 on a new lowest eval loss
  // Replay the step from CUDA graphs once shapes are fixed (CUDA, no dropout; see StepRunner).
  bool cuda_graph = true;
  // Start over in a folder that holds another run (its files are deleted); without it, and
  // without resuming a checkpoint of that folder, such a folder is refused.
  bool overwrite = false;
  // Stop early (with a checkpoint, best.h5 kept) after this many evaluations in a row without a
  // new lowest eval loss; 0: never.
  int64_t patience = 0;
  // Data-parallel training: the ranks that train this pair together, each on `batch` rows of a
  // global batch of batch x ranks (see train/data_parallel.h). Null: this process alone.
  std::shared_ptr<dist::Communicator> comm;
};

struct TrainResult {
  int64_t step = 0;            // steps done in total (a resumed run counts the earlier ones)
  bool interrupted = false;    // stopped by SIGINT/SIGTERM (a checkpoint was saved)
  bool stopped = false;        // stopped at stop_at
  bool early_stopped = false;  // stopped by --patience (a checkpoint was saved)
  double first_loss = 0,
         last_loss = 0;  // train loss of this run's first and last step
  double first_eval = 0, last_eval = 0,
         best_eval = 0;  // NaN when no evaluation ran
  std::string out_dir;
  std::string checkpoint;  // OUT/checkpoint.h5
};

// A data source for `data` ("" / "synthetic" or a KV file) and `split`. For the
// generator the shape is taken as given; a file supplies h, seq and d itself.
// `shard`: this rank's rows of the global batch (train split).
std::unique_ptr<KVSource> make_source(const std::string& data, const KVShape& shape, uint64_t seed,
                                      Device device, Split split, Shard shard = {});

// Mean loss of `pair` (put in eval mode for the call, then restored) over
// batches 0..n-1 of `source` (batch_at: the source's position is not touched),
// without gradient. `teacher` is required for task "teacher". n is capped at
// the source's batches per epoch when it has one. With `comm`, rank r evaluates batches r, r + N,
// ... and the mean is over all ranks' batches (every rank gets it).
double evaluate(CompressorPair& pair, const CompressorPair* teacher, const std::string& task,
                KVSource& source, int64_t n, dist::Communicator* comm = nullptr);

// An evaluation with the distill task's selection recall@topk (NaN for the teacher task or when
// no query sees a block) and the queries left out of a causal loss (no complete block yet).
struct EvalResult {
  double loss = 0;
  double recall_at_k = 0;
  int64_t queries = 0;                // queries evaluated (batch * nq per batch)
  int64_t queries_without_block = 0;  // of them, left out (causal only)
};
EvalResult evaluate_with_recall(CompressorPair& pair, const CompressorPair* teacher,
                                const std::string& task, KVSource& source, int64_t n, int64_t topk,
                                dist::Communicator* comm = nullptr);

// The loss of one batch for `task` (with gradient when grad mode is on).
Tensor task_loss(CompressorPair& pair, const CompressorPair* teacher, const std::string& task,
                 const Batch& batch);

// The compressor options of a run's settings (a checkpoint's meta too), float32 on `device`.
CompressorOptions compressor_options(const RunSettings& settings, Device device);
// A pair built from a checkpoint's attributes with its /params loaded (strict:
// the keys and shapes must match exactly; the error names the checkpoint).
std::shared_ptr<CompressorPair> pair_from_checkpoint(const Checkpoint& ck, Device device);

class Trainer {
 public:
  // Builds the pair, optimizer and data (or restores them from options.resume)
  // and creates the output folder. Throws kvc::Error for bad settings,
  // unreadable data, unwritable folders.
  explicit Trainer(TrainOptions options);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Trains up to options.steps (or stop_at, or an interrupt). Throws kvc::Error
  // when the loss or the gradient turns NaN/Inf, naming the step; the
  // checkpoint on disk stays the last good one.
  TrainResult run();

  // Eval loss of the current parameters on the fixed held-out batches.
  double evaluate();
  // The same with the selection recall (--topk) and the queries left out.
  EvalResult evaluate_with_recall();
  // The full state as a checkpoint (what save writes).
  Checkpoint snapshot() const;
  // Saves snapshot() to `path` atomically.
  void save(const std::string& path) const;

  int64_t step() const { return step_; }
  const TrainOptions& options() const { return opt_; }
  CompressorPair& pair() { return *pair_; }
  Adam& optimizer() { return *adam_; }
  KVSource& train_source() { return *train_src_; }
  const MetricsHistory& metrics() const { return metrics_; }
  const std::string& out_dir() const { return opt_.out; }

 private:
  struct Session;   // what one run() call keeps: progress, step runner, step statistics, result
  struct StepPlan;  // what happens around one step

  // The components' state_dicts and back (params: the pair's, loaded when it is built).
  void load_state_dict(const Checkpoint& ck);
  void warn_on_other_rank_count(const Checkpoint& ck) const;
  // The stored settings of a resumed run win over the flags (but for the loop's rhythm and a
  // longer --steps); re-plans the learning rate when the run's length changes.
  void adopt_resumed_settings(const Checkpoint& resumed);
  void open_sources(bool resuming);  // the data: a file decides h, seq and d
  void open_output_folder();

  std::unique_ptr<Session> begin_run();
  StepPlan plan_step(int64_t step) const;
  // Reads the pending steps' loss and gradient norm, books them, throws on the first
  // non-finite one. `batch`: the only pending step's batch, to tell bad data from divergence.
  void book_steps(Session& s, const Batch* batch);
  [[noreturn]] void fail_non_finite(Session& s, const StepRecord& r, const Batch* batch);
  void evaluate_and_record(Session& s);
  // "eval loss X, recall@k Y (N of M queries see no complete block: left out)".
  std::string eval_note(const EvalResult& r) const;
  // Evaluation, checkpoint, early stop, interrupt after a step; false ends the run.
  bool after_step(Session& s, const StepPlan& plan);
  TrainResult finish_run(Session& s);

  void write_logs() const;  // metrics.csv and loss.svg
  std::string describe() const;

  TrainOptions opt_;
  std::shared_ptr<dist::Communicator> comm_;  // opt_.comm, or this process alone
  std::shared_ptr<CompressorPair> pair_;
  std::shared_ptr<CompressorPair> teacher_;  // task teacher only
  std::unique_ptr<Adam> adam_;
  std::unique_ptr<KVSource> train_src_, eval_src_;
  MetricsHistory metrics_;
  int64_t step_ = 0;
  double elapsed_before_ = 0;  // seconds of the runs this one resumes
  BestEval best_;
  std::unique_ptr<FolderLock> lock_;  // held while this trainer may write into opt_.out
  LrReplan replan_;                   // where a resume changed the run's length
};

// Creates `dir` and its parents; a folder that exists is fine. Throws
// kvc::Error naming the folder and the system's reason, also when it is not
// writable.
void make_output_dir(const std::string& dir);
// Deletes ".<name>.tmp-<pid>" files that a killed writer left in `dir` (its pid
// is gone).
void remove_stale_temp_files(const std::string& dir);
// runs/<YYYYmmdd-HHMMSS>-<kind>, with -2, -3, ... appended when that folder
// exists.
std::string default_run_dir(const std::string& kind);

}  // namespace kvc::train
