// Tests of the training components' state: the data source's position, the best evaluation
// replayed from a metrics history, the device-side step statistics.
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "data/synthetic.h"
#include "test_util.h"
#include "train/metrics.h"
#include "train/step_stats.h"

namespace kvc {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

TEST_CASE("state: a data source continues from its state_dict's position") {
  KVShape shape;
  shape.batch = 1;
  shape.seq = 16;
  shape.queries = 4;
  SyntheticKV a(shape, 3), b(shape, 3);
  for (int i = 0; i < 5; ++i) a.next();
  std::map<std::string, std::vector<uint64_t>> streams;
  a.state_dict(streams);
  CHECK(streams.at("data_position") == std::vector<uint64_t>{5});
  b.load_state_dict(streams);
  CHECK(b.next().k.to_vector() == a.next().k.to_vector());
  CHECK(b.position() == 6);

  streams.erase("data_position");
  CHECK_THROWS_WITH_AS(b.load_state_dict(streams),
                       "data: the state lacks /rng/data_position (one position)", Error);
}

TEST_CASE("state: BestEval replays a history's evaluations, the untrained baseline left out") {
  train::MetricsHistory h;
  h.set_eval_loss(0, 0.1);  // the baseline: lower than all, but not a best
  const std::vector<double> evals{kNaN, 3.0, kNaN, 4.0, 2.5, 2.5, 2.7};
  for (size_t i = 0; i < evals.size(); ++i) {
    const int64_t step = static_cast<int64_t>(i) + 1;
    h.append({step, 1.0, evals[i], 1e-3, 1.0, static_cast<double>(step)});
  }
  const train::BestEval best = train::BestEval::of(h);
  CHECK(best.loss == 2.5);
  CHECK(best.step == 5);  // a tie is not a new best
  CHECK(best.evals_since == 2);
  CHECK(h.max_elapsed() == 7.0);

  train::BestEval fresh;
  CHECK(fresh.add(10, 5.0));  // the first evaluation always is the best so far
  CHECK_FALSE(fresh.add(20, 5.0));
  CHECK(fresh.add(30, 4.0));
  CHECK(fresh.evals_since == 0);
}

TEST_CASE("state: StepStats returns each step's loss and gradient norm in order") {
  train::StepStats stats(2, f32());
  const Tensor norm_scale = Tensor::from_vector({1.5, 0.25}, {2}, f32());
  stats.record({1, 1e-3, 7}, Tensor::from_vector({0.75}, {}, f32()), norm_scale);
  CHECK_FALSE(stats.full());
  stats.record({2, 2e-3, 8}, Tensor::from_vector({0.5}, {}, f32()), norm_scale);
  CHECK(stats.full());
  CHECK_THROWS_WITH_AS(stats.record({3, 0, 9}, Tensor::from_vector({0.0}, {}, f32()), norm_scale),
                       "train: 2 steps recorded without reading them back", Error);
  const std::vector<train::StepRecord> read = stats.read();
  REQUIRE(read.size() == 2);
  CHECK(read[0].step == 1);
  CHECK(read[0].loss == 0.75);
  CHECK(read[0].grad_norm == 1.5);
  CHECK(read[1].batch_index == 8);
  CHECK(read[1].loss == 0.5);
  CHECK(stats.pending() == 0);
  CHECK(stats.read().empty());
  CHECK_THROWS_WITH_AS(train::StepStats(0, f32()),
                       "train: step statistics need room for one step, not 0", Error);
}

}  // namespace
}  // namespace kvc
