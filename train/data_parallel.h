// The trainer's data-parallel hooks: N ranks each hold the whole pair and a shard of every batch,
// sum their gradients once per step (before the clip and Adam, which then run identically
// everywhere), and average losses; rank 0 alone writes. With one process every hook is a no-op.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "optim/adam.h"
#include "train/step_stats.h"

namespace kvc::train {

struct TrainOptions;

// Every setting that must agree across ranks, as "name value, ...": the run's table, the loop's
// flags, the device kind and the checkpoint resumed.
std::string rank_settings_line(const TrainOptions& o);

// Throws dist::CollectiveError on every rank when the ranks' settings or their parameters (the
// seed's initial values, or the resumed checkpoint's) differ from rank 0's.
void check_ranks_agree(dist::Communicator& comm, const TrainOptions& o, const Adam& adam);

// StepRunnerOptions::reduce_gradients for `comm`: sums the flat gradient buffer over the ranks
// and divides by their number, so each rank holds the gradient of the global batch's mean loss
// (every shard has the same batch). Empty for dist::single_process() (an MPI or NCCL world of
// one rank runs it: the sum over one rank and the division by 1 leave the bits as they are).
std::function<void()> gradient_reducer(dist::Communicator& comm, Adam& adam);

// Replaces each step's loss by its mean over the ranks: the global batch's (equal shards).
void average_losses_over_ranks(dist::Communicator& comm, std::vector<StepRecord>& steps);

}  // namespace kvc::train
