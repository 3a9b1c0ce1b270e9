// Tests of data/: the synthetic generator's determinism and statistics, KV files and H5KVDataset.
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "core/ops.h"
#include "data/h5_dataset.h"
#include "data/h5file.h"
#include "data/kv_file.h"
#include "data/synthetic.h"
#include "test_util.h"

namespace kvc {
namespace {

using test::max_abs_diff;

// A path under the build folder, removed (with any temp sibling) when the test ends.
struct TempPath {
  std::string path;
  explicit TempPath(const std::string& name)
      : path(std::string(KVC_BINARY_DIR) + "/datatest_" + std::to_string(::getpid()) + "_" + name) {
    std::remove(path.c_str());
  }
  ~TempPath() { std::remove(path.c_str()); }
};

bool same_values(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.to_vector() == b.to_vector();
}

KVShape tiny_shape() {
  KVShape s;
  s.batch = 2;
  s.heads = 2;
  s.dim_head = 8;
  s.seq = 16;
  s.queries = 4;
  return s;
}

// Row r (first axis) of t as doubles.
std::vector<double> row_of(const Tensor& t, int64_t r) {
  const std::vector<double> all = t.to_vector();
  const int64_t n = t.numel() / t.size(0);
  return std::vector<double>(all.begin() + r * n, all.begin() + (r + 1) * n);
}

// ---- synthetic ---------------------------------------------------------------------------

TEST_CASE("data: synthetic batches are a pure function of (seed, split, index)") {
  const KVShape s = tiny_shape();
  SyntheticKV a(s, 42), b(s, 42);
  const Batch a3 = a.batch_at(3), b3 = b.batch_at(3);
  CHECK(a3.k.shape() == Shape{2, 2, 16, 8});
  CHECK(a3.v.shape() == Shape{2, 2, 16, 8});
  CHECK(a3.q.shape() == Shape{2, 2, 4, 8});
  CHECK(same_values(a3.k, b3.k));
  CHECK(same_values(a3.v, b3.v));
  CHECK(same_values(a3.q, b3.q));

  // next() walks the indices; set_position resumes the same stream.
  CHECK(same_values(a.next().k, a.batch_at(0).k));
  CHECK(same_values(a.next().q, a.batch_at(1).q));
  CHECK(a.position() == 2);
  b.set_position(7);
  CHECK(same_values(b.next().v, a.batch_at(7).v));

  // Another index, split or seed gives other data; the maps depend on the seed only.
  SyntheticKV eval(s, 42, Device::cpu(), DType::f32, Split::eval);
  SyntheticKV other(s, 43);
  CHECK_FALSE(same_values(a.batch_at(4).k, a3.k));
  CHECK_FALSE(same_values(eval.batch_at(3).k, a3.k));
  CHECK_FALSE(same_values(eval.batch_at(3).q, a3.q));
  CHECK_FALSE(same_values(other.batch_at(3).k, a3.k));
  CHECK(same_values(eval.map_k(), a.map_k()));
  CHECK(same_values(eval.map_q(), a.map_q()));
  CHECK_FALSE(same_values(other.map_k(), a.map_k()));
  CHECK_FALSE(same_values(a.map_k(), a.map_v()));

  // float64 draws the same numbers (to float precision).
  SyntheticKV d(s, 42, Device::cpu(), DType::f64);
  CHECK(d.batch_at(3).k.dtype() == DType::f64);
  CHECK(max_abs_diff(d.batch_at(3).k.to_vector(), a3.k.to_vector()) < 1e-5);

  KVShape bad = s;
  bad.seq = 0;
  CHECK_THROWS_WITH_AS(SyntheticKV(bad, 1), doctest::Contains("seq 0"), Error);
}

TEST_CASE("data: synthetic latent is a stationary AR(1) with rho 0.9") {
  KVShape s;
  s.batch = 4;
  s.heads = 1;
  s.dim_head = 32;  // r = 8
  s.seq = 4096;
  SyntheticKV gen(s, 5);
  CHECK(gen.latent_dim() == 8);
  KVShape small_d = s;
  small_d.dim_head = 2;
  CHECK(SyntheticKV(small_d, 5).latent_dim() == 1);  // r = max(1, d / 4)

  const Tensor z = gen.latent_at(0);  // (b, seq, r)
  REQUIRE(z.shape() == Shape{4, 4096, 8});
  const std::vector<double> v = z.to_vector();
  const int64_t r = 8, n = 4096;
  double sum = 0, sq = 0, lag = 0, first_sq = 0;
  int64_t count = 0, lag_count = 0;
  for (int64_t b = 0; b < 4; ++b) {
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t j = 0; j < r; ++j) {
        const double x = v[static_cast<size_t>((b * n + t) * r + j)];
        sum += x;
        sq += x * x;
        ++count;
        if (t == 0) first_sq += x * x;
        if (t > 0) {
          lag += x * v[static_cast<size_t>((b * n + t - 1) * r + j)];
          ++lag_count;
        }
      }
    }
  }
  const double mean = sum / count, var = sq / count - mean * mean;
  // Stationary: every z_t is N(0, 1), so E z_t z_(t-1) = rho. With ~131k draws of effective
  // size ~7k (rho 0.9), the standard errors are ~0.01 (mean), ~0.02 (variance), ~0.005 (lag 1).
  CHECK(std::fabs(mean) < 0.06);
  CHECK(var == doctest::Approx(1.0).epsilon(0.08));
  CHECK(lag / lag_count / var == doctest::Approx(0.9).epsilon(0.02));
  (void)first_sq;
}

TEST_CASE("data: synthetic K, V, Q are the maps applied to the latent plus 0.1 noise") {
  KVShape s;
  s.batch = 2;
  s.heads = 2;
  s.dim_head = 32;  // r = 8
  s.seq = 256;
  s.queries = 32;
  SyntheticKV gen(s, 9);
  const int64_t b = s.batch, h = s.heads, n = s.seq, d = s.dim_head, nq = s.queries, r = 8;
  const Batch batch = gen.batch_at(2);
  const std::vector<double> z = gen.latent_at(2).to_vector();
  const std::vector<double> k = batch.k.to_vector(), vv = batch.v.to_vector(),
                            q = batch.q.to_vector();
  const std::vector<double> mk = gen.map_k().to_vector(), mv = gen.map_v().to_vector(),
                            mq = gen.map_q().to_vector();
  // map[h][j][c]: K[b,h,t,c] = sum_j z[b,t,j] map[h,j,c] + noise, written out by hand.
  auto clean = [&](const std::vector<double>& map, int64_t bi, int64_t hi, int64_t t, int64_t c) {
    double acc = 0;
    for (int64_t j = 0; j < r; ++j) {
      acc += z[static_cast<size_t>((bi * n + t) * r + j)] *
             map[static_cast<size_t>((hi * r + j) * d + c)];
    }
    return acc;
  };
  double res_k = 0, res_v = 0, k_sq = 0, expected_k_sq = 0;
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t hi = 0; hi < h; ++hi) {
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t c = 0; c < d; ++c) {
          const size_t i = static_cast<size_t>(((bi * h + hi) * n + t) * d + c);
          res_k += std::pow(k[i] - clean(mk, bi, hi, t, c), 2);
          res_v += std::pow(vv[i] - clean(mv, bi, hi, t, c), 2);
          k_sq += k[i] * k[i];
        }
      }
    }
  }
  const double cells = static_cast<double>(b * h * n * d);
  // The residual is the 0.1 noise: variance 0.01 over 32k draws (standard error ~1%).
  CHECK(res_k / cells == doctest::Approx(0.01).epsilon(0.05));
  CHECK(res_v / cells == doctest::Approx(0.01).epsilon(0.05));
  // Map entries are N(0, 1/r): E|A_h row|^2 = r * 1/r = 1, so E K^2 = 1 + 0.01 per element.
  double map_sq = 0;
  for (double x : mk) map_sq += x * x;
  CHECK(map_sq / static_cast<double>(mk.size()) == doctest::Approx(1.0 / r).epsilon(0.15));
  expected_k_sq = map_sq / static_cast<double>(h * d) + 0.01;  // the stored maps' exact value
  CHECK(k_sq / cells == doctest::Approx(expected_k_sq).epsilon(0.15));
  CHECK(k_sq / cells == doctest::Approx(1.01).epsilon(0.3));

  // Each query is C_h z_t + noise at one position t, the same for every head of a sequence:
  // find t by search (neighbours differ by ~0.2 per element, the noise is 0.01).
  double res_q = 0;
  std::set<int64_t> positions;
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t j = 0; j < nq; ++j) {
      int64_t best_t[2] = {-1, -1};
      for (int64_t hi = 0; hi < h; ++hi) {
        double best = std::numeric_limits<double>::infinity();
        for (int64_t t = 0; t < n; ++t) {
          double e = 0;
          for (int64_t c = 0; c < d; ++c) {
            const size_t i = static_cast<size_t>(((bi * h + hi) * nq + j) * d + c);
            e += std::pow(q[i] - clean(mq, bi, hi, t, c), 2);
          }
          if (e < best) {
            best = e;
            best_t[hi] = t;
          }
        }
        res_q += best;
      }
      CHECK(best_t[0] == best_t[1]);
      positions.insert(best_t[0]);
    }
  }
  CHECK(res_q / static_cast<double>(b * nq * h * d) == doctest::Approx(0.01).epsilon(0.2));
  CHECK(positions.size() > 40);  // 64 uniform draws from 256 positions: ~57 distinct
}

// ---- KV files ----------------------------------------------------------------------------

TEST_CASE("data: gen-data writes the synthetic stream, H5KVDataset reads it back") {
  TempPath file("gen.h5");
  const KVShape s = tiny_shape();
  generate_kv_file(file.path, s, 5, 11);  // batches 0, 1 and the first row of batch 2
  const KVFileInfo info = inspect_kv_file(file.path);
  CHECK(info.count == 5);
  CHECK(info.heads == 2);
  CHECK(info.seq == 16);
  CHECK(info.dim_head == 8);
  CHECK(info.queries == 4);
  CHECK(info.k_type == "float32");
  CHECK(info.q_type == "float32");

  SyntheticKV gen(s, 11);
  const H5File f = H5File::open(file.path, H5Mode::read);
  const Tensor k = f.read("k"), q = f.read("q"), v = f.read("v");
  const Batch b0 = gen.batch_at(0), b2 = gen.batch_at(2);
  CHECK(row_of(k, 0) == row_of(b0.k, 0));
  CHECK(row_of(v, 1) == row_of(b0.v, 1));
  CHECK(row_of(q, 1) == row_of(b0.q, 1));
  CHECK(row_of(k, 4) == row_of(b2.k, 0));
  CHECK(f.attr_int64("/", "seed") == 11);
  // Nothing but the file is left behind: no ".<name>.tmp-<pid>" beside it.
  const std::string temp_prefix =
      "." + std::filesystem::path(file.path).filename().string() + ".tmp-";
  int siblings = 0;
  for (const auto& e : std::filesystem::directory_iterator(KVC_BINARY_DIR)) {
    siblings += e.path().filename().string().rfind(temp_prefix, 0) == 0;
  }
  CHECK(siblings == 0);
}

TEST_CASE("data: H5KVDataset splits, batches and shuffles a file") {
  TempPath file("split.h5");
  KVShape s = tiny_shape();
  s.batch = 8;
  generate_kv_file(file.path, s, 40, 3);
  const H5File f = H5File::open(file.path, H5Mode::read);
  const Tensor all_k = f.read("k"), all_q = f.read("q");

  H5KVDataset train(file.path, 4, 17);
  CHECK(train.count() == 40);
  CHECK(train.eval_count() == 2);  // 5% of 40
  CHECK(train.train_count() == 38);
  CHECK(train.batches_per_epoch() == 9);  // floor(38 / 4)
  CHECK(train.queries() == 4);
  CHECK(train.shape().batch == 4);
  CHECK(train.shape().seq == 16);

  // Every batch holds exactly the file rows rows_of() names.
  for (uint64_t i : {0u, 5u, 12u}) {
    const std::vector<int64_t> rows = train.rows_of(i);
    const Batch b = train.batch_at(i);
    REQUIRE(rows.size() == 4);
    for (size_t j = 0; j < rows.size(); ++j) {
      CHECK(rows[j] < 38);
      CHECK(row_of(b.k, static_cast<int64_t>(j)) == row_of(all_k, rows[j]));
      CHECK(row_of(b.q, static_cast<int64_t>(j)) == row_of(all_q, rows[j]));
    }
  }

  // The shuffle is a permutation of the train split, new each epoch, fixed by the seed.
  std::vector<int64_t> p0 = train.permutation(0);
  const std::vector<int64_t> p1 = train.permutation(1);
  CHECK(p0 != p1);
  std::vector<int64_t> identity(38);
  std::iota(identity.begin(), identity.end(), int64_t{0});
  CHECK(p0 != identity);
  std::vector<int64_t> sorted0 = p0, sorted1 = p1;
  std::sort(sorted0.begin(), sorted0.end());
  std::sort(sorted1.begin(), sorted1.end());
  CHECK(sorted0 == identity);
  CHECK(sorted1 == identity);
  H5KVDataset again(file.path, 4, 17), reseeded(file.path, 4, 18);
  CHECK(again.permutation(1) == p1);
  CHECK(reseeded.permutation(1) != p1);
  // One epoch's batches are disjoint; batch 9 starts epoch 1.
  std::set<int64_t> seen;
  for (uint64_t i = 0; i < 9; ++i) {
    for (int64_t r : train.rows_of(i)) CHECK(seen.insert(r).second);
  }
  CHECK(train.rows_of(9) == std::vector<int64_t>(p1.begin(), p1.begin() + 4));

  // Resume: set_position continues the same stream.
  train.set_position(0);
  train.next();
  train.next();
  again.set_position(2);
  CHECK(same_values(train.next().k, again.next().k));

  // The eval split is the last 2 sequences in file order, in one batch of 2.
  H5KVDataset eval(file.path, 4, 17, Device::cpu(), DType::f32, Split::eval);
  CHECK(eval.batches_per_epoch() == 1);
  CHECK(eval.shape().batch == 2);
  CHECK(eval.rows_of(0) == std::vector<int64_t>{38, 39});
  CHECK(eval.rows_of(1) == std::vector<int64_t>{38, 39});
  CHECK(row_of(eval.batch_at(0).k, 1) == row_of(all_k, 39));

  // float64 reads convert.
  H5KVDataset f64_train(file.path, 4, 17, Device::cpu(), DType::f64);
  CHECK(f64_train.batch_at(0).k.dtype() == DType::f64);

  CHECK(H5KVDataset::eval_count_for(2) == 1);
  CHECK(H5KVDataset::eval_count_for(39) == 1);
  CHECK(H5KVDataset::eval_count_for(100) == 5);
  CHECK_THROWS_WITH_AS(H5KVDataset(file.path, 39, 0), doctest::Contains("fewer than batch 39"),
                       Error);
}

TEST_CASE("data: without q, queries are keys at random positions plus noise") {
  TempPath file("noq.h5");
  const KVShape s = tiny_shape();
  // Independent keys (std 2 for k, 0.5 for v), so the nearest key of a query is its source:
  // neighbouring keys differ by ~2 rms^2 per element, the query noise is 0.01 rms^2.
  const Tensor keys = Tensor::randn({4, s.heads, s.seq, s.dim_head}, 77, 0, 0.0, 2.0);
  const Tensor values = Tensor::randn({4, s.heads, s.seq, s.dim_head}, 77, 1, 0.0, 0.5);
  // 2 + 2 sequences, no q.
  KVFileWriter w(file.path, 4, s.heads, s.seq, s.dim_head, 0);
  w.append(Batch{keys, values, Tensor()}, 3);
  w.append(Batch{narrow(keys, 0, 3, 1), narrow(values, 0, 3, 1), Tensor()});
  w.commit();
  CHECK_FALSE(inspect_kv_file(file.path).has_queries());

  H5KVDataset ds(file.path, 2, 8, Device::cpu(), DType::f32, Split::train, 6);
  CHECK(ds.queries() == 6);
  CHECK_FALSE(ds.file_has_queries());
  const Batch b = ds.batch_at(0);
  REQUIRE(b.q.shape() == Shape{2, 2, 6, 8});
  const std::vector<double> k = b.k.to_vector(), q = b.q.to_vector();
  const int64_t h = 2, n = 16, d = 8, nq = 6;
  for (int64_t bi = 0; bi < 2; ++bi) {
    for (int64_t j = 0; j < nq; ++j) {
      int64_t best_t[2] = {-1, -1};
      for (int64_t hi = 0; hi < h; ++hi) {
        double rms_sq = 0;
        for (int64_t i = 0; i < n * d; ++i) {
          rms_sq += std::pow(k[static_cast<size_t>((bi * h + hi) * n * d + i)], 2);
        }
        rms_sq /= static_cast<double>(n * d);
        double best = std::numeric_limits<double>::infinity();
        for (int64_t t = 0; t < n; ++t) {
          double e = 0;
          for (int64_t c = 0; c < d; ++c) {
            e += std::pow(q[static_cast<size_t>(((bi * h + hi) * nq + j) * d + c)] -
                              k[static_cast<size_t>(((bi * h + hi) * n + t) * d + c)],
                          2);
          }
          if (e < best) {
            best = e;
            best_t[hi] = t;
          }
        }
        // noise std 0.1 * rms: squared distance ~ 0.01 * rms^2 * d (chi-square, 8 dof)
        CHECK(best / d < 0.05 * rms_sq);
        CHECK(best / d > 0.0005 * rms_sq);
      }
      CHECK(best_t[0] == best_t[1]);
    }
  }
  // Queries are fixed by (seed, split, index).
  H5KVDataset again(file.path, 2, 8, Device::cpu(), DType::f32, Split::train, 6);
  CHECK(same_values(again.batch_at(0).q, b.q));
}

// Writes k (and v) with HDF5's float16 type, as h5py does for numpy float16.
void write_float16_file(const std::string& path, const std::vector<float>& values,
                        const Shape& shape) {
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  REQUIRE(file >= 0);
  hid_t f16 = H5Tcopy(H5T_IEEE_F32LE);
  H5Tset_fields(f16, 15, 10, 5, 0, 10);
  H5Tset_size(f16, 2);
  H5Tset_ebias(f16, 15);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  for (const char* name : {"k", "v"}) {
    hid_t ds = H5Dcreate2(file, name, f16, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(ds >= 0);
    REQUIRE(H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) >= 0);
    H5Dclose(ds);
  }
  H5Sclose(space);
  H5Tclose(f16);
  H5Fclose(file);
}

TEST_CASE("data: float16 KV files are read and converted") {
  TempPath file("f16.h5");
  const Shape shape{3, 1, 4, 2};
  std::vector<float> values(24);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0.25f * static_cast<float>(i) - 2.5f;
  write_float16_file(file.path, values, shape);
  const KVFileInfo info = inspect_kv_file(file.path);
  CHECK(info.k_type == "float16");
  H5KVDataset ds(file.path, 2, 0, Device::cpu(), DType::f32, Split::train, 3);
  CHECK(ds.train_count() == 2);
  const std::vector<int64_t> rows = ds.rows_of(0);
  const Batch b = ds.batch_at(0);
  for (size_t j = 0; j < rows.size(); ++j) {
    // multiples of 1/4 below 4 in magnitude are exact in float16
    const std::vector<double> want(values.begin() + rows[j] * 8, values.begin() + rows[j] * 8 + 8);
    CHECK(row_of(b.k, static_cast<int64_t>(j)) == want);
    CHECK(row_of(b.v, static_cast<int64_t>(j)) == want);
  }
}

TEST_CASE("data: bad KV files fail with messages naming the file, dataset and values") {
  const Tensor good = Tensor::zeros({3, 1, 4, 2});
  SUBCASE("missing file") {
    TempPath file("missing.h5");
    CHECK_THROWS_WITH_AS(H5KVDataset(file.path, 1, 0),
                         doctest::Contains((file.path + "': no such file").c_str()), Error);
  }
  SUBCASE("not an HDF5 file") {
    TempPath file("text.h5");
    std::ofstream(file.path) << "not hdf5\n";
    CHECK_THROWS_WITH_AS(H5KVDataset(file.path, 1, 0), doctest::Contains(file.path.c_str()), Error);
  }
  SUBCASE("missing v") {
    TempPath file("nov.h5");
    H5File::open(file.path, H5Mode::create).write("k", good);
    CHECK_THROWS_WITH_AS(H5KVDataset(file.path, 1, 0), doctest::Contains("no dataset 'v'"), Error);
  }
  SUBCASE("wrong shape") {
    TempPath file("shape.h5");
    {
      H5File f = H5File::open(file.path, H5Mode::create);
      f.write("k", Tensor::zeros({3, 4}));
      f.write("v", Tensor::zeros({3, 4}));
    }
    CHECK_THROWS_WITH_AS(H5KVDataset(file.path, 1, 0),
                         doctest::Contains("dataset 'k' has shape (3, 4)"), Error);
  }
  SUBCASE("v differs from k") {
    TempPath file("vshape.h5");
    {
      H5File f = H5File::open(file.path, H5Mode::create);
      f.write("k", good);
      f.write("v", Tensor::zeros({3, 1, 5, 2}));
    }
    CHECK_THROWS_WITH_AS(H5KVDataset(file.path, 1, 0),
                         doctest::Contains("'v' has shape (3, 1, 5, 2) but 'k' has (3, 1, 4, 2)"),
                         Error);
  }
  SUBCASE("q of the wrong head size (its heads may be h * G)") {
    TempPath file("qshape.h5");
    {
      H5File f = H5File::open(file.path, H5Mode::create);
      f.write("k", good);
      f.write("v", good);
      f.write("q", Tensor::zeros({3, 2, 5, 3}));
    }
    CHECK_THROWS_WITH_AS(inspect_kv_file(file.path),
                         doctest::Contains("'q' has shape (3, 2, 5, 3)"), Error);
  }
  SUBCASE("q_pos of the wrong shape or type") {
    TempPath file("qpos.h5");
    {
      H5File f = H5File::open(file.path, H5Mode::create);
      f.write("k", good);
      f.write("v", good);
      f.write("q", Tensor::zeros({3, 2, 5, 2}));
      f.write_int64s("q_pos", {1, 2, 3});
    }
    CHECK_THROWS_WITH_AS(inspect_kv_file(file.path),
                         doctest::Contains("'q_pos' has shape (3,), expected (N, nq) = (3, 5)"),
                         Error);
  }
  SUBCASE("wrong dtype") {
    TempPath file("dtype.h5");
    {
      H5File f = H5File::open(file.path, H5Mode::create);
      f.write_int64s("k", std::vector<int64_t>(24, 1));
      f.write("v", good);
    }
    CHECK_THROWS_WITH_AS(H5KVDataset(file.path, 1, 0),
                         doctest::Contains("dataset 'k' holds int64, expected float32 or float16"),
                         Error);
  }
  SUBCASE("NaN in a sequence") {
    TempPath file("nan.h5");
    std::vector<double> values(3 * 8, 0.5);
    values[2 * 8 + 3] = std::nan("");  // sequence 2
    {
      H5File f = H5File::open(file.path, H5Mode::create);
      f.write("k", good);
      f.write("v", Tensor::from_vector(values, {3, 1, 4, 2}));
    }
    // Sequence 2 is the eval split (the last one); the train split reads cleanly.
    H5KVDataset train(file.path, 1, 0);
    CHECK_NOTHROW(train.batch_at(0));
    H5KVDataset eval(file.path, 1, 0, Device::cpu(), DType::f32, Split::eval);
    CHECK_THROWS_WITH_AS(eval.batch_at(0),
                         doctest::Contains(("'" + file.path + "': dataset 'v' sequence 2").c_str()),
                         Error);
  }
  SUBCASE("Inf") {
    TempPath file("inf.h5");
    std::vector<double> values(3 * 8, 0.5);
    values[5] = std::numeric_limits<double>::infinity();  // sequence 0
    {
      H5File f = H5File::open(file.path, H5Mode::create);
      f.write("k", Tensor::from_vector(values, {3, 1, 4, 2}));
      f.write("v", good);
    }
    const H5File f = H5File::open(file.path, H5Mode::read);
    CHECK_THROWS_WITH_AS(read_kv_rows(f, "k", 0, 3),
                         doctest::Contains("dataset 'k' sequence 0 holds a non-finite value (inf)"),
                         Error);
  }
}

TEST_CASE("data: KVFileWriter is atomic") {
  TempPath file("atomic.h5");
  const KVShape s = tiny_shape();
  const Batch b = SyntheticKV(s, 1).batch_at(0);
  std::string temp;
  {
    KVFileWriter w(file.path, 4, s.heads, s.seq, s.dim_head, s.queries);
    temp = w.temp_path();
    w.append(b);
    CHECK(std::filesystem::exists(temp));
    CHECK_FALSE(std::filesystem::exists(file.path));
    CHECK_THROWS_WITH_AS(w.commit(), doctest::Contains("only 2 of 4 sequences"), Error);
  }  // abandoned: the temp file goes, nothing appears at the path
  CHECK_FALSE(std::filesystem::exists(temp));
  CHECK_FALSE(std::filesystem::exists(file.path));

  CHECK_THROWS_WITH_AS(
      KVFileWriter(std::string(KVC_BINARY_DIR) + "/no_such_dir_kvc/x.h5", 1, 1, 1, 1, 0),
      doctest::Contains("no_such_dir_kvc' does not exist"), Error);
  KVFileWriter w(file.path, 1, s.heads, s.seq, s.dim_head, s.queries);
  CHECK_THROWS_WITH_AS(w.append(Batch{b.q, b.v, b.q}), doctest::Contains("do not match"), Error);
}

}  // namespace
}  // namespace kvc

namespace kvc {
namespace {

TEST_CASE("data: synthetic on CUDA draws the same batches as on the CPU") {
  KVC_REQUIRE_CUDA();
  const KVShape s = tiny_shape();
  SyntheticKV cpu(s, 21), gpu(s, 21, Device::cuda());
  // The same Philox streams; only the arithmetic (log/sin/cos, GEMM order) rounds differently.
  CHECK(test::rel_error(gpu.latent_at(5).to_vector(), cpu.latent_at(5).to_vector()) < 1e-5);
  const Batch a = cpu.batch_at(5), b = gpu.batch_at(5);
  CHECK(b.k.device() == Device::cuda());
  CHECK(test::rel_error(b.k.to_vector(), a.k.to_vector()) < 1e-5);
  CHECK(test::rel_error(b.v.to_vector(), a.v.to_vector()) < 1e-5);
  CHECK(test::rel_error(b.q.to_vector(), a.q.to_vector()) < 1e-5);
}

}  // namespace
}  // namespace kvc
