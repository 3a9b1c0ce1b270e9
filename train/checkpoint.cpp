// Checkpoint HDF5 layout (SPEC section 6), written through a temp file and
// rename().
#include "train/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>
#include <functional>
#include <type_traits>
#include <variant>

#include "base/error.h"
#include "data/atomic_file.h"
#include "data/h5file.h"

#ifndef KVC_VERSION
#define KVC_VERSION "unknown"
#endif

namespace kvc::train {

namespace {

void write_named(H5File& f, const std::string& group, const NamedTensors& tensors) {
  f.create_group(group);
  for (const auto& [key, t] : tensors) {
    KVC_CHECK(t.defined(), "checkpoint: tensor '", key, "' is undefined");
    KVC_CHECK(!key.empty() && key.find('/') == std::string::npos, "checkpoint: bad key '", key,
              "' (keys may not be empty or contain '/')");
    f.write(group + "/" + key, t, DType::f32);
  }
}

NamedTensors read_named(const H5File& f, const std::string& group) {
  NamedTensors out;
  for (const std::string& key : f.list(group)) {
    const std::string p = group + "/" + key;
    KVC_CHECK(f.is_dataset(p), "checkpoint: ", f.path(), ": ", p, " is not a dataset");
    const std::string type = f.type_name(p);
    KVC_CHECK(type == "float32" || type == "float64" || type == "float16", "checkpoint: ", f.path(),
              ": ", p, " has element type ", type, ", expected float32");
    out.emplace_back(key, f.read(p, DType::f32));
    const int64_t bad = find_non_finite(out.back().second);
    KVC_CHECK(bad < 0, "checkpoint: ", f.path(), ": ", p, " holds a non-finite value (",
              bad < 0 ? 0.0 : out.back().second.to_vector()[static_cast<size_t>(bad)],
              " at element ", bad, ")");
  }
  return out;
}

// A root attribute the format requires, read with get(f, "/", name).
template <typename Get>
auto required_attr(const H5File& f, const char* name, Get get) {
  KVC_CHECK(f.has_attr("/", name), "checkpoint: ", f.path(), " lacks the root attribute '", name,
            "'");
  return get(f, "/", name);
}

std::string attr_str(const H5File& f, const char* name) {
  return required_attr(f, name, std::mem_fn(&H5File::attr_string));
}

int64_t attr_int(const H5File& f, const char* name) {
  return required_attr(f, name, std::mem_fn(&H5File::attr_int64));
}

// Called from a catch block: rethrows an error that already names the checkpoint as it is, and
// any other (an HDF5 or tensor error) as "checkpoint: <context>: <its message>".
[[noreturn]] void rethrow_in_context(const Error& e, const std::string& context) {
  const std::string msg = e.what();
  if (msg.rfind("checkpoint:", 0) == 0) throw;
  KVC_FAIL("checkpoint: ", context, ": ", msg);
}

H5File open_checked(const std::string& path) {
  struct stat st {};
  KVC_CHECK(::stat(path.c_str(), &st) == 0, "checkpoint: cannot open ", path, ": ",
            std::strerror(errno));
  KVC_CHECK(S_ISREG(st.st_mode), "checkpoint: ", path, " is not a regular file");
  try {
    return H5File::open(path, H5Mode::read);
  } catch (const Error& e) {
    KVC_FAIL("checkpoint: ", path, " is not a readable HDF5 file (", e.what(), ")");
  }
}

// The stored settings as root attributes, each of the attribute's own HDF5 type (a seed above
// INT64_MAX is kept bit for bit as int64).
void write_settings(H5File& f, const RunSettings& r) {
  for (const Setting& s : settings_table()) {
    if (s.stored == Stored::no) continue;
    std::visit(
        [&](auto member) {
          using T = std::decay_t<decltype(r.*member)>;
          if constexpr (std::is_same_v<T, uint64_t> || std::is_same_v<T, bool>) {
            f.set_attr("/", s.attribute, static_cast<int64_t>(r.*member));
          } else {
            f.set_attr("/", s.attribute, r.*member);
          }
        },
        s.member);
  }
}

// Reads every stored setting; a required one must be there, an optional one absent from an
// older file takes the table's fallback (or the default).
void read_settings(const H5File& f, RunSettings& r) {
  for (const Setting& s : settings_table()) {
    if (s.stored == Stored::no) continue;
    if (!f.has_attr("/", s.attribute)) {
      KVC_CHECK(s.stored == Stored::optional, "checkpoint: ", f.path(),
                " lacks the root attribute '", s.attribute, "'");
      if (s.fallback) set_setting(r, s, s.fallback);
      continue;
    }
    std::visit(
        [&](auto member) {
          using T = std::decay_t<decltype(r.*member)>;
          if constexpr (std::is_same_v<T, std::string>) {
            r.*member = f.attr_string("/", s.attribute);
          } else if constexpr (std::is_same_v<T, double>) {
            r.*member = f.attr_double("/", s.attribute);
          } else {
            r.*member = static_cast<T>(f.attr_int64("/", s.attribute));
          }
        },
        s.member);
  }
}

CheckpointMeta read_meta(const H5File& f) {
  const std::string& path = f.path();
  KVC_CHECK(f.has_attr("/", "format"), "checkpoint: ", path,
            " is not a kvcompress checkpoint (no 'format' attribute)");
  const std::string format = f.attr_string("/", "format");
  KVC_CHECK(format == kCheckpointFormat, "checkpoint: ", path, " has format '", format,
            "', expected '", kCheckpointFormat, "'");
  const int64_t version = attr_int(f, "format_version");
  KVC_CHECK(version >= 1 && version <= kCheckpointFormatVersion, "checkpoint: ", path,
            " has format_version ", version, "; this kvcompress reads version ",
            kCheckpointFormatVersion);
  CheckpointMeta m;
  read_settings(f, m);
  m.step = attr_int(f, "step");
  m.created = attr_str(f, "created");
  m.kvcompress_version = attr_str(f, "kvcompress_version");
  KVC_CHECK(m.heads > 0 && m.dim_head > 0 && m.block > 0 && m.step >= 0, "checkpoint: ", path,
            " has bad shape attributes (heads ", m.heads, ", dim_head ", m.dim_head, ", block ",
            m.block, ", step ", m.step, ")");
  if (!f.has_attr("/", "steps")) m.steps = m.step;  // an older file: the run ended there
  KVC_CHECK(m.batch > 0 && m.seq > 0 && m.queries > 0 && m.step <= m.steps && m.warmup >= 0 &&
                std::isfinite(m.lr) && m.lr > 0 && std::isfinite(m.clip) && m.clip >= 0,
            "checkpoint: ", path, " has bad run attributes (batch ", m.batch, ", seq ", m.seq,
            ", queries ", m.queries, ", step ", m.step, " of ", m.steps, ", base_lr ", m.lr,
            ", warmup ", m.warmup, ", clip ", m.clip, ")");
  // Not run settings but the run's record (older files lack them): the eval's batch count and
  // where a resume re-planned the learning rate.
  if (f.has_attr("/", "eval_batches")) m.eval_batches = f.attr_int64("/", "eval_batches");
  if (f.has_attr("/", "lr_replan_step")) {
    m.lr_replan_step = f.attr_int64("/", "lr_replan_step");
    m.lr_replan_lr = f.attr_double("/", "lr_replan_lr");
  }
  KVC_CHECK(m.eval_batches > 0 && m.lr_replan_step >= 0 && m.lr_replan_step <= m.step &&
                std::isfinite(m.lr_replan_lr) && m.lr_replan_lr >= 0,
            "checkpoint: ", path, " has bad run attributes (eval_batches ", m.eval_batches,
            ", lr_replan_step ", m.lr_replan_step, ", lr_replan_lr ", m.lr_replan_lr, ")");
  return m;
}

// ---- /optim, /rng and /metrics: each group's layout in one place, written and read from it

// /optim's double attributes.
const std::vector<std::pair<const char*, double OptimState::*>>& optim_attributes() {
  static const std::vector<std::pair<const char*, double OptimState::*>> attributes = {
      {"lr", &OptimState::lr},
      {"beta1", &OptimState::beta1},
      {"beta2", &OptimState::beta2},
      {"eps", &OptimState::eps},
      {"weight_decay", &OptimState::weight_decay}};
  return attributes;
}

void write_optim(H5File& f, const OptimState& o) {
  f.create_group("/optim");
  f.write_scalar_int64("/optim/step", o.step);
  write_named(f, "/optim/exp_avg", o.exp_avg);
  write_named(f, "/optim/exp_avg_sq", o.exp_avg_sq);
  for (const auto& [name, field] : optim_attributes()) f.set_attr("/optim", name, o.*field);
  f.set_attr("/optim", "optimizer", o.decoupled ? "adamw" : "adam");
}

OptimState read_optim(const H5File& f) {
  OptimState o;
  o.step = f.read_scalar_int64("/optim/step");
  o.exp_avg = read_named(f, "/optim/exp_avg");
  o.exp_avg_sq = read_named(f, "/optim/exp_avg_sq");
  for (const auto& [name, field] : optim_attributes()) o.*field = f.attr_double("/optim", name);
  o.decoupled =
      f.has_attr("/optim", "optimizer") && f.attr_string("/optim", "optimizer") == "adamw";
  return o;
}

void write_rng(H5File& f, const RngStreams& rng) {
  f.create_group("/rng");
  for (const auto& [name, values] : rng) {
    f.write_int64s("/rng/" + name, std::vector<int64_t>(values.begin(), values.end()));
  }
}

RngStreams read_rng(const H5File& f) {
  RngStreams rng;
  for (const std::string& name : f.list("/rng")) {
    const std::vector<int64_t> bits = f.read_int64s("/rng/" + name);
    rng[name] = std::vector<uint64_t>(bits.begin(), bits.end());
  }
  return rng;
}

void write_metrics(H5File& f, const MetricsHistory& h) {
  f.create_group("/metrics");
  f.write_int64s("/metrics/step", h.steps());
  for (const MetricsColumn& c : metrics_columns()) {
    f.write_doubles(std::string("/metrics/") + c.name, h.column(c.field));
  }
  if (!h.resume_steps().empty()) f.write_int64s("/metrics/resumed_at", h.resume_steps());
}

// A column absent from an older file stays NaN.
MetricsHistory read_metrics(const H5File& f) {
  MetricsHistory h = MetricsHistory::with_steps(f.read_int64s("/metrics/step"));
  for (const MetricsColumn& c : metrics_columns()) {
    const std::string p = std::string("/metrics/") + c.name;
    if (f.has(p)) h.set_column(c, f.read_doubles(p));
  }
  if (f.has("/metrics/resumed_at")) h.set_resume_steps(f.read_int64s("/metrics/resumed_at"));
  return h;
}

}  // namespace

std::string iso8601_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void save_checkpoint(const std::string& path, const Checkpoint& ck) {
  const std::string tmp = temp_path_for(path);
  try {
    H5File f = H5File::open(tmp, H5Mode::create);
    const CheckpointMeta& m = ck.meta;
    f.set_attr("/", "format", kCheckpointFormat);
    f.set_attr("/", "format_version", kCheckpointFormatVersion);
    write_settings(f, m);
    f.set_attr("/", "step", m.step);
    f.set_attr("/", "created", m.created.empty() ? iso8601_now() : m.created);
    f.set_attr("/", "kvcompress_version",
               m.kvcompress_version.empty() ? std::string(KVC_VERSION) : m.kvcompress_version);
    f.set_attr("/", "eval_batches", m.eval_batches);
    if (m.lr_replan_step > 0) {
      f.set_attr("/", "lr_replan_step", m.lr_replan_step);
      f.set_attr("/", "lr_replan_lr", m.lr_replan_lr);
    }

    write_named(f, "/params", ck.params);

    if (ck.has_optim) write_optim(f, ck.optim);
    write_rng(f, ck.rng);
    write_metrics(f, ck.metrics);

    f.flush();
    f.close();
    publish_file(tmp, path, "checkpoint");
  } catch (const Error& e) {
    ::unlink(tmp.c_str());
    rethrow_in_context(e, "cannot write " + path);
  }
}

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  try {
    return read_meta(open_checked(path));
  } catch (const Error& e) {
    rethrow_in_context(e, path + " is damaged");
  }
}

Checkpoint load_checkpoint(const std::string& path, bool with_optim) {
  try {
    H5File f = open_checked(path);
    Checkpoint ck;
    ck.meta = read_meta(f);
    KVC_CHECK(f.is_group("/params"), "checkpoint: ", path, " has no /params group");
    ck.params = read_named(f, "/params");
    KVC_CHECK(!ck.params.empty(), "checkpoint: ", path, " has no parameters under /params");

    if (with_optim && f.is_group("/optim")) {  // weights-only files are valid, not resumable
      ck.has_optim = true;
      ck.optim = read_optim(f);
      KVC_CHECK(ck.optim.exp_avg.size() == ck.params.size() &&
                    ck.optim.exp_avg_sq.size() == ck.params.size(),
                "checkpoint: ", path, " has ", ck.params.size(), " parameters but ",
                ck.optim.exp_avg.size(), " exp_avg and ", ck.optim.exp_avg_sq.size(),
                " exp_avg_sq tensors");
    }
    if (f.is_group("/rng")) ck.rng = read_rng(f);
    if (f.is_group("/metrics") && f.has("/metrics/step")) ck.metrics = read_metrics(f);
    return ck;
  } catch (const Error& e) {
    rethrow_in_context(e, path + " is damaged");
  }
}

}  // namespace kvc::train
