// `train --config-file`: OUT/config.toml reproduces a run bit for bit, flags on the command line
// override the file, and a bad file gets one line naming the key.
#include <cstring>
#include <filesystem>

#include "test_train_util.h"
#include "train/checkpoint.h"

namespace kvc {
namespace {

using test::RunResult;
using test::TempDir;

RunResult train_run(const std::string& args, const TempDir& dir) {
  return test::run_kvcompress("train --progress none " + args, dir.path);
}

// Every parameter of the two checkpoints, same keys, same bytes.
void check_same_params(const std::string& a_path, const std::string& b_path) {
  const train::Checkpoint a = train::load_checkpoint(a_path, false);
  const train::Checkpoint b = train::load_checkpoint(b_path, false);
  REQUIRE(a.params.size() == b.params.size());
  for (size_t i = 0; i < a.params.size(); ++i) {
    INFO(a.params[i].first);
    REQUIRE(a.params[i].first == b.params[i].first);
    const Tensor& x = a.params[i].second;
    const Tensor& y = b.params[i].second;
    REQUIRE(x.shape() == y.shape());
    CHECK(std::memcmp(x.data<float>(), y.data<float>(), x.numel() * sizeof(float)) == 0);
  }
}

// The value of `key` in a TOML file written as "key = value" lines.
std::string toml_value(const std::string& toml, const std::string& key) {
  const std::string start = key + " = ";
  size_t at = toml.rfind("\n" + start);
  if (at == std::string::npos) return "";
  at += 1 + start.size();
  return toml.substr(at, toml.find('\n', at) - at);
}

TEST_CASE("config: OUT/config.toml trains the same run again, bit for bit") {
  TempDir dir("config_roundtrip");
  // Settings away from their defaults, including a float, a text and the seed.
  const std::string flags =
      "--device cpu --compressor enhanced_mlp --dropout 0.1 --expand 0.75 --seq 48 --queries 8 "
      "--steps 12 --warmup 3 --lr 0.0025 --seed 7 --eval-every 4 --clip 0.5";
  RunResult r = train_run(flags + " --out " + dir / "a", dir);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const std::string toml = test::read_text(dir / "a/config.toml");
  INFO(toml);
  CHECK(toml_value(toml, "compressor") == "'enhanced_mlp'");
  CHECK(toml_value(toml, "lr") == "0.0025");
  CHECK(toml_value(toml, "expand") == "0.75");
  CHECK(toml_value(toml, "seed") == "7");
  CHECK(toml_value(toml, "device") == "'cpu'");
  // Settings left at their defaults are written too: the file does not depend on them.
  CHECK(toml_value(toml, "heads") == "2");
  CHECK(toml_value(toml, "weight-decay") == "0.0");

  r = train_run("--config-file " + dir / "a/config.toml --out " + dir / "b", dir);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  check_same_params(dir / "a/checkpoint.h5", dir / "b/checkpoint.h5");
  CHECK(test::read_text(dir / "b/config.toml") == toml);

  // A flag on the command line wins over the file, and the new run's file records it.
  r = train_run("--config-file " + dir / "a/config.toml --steps 5 --out " + dir / "c", dir);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(train::read_checkpoint_meta(dir / "c/checkpoint.h5").step == 5);
  CHECK(train::read_checkpoint_meta(dir / "c/checkpoint.h5").seed == 7);
  CHECK(toml_value(test::read_text(dir / "c/config.toml"), "steps") == "5");
}

TEST_CASE("config: keys may use the flag's dashes or the setting's underscores") {
  TempDir dir("config_keys");
  test::write_text(dir / "run.toml", "dim_head = 16\nsteps = 2\neval-every = 0\nseq = 32\n");
  const RunResult r =
      train_run("--device cpu --config-file " + dir / "run.toml --out " + dir / "a", dir);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const train::CheckpointMeta m = train::read_checkpoint_meta(dir / "a/checkpoint.h5");
  CHECK(m.dim_head == 16);
  CHECK(m.step == 2);
}

TEST_CASE("config: a bad file is a usage error naming the file and the key") {
  TempDir dir("config_bad");
  const std::string out = " --out " + dir / "never";
  auto run_with = [&](const std::string& toml) {
    test::write_text(dir / "run.toml", toml);
    return train_run("--config-file " + dir / "run.toml" + out, dir);
  };
  test::expect_error(run_with("steps = 3\nbogus = 1\n"), 2,
                     {"run.toml", "'bogus'", "train --help"});
  test::expect_error(run_with("lr = -1\n"), 2, {"run.toml", "'lr'", "-1", "not positive"});
  test::expect_error(run_with("steps = 'many'\n"), 2, {"'steps'", "many", "not a number"});
  test::expect_error(run_with("compressor = 'nope'\n"), 2, {"'compressor'", "nope"});
  test::expect_error(run_with("[train]\nsteps = 3\n"), 2, {"section [train]"});
  test::expect_error(train_run("--config-file " + dir / "missing.toml" + out, dir), 2,
                     {"--config-file", "missing.toml"});
  CHECK(!std::filesystem::exists(dir / "never/checkpoint.h5"));
}

}  // namespace
}  // namespace kvc
