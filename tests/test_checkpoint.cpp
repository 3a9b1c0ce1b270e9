// Tests of train/checkpoint: SPEC section 6 layout, exact round trips, atomic
// writes, errors.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

#include "data/h5file.h"
#include "test_train_util.h"
#include "test_util.h"
#include "train/checkpoint.h"

namespace kvc {
namespace {

using train::Checkpoint;

Checkpoint sample_checkpoint() {
  Checkpoint ck;
  ck.meta.compressor = "conv";
  ck.meta.heads = 2;
  ck.meta.dim_head = 4;
  ck.meta.block = 3;
  ck.meta.expand = 1.5;
  ck.meta.dropout = 0.25;
  ck.meta.reduction = 2;
  ck.meta.task = "teacher";
  ck.meta.seed = 0xFEDCBA9876543210ull;  // above INT64_MAX: must survive the
                                         // int64 attribute
  ck.meta.step = 17;
  ck.meta.batch = 3;
  ck.meta.seq = 12;
  ck.meta.queries = 5;
  ck.meta.steps = 40;
  ck.meta.lr = 0.01;
  ck.meta.warmup = 4;
  ck.meta.clip = 0.5;
  ck.meta.data = "synthetic";
  // Values that are not round in binary, and a denormal, so only a bit-exact
  // path passes.
  const Tensor w = Tensor::randn({8, 4, 3}, 7, 0, 0.0, 1.0 / 3.0);
  const Tensor b = Tensor::from_vector({0.1, -1e-40, 3.0, 1.0 / 7.0, 0, 0, 0, 0}, {8});
  const Tensor pos = Tensor::rand({2, 3, 4}, 9);
  ck.params = {
      {"k_compress.conv.weight", w}, {"k_compress.conv.bias", b}, {"k_intrablock_positions", pos}};
  ck.has_optim = true;
  ck.optim.step = 17;
  for (const auto& [key, t] : ck.params) {
    ck.optim.exp_avg.emplace_back(key, Tensor::randn(t.shape(), 11, 1));
    ck.optim.exp_avg_sq.emplace_back(key, Tensor::rand(t.shape(), 11, 2));
  }
  ck.optim.lr = 3.3e-4;
  ck.optim.weight_decay = 0.05;
  ck.optim.decoupled = true;
  ck.rng["data_position"] = {17};
  ck.rng["dropout"] = {0, 123456789012345ull, std::numeric_limits<uint64_t>::max()};
  const double nan = std::numeric_limits<double>::quiet_NaN();
  ck.metrics.append({1, 0.5, nan, 1e-3, 2.0, 0.01});
  ck.metrics.append({2, 0.25, 0.3, 2e-3, 1.5, 0.02});
  return ck;
}

void check_same(const train::NamedTensors& a, const train::NamedTensors& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].first == b[i].first);
    CHECK(a[i].second.shape() == b[i].second.shape());
    CHECK(a[i].second.dtype() == DType::f32);
    CHECK(a[i].second.to_vector() == b[i].second.to_vector());
  }
}

// Sorts by key, as a file lists them: the reader returns /params in name order.
train::NamedTensors sorted(train::NamedTensors v) {
  std::sort(v.begin(), v.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  return v;
}

TEST_CASE("checkpoint: SPEC section 6 layout, read with the plain HDF5 wrapper") {
  test::TempDir dir("ckpt_layout");
  const std::string path = dir / "checkpoint.h5";
  const Checkpoint ck = sample_checkpoint();
  train::save_checkpoint(path, ck);

  H5File f = H5File::open(path, H5Mode::read);
  CHECK(f.attr_string("/", "format") == "kvcompress-checkpoint");
  CHECK(f.attr_int64("/", "format_version") == 1);
  CHECK(f.attr_string("/", "compressor") == "conv");
  CHECK(f.attr_int64("/", "heads") == 2);
  CHECK(f.attr_int64("/", "dim_head") == 4);
  CHECK(f.attr_int64("/", "block") == 3);
  CHECK(f.attr_double("/", "expand") == 1.5);
  CHECK(f.attr_double("/", "dropout") == 0.25);
  CHECK(f.attr_int64("/", "reduction") == 2);
  CHECK(f.attr_string("/", "task") == "teacher");
  CHECK(f.has_attr("/", "seed"));
  CHECK(f.attr_int64("/", "step") == 17);
  const std::string created = f.attr_string("/", "created");
  // ISO 8601 UTC: 2025-03-01T12:34:56Z
  REQUIRE(created.size() == 20);
  CHECK(created[4] == '-');
  CHECK(created[10] == 'T');
  CHECK(created[19] == 'Z');
  CHECK(f.attr_string("/", "kvcompress_version") == KVC_VERSION);

  CHECK(f.list("/params") == std::vector<std::string>{"k_compress.conv.bias",
                                                      "k_compress.conv.weight",
                                                      "k_intrablock_positions"});
  CHECK(f.type_name("/params/k_compress.conv.weight") == "float32");
  CHECK(f.shape("/params/k_compress.conv.weight") == Shape{8, 4, 3});
  CHECK(f.type_name("/optim/step") == "int64");
  CHECK(f.shape("/optim/step").empty());
  CHECK(f.read_scalar_int64("/optim/step") == 17);
  CHECK(f.is_dataset("/optim/exp_avg/k_intrablock_positions"));
  CHECK(f.is_dataset("/optim/exp_avg_sq/k_compress.conv.bias"));
  for (const char* a : {"lr", "beta1", "beta2", "eps", "weight_decay"}) {
    CHECK_MESSAGE(f.has_attr("/optim", a), a);
  }
  CHECK(f.attr_double("/optim", "weight_decay") == 0.05);
  CHECK(f.is_group("/rng"));
  for (const char* m : {"step", "loss", "eval_loss", "lr"}) {
    CHECK_MESSAGE(f.is_dataset(std::string("/metrics/") + m), m);
  }
  CHECK(f.read_int64s("/metrics/step") == std::vector<int64_t>{1, 2});
  CHECK(f.read_doubles("/metrics/loss") == std::vector<double>{0.5, 0.25});
  // The written file is the only thing left in the folder: the temp file was
  // renamed.
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path)) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 1);
}

TEST_CASE(
    "checkpoint: save then load is bit exact for params, moments, rng, "
    "metrics") {
  test::TempDir dir("ckpt_roundtrip");
  const std::string path = dir / "ck.h5";
  const Checkpoint ck = sample_checkpoint();
  train::save_checkpoint(path, ck);
  const Checkpoint r = train::load_checkpoint(path);
  CHECK(r.meta.compressor == "conv");
  CHECK(r.meta.seed == ck.meta.seed);
  CHECK(r.meta.step == 17);
  CHECK(r.meta.expand == 1.5);
  CHECK(r.meta.batch == 3);
  CHECK(r.meta.seq == 12);
  CHECK(r.meta.queries == 5);
  CHECK(r.meta.steps == 40);
  CHECK(r.meta.lr == 0.01);
  CHECK(r.meta.warmup == 4);
  CHECK(r.meta.clip == 0.5);
  check_same(r.params, sorted(ck.params));
  REQUIRE(r.has_optim);
  CHECK(r.optim.step == 17);
  check_same(r.optim.exp_avg, sorted(ck.optim.exp_avg));
  check_same(r.optim.exp_avg_sq, sorted(ck.optim.exp_avg_sq));
  CHECK(r.optim.lr == 3.3e-4);
  CHECK(r.optim.beta1 == 0.9);
  CHECK(r.optim.beta2 == 0.999);
  CHECK(r.optim.eps == 1e-8);
  CHECK(r.optim.decoupled);
  CHECK(r.rng == ck.rng);
  REQUIRE(r.metrics.size() == 2);
  CHECK(std::isnan(r.metrics.rows()[0].eval_loss));
  CHECK(r.metrics.rows()[1].eval_loss == 0.3);
  CHECK(r.metrics.rows()[1].grad_norm == 1.5);
  CHECK(r.metrics.rows()[1].elapsed == 0.02);

  const Checkpoint no_optim = train::load_checkpoint(path, /*with_optim=*/false);
  CHECK_FALSE(no_optim.has_optim);
  CHECK(no_optim.params.size() == 3);
}

TEST_CASE("checkpoint: a failed save leaves the old file intact and no temp file") {
  test::TempDir dir("ckpt_fail");
  const std::string path = dir / "checkpoint.h5";
  Checkpoint ck = sample_checkpoint();
  train::save_checkpoint(path, ck);
  const std::string before = test::read_text(path);

  Checkpoint bad = ck;
  bad.meta.step = 99;
  bad.params.emplace_back("bad/key", Tensor::zeros({1}));  // rejected mid-write
  CHECK_THROWS_WITH_AS(train::save_checkpoint(path, bad), doctest::Contains("bad/key"), Error);
  CHECK(test::read_text(path) == before);
  CHECK(train::load_checkpoint(path).meta.step == 17);
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path)) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 1);

  // A folder that does not exist: one-line error naming the target.
  CHECK_THROWS_WITH_AS(train::save_checkpoint(dir / "no/such/dir/ck.h5", ck),
                       doctest::Contains("no/such/dir/ck.h5"), Error);
}

TEST_CASE("checkpoint: missing, corrupt and foreign files give one-line errors") {
  test::TempDir dir("ckpt_errors");
  auto message = [](const std::string& p) {
    try {
      train::load_checkpoint(p);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string missing = message(dir / "missing.h5");
  CHECK(missing.find("missing.h5") != std::string::npos);
  CHECK(missing.find("No such file") != std::string::npos);

  test::write_text(dir / "garbage.h5", "this is not an HDF5 file at all \x01\x02\x03");
  const std::string garbage = message(dir / "garbage.h5");
  CHECK(garbage.find("garbage.h5") != std::string::npos);
  CHECK(garbage.find("not a readable HDF5 file") != std::string::npos);

  // A truncated real checkpoint (what a non-atomic writer would leave after a
  // kill).
  train::save_checkpoint(dir / "good.h5", sample_checkpoint());
  const std::string good = test::read_text(dir / "good.h5");
  test::write_text(dir / "truncated.h5", good.substr(0, good.size() / 2));
  CHECK(message(dir / "truncated.h5").find("truncated.h5") != std::string::npos);

  {
    H5File f = H5File::open(dir / "foreign.h5", H5Mode::create);
    f.write("/k", Tensor::zeros({1, 2, 8, 4}));
  }
  CHECK(message(dir / "foreign.h5").find("is not a kvcompress checkpoint") != std::string::npos);

  {
    H5File f = H5File::open(dir / "other.h5", H5Mode::create);
    f.set_attr("/", "format", "something-else");
  }
  CHECK(message(dir / "other.h5").find("'something-else'") != std::string::npos);

  test::write_text(dir / "future.h5", good);
  {
    H5File f = H5File::open(dir / "future.h5", H5Mode::read_write);
    f.set_attr("/", "format_version", int64_t{2});
  }
  CHECK(message(dir / "future.h5").find("format_version 2") != std::string::npos);

  test::write_text(dir / "noattr.h5", good);
  {
    H5File f = H5File::open(dir / "noattr.h5", H5Mode::read_write);
    f.set_attr("/", "format", "kvcompress-checkpoint");
    f.remove("/optim");
  }
  // Weights only: a valid checkpoint (inspect, eval, infer); resuming it is refused by the
  // trainer (tests/test_reliability.cpp).
  CHECK(message(dir / "noattr.h5") == "no error");
  CHECK_FALSE(train::load_checkpoint(dir / "noattr.h5").has_optim);
  CHECK_NOTHROW(train::load_checkpoint(dir / "noattr.h5", /*with_optim=*/false));

  for (const std::string& m : {missing, garbage}) CHECK(m.find('\n') == std::string::npos);
}

}  // namespace
}  // namespace kvc
