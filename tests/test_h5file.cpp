// Tests of data/h5file: round trips, partial reads and writes, attributes, errors.
#include <hdf5.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "data/h5file.h"
#include "test_util.h"

namespace kvc {
namespace {

// A fresh path in the build folder, unique per test and process.
std::string temp_path(const std::string& name) {
  return std::string(KVC_BINARY_DIR) + "/h5test_" + std::to_string(::getpid()) + "_" + name;
}

// Removes the file when the test ends, pass or fail.
struct TempFile {
  explicit TempFile(const std::string& name) : path(temp_path(name)) { std::remove(path.c_str()); }
  ~TempFile() { std::remove(path.c_str()); }
  std::string path;
};

TEST_CASE("h5file: tensors round trip with shapes, dtypes, dotted names and parent groups") {
  TempFile f("roundtrip.h5");
  const Tensor a64 = Tensor::from_vector({1.5, -2.25, 3.0, 1e-300, 7.0, 0.1}, {2, 3}, f64());
  const Tensor a32 = Tensor::from_vector({0.5, 1.0 / 3.0, -4.0}, {3}, f32());
  {
    H5File h = H5File::open(f.path, H5Mode::create);
    h.write("/params/k_compress.conv.weight", a64);
    h.write("params/k_intrablock_positions", a32);
    h.write("/deep/a/b/c", a64, DType::f32);  // stored as float32 on disk
    h.write_scalar("/loss", 0.125);
    h.write_scalar_int64("/optim/step", 42);
    h.write_int64s("/metrics/step", {1, 2, 3});
    h.write_doubles("/metrics/loss", {0.5, 0.25});
    h.flush();
  }
  H5File h = H5File::open(f.path, H5Mode::read);
  CHECK(h.has("/params"));
  CHECK(h.has("/params/k_compress.conv.weight"));
  CHECK(h.is_dataset("/params/k_compress.conv.weight"));
  CHECK(h.is_group("/deep/a/b"));
  CHECK_FALSE(h.has("/params/k_compress"));
  CHECK_FALSE(h.has("/nothing/here/at/all"));
  CHECK_FALSE(h.has("/loss/child"));  // below a dataset
  CHECK(h.list("/params") ==
        std::vector<std::string>{"k_compress.conv.weight", "k_intrablock_positions"});
  CHECK(h.list("/") == std::vector<std::string>{"deep", "loss", "metrics", "optim", "params"});

  CHECK(h.shape("/params/k_compress.conv.weight") == Shape{2, 3});
  CHECK(h.type_name("/params/k_compress.conv.weight") == "float64");
  CHECK(h.type_name("/deep/a/b/c") == "float32");
  CHECK(h.type_name("/optim/step") == "int64");

  const Tensor r64 = h.read("/params/k_compress.conv.weight", DType::f64);
  CHECK(r64.dtype() == DType::f64);
  CHECK(r64.shape() == Shape{2, 3});
  CHECK(r64.to_vector() == a64.to_vector());  // float64 on disk: bit exact

  const Tensor r32 = h.read("/params/k_intrablock_positions", DType::f64);
  CHECK(r32.to_vector() == a32.to_vector());  // float32 widened exactly

  const std::vector<double> narrowed = h.read("/deep/a/b/c", DType::f32).to_vector();
  for (size_t i = 0; i < narrowed.size(); ++i) {
    CHECK(narrowed[i] == static_cast<double>(static_cast<float>(a64.to_vector()[i])));
  }
  const Tensor loss = h.read("/loss", DType::f64);
  CHECK(loss.shape().empty());
  CHECK(loss.item() == 0.125);
  CHECK(h.read_scalar("/loss") == 0.125);
  CHECK(h.read_scalar_int64("/optim/step") == 42);
  CHECK(h.read_scalar("/optim/step") == 42.0);  // integer converted by HDF5
  CHECK(h.read_int64s("/metrics/step") == std::vector<int64_t>{1, 2, 3});
  CHECK(h.read_doubles("/metrics/loss") == std::vector<double>{0.5, 0.25});
}

TEST_CASE("h5file: rewriting a dataset replaces it") {
  TempFile f("rewrite.h5");
  H5File h = H5File::open(f.path, H5Mode::create);
  h.write("/x", Tensor::zeros({4}, f64()));
  h.write("/x", Tensor::ones({2, 2}, f32()));
  CHECK(h.shape("/x") == Shape{2, 2});
  CHECK(h.read("/x", DType::f64).to_vector() == std::vector<double>{1, 1, 1, 1});
  h.remove("/x");
  CHECK_FALSE(h.has("/x"));
}

TEST_CASE("h5file: read_rows reads a hyperslab along the first axis") {
  TempFile f("rows.h5");
  // (N=5, h=2, seq=3, d=2) with value = its flat index.
  std::vector<double> values(5 * 2 * 3 * 2);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<double>(i);
  {
    H5File h = H5File::open(f.path, H5Mode::create);
    h.write("/k", Tensor::from_vector(values, {5, 2, 3, 2}, f32()));
  }
  H5File h = H5File::open(f.path, H5Mode::read);
  const Tensor rows = h.read_rows("/k", 1, 3, DType::f64);
  CHECK(rows.shape() == Shape{3, 2, 3, 2});
  const std::vector<double> got = rows.to_vector();
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == static_cast<double>(12 + i));
  CHECK(h.read_rows("/k", 4, 1, DType::f32).to_vector().front() == 48.0);
  CHECK(h.read_rows("/k", 5, 0, DType::f32).shape() == Shape{0, 2, 3, 2});
  CHECK_THROWS_WITH_AS(h.read_rows("/k", 3, 3, DType::f32),
                       doctest::Contains("rows [3, 6) out of range for dataset '/k' (5, 2, 3, 2)"),
                       Error);
  CHECK_THROWS_AS(h.read_rows("/k", -1, 1, DType::f32), Error);
}

TEST_CASE("h5file: create_dataset + write_rows fill a chunked dataset piece by piece") {
  TempFile f("chunked.h5");
  {
    H5File h = H5File::open(f.path, H5Mode::create);
    h.create_dataset("/out/k_compressed", {4, 3}, DType::f32, 2);
    h.write_rows("/out/k_compressed", 0, Tensor::from_vector({0, 1, 2, 3, 4, 5}, {2, 3}, f64()));
    h.write_rows("/out/k_compressed", 2, Tensor::from_vector({6, 7, 8}, {1, 3}, f32()));
    h.write_rows("/out/k_compressed", 3, Tensor::from_vector({9, 10, 11}, {1, 3}, f32()));
    CHECK_THROWS_WITH_AS(h.write_rows("/out/k_compressed", 3, Tensor::zeros({2, 3})),
                         doctest::Contains("out of range"), Error);
    CHECK_THROWS_WITH_AS(h.write_rows("/out/k_compressed", 0, Tensor::zeros({1, 4})),
                         doctest::Contains("do not fit dataset '/out/k_compressed' (4, 3)"), Error);
  }
  H5File h = H5File::open(f.path, H5Mode::read);
  CHECK(h.type_name("/out/k_compressed") == "float32");
  const std::vector<double> got = h.read("/out/k_compressed", DType::f64).to_vector();
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == static_cast<double>(i));
}

TEST_CASE("h5file: float16 on disk reads as float32 and float64") {
  TempFile f("half.h5");
  // IEEE half bit patterns written by hand: 1, -2, 0.5, 65504 (largest half), 2^-24 (subnormal).
  const uint16_t bits[5] = {0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001};
  {
    hid_t file = H5Fcreate(f.path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(file >= 0);
    hid_t half = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(half, 15, 10, 5, 0, 10);
    H5Tset_size(half, 2);
    H5Tset_ebias(half, 15);
    H5Tset_precision(half, 16);
    const hsize_t dims[1] = {5};
    hid_t space = H5Screate_simple(1, dims, nullptr);
    hid_t ds = H5Dcreate2(file, "/k", half, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(ds >= 0);
    REQUIRE(H5Dwrite(ds, half, H5S_ALL, H5S_ALL, H5P_DEFAULT, bits) >= 0);
    H5Dclose(ds);
    H5Sclose(space);
    H5Tclose(half);
    H5Fclose(file);
  }
  H5File h = H5File::open(f.path, H5Mode::read);
  CHECK(h.type_name("/k") == "float16");
  const std::vector<double> expect = {1.0, -2.0, 0.5, 65504.0, std::ldexp(1.0, -24)};
  CHECK(h.read("/k", DType::f32).to_vector() == expect);
  CHECK(h.read("/k", DType::f64).to_vector() == expect);
  CHECK(h.read_rows("/k", 3, 2, DType::f32).to_vector() ==
        std::vector<double>{65504.0, std::ldexp(1.0, -24)});
}

TEST_CASE("h5file: attributes on the root, groups and datasets") {
  TempFile f("attrs.h5");
  {
    H5File h = H5File::open(f.path, H5Mode::create);
    h.set_attr("/", "format", "kvcompress-checkpoint");
    h.set_attr("/", "format_version", int64_t{1});
    h.set_attr("/", "expand", 1.5);
    h.write("/optim/exp_avg/w", Tensor::zeros({2}));
    h.set_attr("/optim", "lr", 1e-3);
    h.set_attr("/optim/exp_avg/w", "note", std::string("dataset attr"));
    h.set_attr("/", "expand", 2.5);  // replaces
  }
  H5File h = H5File::open(f.path, H5Mode::read_write);
  CHECK(h.attr_string("/", "format") == "kvcompress-checkpoint");
  CHECK(h.attr_int64("/", "format_version") == 1);
  CHECK(h.attr_double("/", "format_version") == 1.0);
  CHECK(h.attr_double("/", "expand") == 2.5);
  CHECK(h.attr_double("/optim", "lr") == 1e-3);
  CHECK(h.attr_string("/optim/exp_avg/w", "note") == "dataset attr");
  CHECK(h.has_attr("/", "format"));
  CHECK_FALSE(h.has_attr("/", "missing"));
  CHECK_FALSE(h.has_attr("/no/such/object", "format"));
  CHECK(h.attr_names("/") == std::vector<std::string>{"expand", "format", "format_version"});
  CHECK_THROWS_WITH_AS(h.attr_string("/", "missing"),
                       doctest::Contains("no attribute 'missing' on '/'"), Error);
  CHECK_THROWS_WITH_AS(h.attr_string("/", "expand"), doctest::Contains("not a string"), Error);
  CHECK_THROWS_WITH_AS(h.attr_double("/", "format"), doctest::Contains("not a number"), Error);
}

TEST_CASE("h5file: fixed-length string attributes (numpy bytes) read back") {
  TempFile f("fixedstr.h5");
  {
    hid_t file = H5Fcreate(f.path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, 8);
    H5Tset_strpad(type, H5T_STR_NULLPAD);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, "kind", type, space, H5P_DEFAULT, H5P_DEFAULT);
    const char text[8] = {'c', 'o', 'n', 'v', 0, 0, 0, 0};
    REQUIRE(H5Awrite(a, type, text) >= 0);
    H5Aclose(a);
    H5Sclose(space);
    H5Tclose(type);
    H5Fclose(file);
  }
  CHECK(H5File::open(f.path, H5Mode::read).attr_string("/", "kind") == "conv");
}

TEST_CASE("h5file: errors name the file, the object and the reason") {
  const std::string missing = temp_path("does_not_exist.h5");
  CHECK_THROWS_WITH_AS(H5File::open(missing, H5Mode::read),
                       doctest::Contains(("'" + missing + "': no such file").c_str()), Error);

  TempFile corrupt("corrupt.h5");
  { std::ofstream(corrupt.path) << "this is not an HDF5 file at all, just text\n"; }
  CHECK_THROWS_WITH_AS(H5File::open(corrupt.path, H5Mode::read),
                       doctest::Contains("not an HDF5 file"), Error);

  CHECK_THROWS_WITH_AS(H5File::open("/nonexistent_dir_kvc/x.h5", H5Mode::create),
                       doctest::Contains("cannot create '/nonexistent_dir_kvc/x.h5'"), Error);

  TempFile f("errors.h5");
  {
    H5File h = H5File::open(f.path, H5Mode::create);
    h.write("/a/x", Tensor::zeros({2}));
    h.set_attr("/", "kind", "conv");
  }
  H5File h = H5File::open(f.path, H5Mode::read);
  CHECK_THROWS_WITH_AS(h.read("/a/missing"),
                       doctest::Contains(("no dataset '/a/missing' in '" + f.path + "'").c_str()),
                       Error);
  CHECK_THROWS_WITH_AS(h.read("/a"), doctest::Contains("is a group, not a dataset"), Error);
  CHECK_THROWS_WITH_AS(h.list("/a/x"), doctest::Contains("no group '/a/x'"), Error);
  CHECK_THROWS_WITH_AS(h.write("/b", Tensor::zeros({1})), doctest::Contains("read-only"), Error);
  CHECK_THROWS_WITH_AS(h.read_scalar("/a/x"), doctest::Contains("holds 2 values, not one"), Error);
}

TEST_CASE("h5file: a string dataset is refused as numbers") {
  TempFile f("strds.h5");
  {
    hid_t file = H5Fcreate(f.path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, 4);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t ds = H5Dcreate2(file, "/s", type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, "abc") >= 0);
    H5Dclose(ds);
    H5Sclose(space);
    H5Tclose(type);
    H5Fclose(file);
  }
  H5File h = H5File::open(f.path, H5Mode::read);
  CHECK(h.type_name("/s") == "string");
  CHECK_THROWS_WITH_AS(h.read("/s"), doctest::Contains("holds string, not numbers"), Error);
}

TEST_CASE("h5file: a moved-from file is closed and the moved-to one works") {
  TempFile f("move.h5");
  H5File a = H5File::open(f.path, H5Mode::create);
  H5File b = std::move(a);
  CHECK_FALSE(a.is_open());
  CHECK(b.is_open());
  b.write("/x", Tensor::ones({1}));
  b.close();
  CHECK_FALSE(b.is_open());
  CHECK(H5File::open(f.path, H5Mode::read).read_scalar("/x") == 1.0);
}

}  // namespace
}  // namespace kvc
