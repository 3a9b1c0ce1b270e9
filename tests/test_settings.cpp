// Tests of the settings table: every stored setting round-trips through a checkpoint under its
// attribute, older files take the documented fallbacks, ranges are checked with the flag named.
#include <hdf5.h>

#include <string>

#include "data/h5file.h"
#include "test_train_util.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/settings.h"

namespace kvc {
namespace {

using train::Setting;
using train::Stored;

// Distinct non-default values for every setting, written as text through the table.
train::CheckpointMeta unusual_meta() {
  train::CheckpointMeta m;
  const char* values[][2] = {{"compressor", "enhanced_mlp"},
                             {"expand", "1.75"},
                             {"dropout", "0.3"},
                             {"reduction", "4"},
                             {"heads", "3"},
                             {"dim_head", "12"},
                             {"block", "5"},
                             {"stride", "3"},
                             {"query_heads", "2"},
                             {"causal", "true"},
                             {"topk", "4"},
                             {"seq", "40"},
                             {"batch", "6"},
                             {"queries", "7"},
                             {"task", "teacher"},
                             {"data", "kv.h5"},
                             {"steps", "90"},
                             {"lr", "0.0125"},
                             {"warmup", "9"},
                             {"clip", "0.75"},
                             {"seed", "18446744073709551615"}};
  for (const auto& [name, text] : values) train::set_setting(m, train::setting(name), text);
  m.step = 11;
  return m;
}

TEST_CASE("settings: every stored setting round-trips through a checkpoint under its attribute") {
  test::TempDir dir("settings");
  train::Checkpoint ck;
  ck.meta = unusual_meta();
  ck.params = {{"w", Tensor::ones({2})}};
  train::save_checkpoint(dir / "ck.h5", ck);
  const train::CheckpointMeta back = train::read_checkpoint_meta(dir / "ck.h5");
  const H5File f = H5File::open(dir / "ck.h5", H5Mode::read);
  int stored = 0;
  for (const Setting& s : train::settings_table()) {
    INFO(s.name);
    if (s.stored == Stored::no) {
      CHECK(s.attribute == nullptr);
      continue;
    }
    ++stored;
    CHECK(f.has_attr("/", s.attribute));
    CHECK(train::setting_text(back, s) == train::setting_text(ck.meta, s));
  }
  CHECK(stored == 21);  // SPEC section 6's attributes and the run settings the file records
  CHECK(f.attr_double("/", "base_lr") == 0.0125);  // lr is stored as base_lr
  CHECK(back.seed == 18446744073709551615ull);
}

TEST_CASE("settings: a file without the optional attributes takes the older format's values") {
  test::TempDir dir("settings_old");
  train::Checkpoint ck;
  ck.meta = unusual_meta();
  ck.params = {{"w", Tensor::ones({2})}};
  train::save_checkpoint(dir / "ck.h5", ck);
  const hid_t file = H5Fopen((dir / "ck.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  REQUIRE(file >= 0);
  for (const Setting& s : train::settings_table()) {
    if (s.stored == Stored::optional) CHECK(H5Adelete(file, s.attribute) >= 0);
  }
  H5Fclose(file);
  const train::CheckpointMeta m = train::read_checkpoint_meta(dir / "ck.h5");
  CHECK(m.compressor == "enhanced_mlp");  // required ones stay
  CHECK(m.seq == 256);                    // the small defaults
  CHECK(m.batch == 2);
  CHECK(m.queries == 32);
  CHECK(m.lr == 1e-3);
  CHECK(m.warmup == 0);  // an older run had no warmup or clipping recorded
  CHECK(m.clip == 0);
  CHECK(m.data == "synthetic");
  CHECK(m.steps == 11);  // the run ended at its step
  CHECK(m.stride == 0);  // disjoint blocks, non-causal, one query head per KV head, top 16
  CHECK(!m.causal);
  CHECK(m.query_heads == 1);
  CHECK(m.topk == 16);
}

TEST_CASE("settings: ranges are checked with the flag and the value named") {
  auto bad = [](const char* name, const char* text, const std::string& why) {
    train::RunSettings r;
    train::set_setting(r, train::setting(name), text);
    test::check_error([&] { train::validate_settings(r); },
                      {train::setting_flag(train::setting(name)), text, why});
  };
  bad("lr", "-1", "not positive");
  bad("dropout", "1", "not in [0, 1)");
  bad("warmup", "-2", "not zero or more");
  bad("compressor", "nope", "not a compressor kind");
  bad("task", "nope", "not one of");
  bad("stride", "-1", "not positive");
  bad("query_heads", "0", "not positive");
  bad("topk", "0", "not positive");
  CHECK(train::check_setting_text(train::setting("causal"), "maybe") ==
        "'maybe' is not true or false");
  train::RunSettings r;
  CHECK_NOTHROW(train::validate_settings(r));
  CHECK(train::check_setting_text(train::setting("steps"), "1.5") == "'1.5' is not a whole number");
  CHECK(train::check_setting_text(train::setting("lr"), "abc") == "'abc' is not a number");
  CHECK(train::setting_flag(train::setting("dim_head")) == "--dim-head");
  test::check_error([&] { train::set_setting(r, train::setting("heads"), "x"); }, {"--heads", "x"});
  r.seq = 4;
  test::check_error([&] { train::validate_settings(r); }, {"seq 4", "block", "8"});
  r.seq = 64;
  r.stride = 9;
  test::check_error([&] { train::validate_settings(r); }, {"--stride 9", "block", "8"});
  CHECK(train::settings_summary(train::RunSettings{}, train::SettingGroup::model) ==
        "compressor conv, expand 1, dropout 0, reduction 2");
  // The shape leaves out the unset stride; the kind can be left out (compare names several).
  CHECK(train::settings_summary(train::RunSettings{}, train::SettingGroup::shape).find("stride") ==
        std::string::npos);
  r = train::RunSettings{};
  r.stride = 4;
  CHECK(train::settings_summary(r, train::SettingGroup::shape).find("stride 4") !=
        std::string::npos);
  CHECK(train::settings_summary(r, train::SettingGroup::model, false) ==
        "expand 1, dropout 0, reduction 2");
}

}  // namespace
}  // namespace kvc
