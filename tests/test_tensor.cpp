// Tests of Tensor factories, conversions, printing, and the Philox rand/randn streams.
#include <doctest/doctest.h>

#include <cmath>
#include <sstream>

#include "base/philox.h"
#include "core/storage.h"
#include "core/tensor.h"
#include "kernels/memory.h"
#include "tests/test_util.h"

using namespace kvc;

TEST_CASE("tensor: factories") {
  const Tensor z = Tensor::zeros({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.dim() == 2);
  CHECK(z.numel() == 6);
  CHECK(z.size(-1) == 3);
  CHECK(z.dtype() == DType::f32);
  CHECK(z.device().is_cpu());
  CHECK(z.nbytes() == 24);
  CHECK(z.to_vector() == std::vector<double>(6, 0.0));
  CHECK(Tensor::ones({4}, f64()).to_vector() == std::vector<double>(4, 1.0));
  CHECK(Tensor::full({2, 2}, -2.5).to_vector() == std::vector<double>(4, -2.5));
  CHECK(Tensor::arange(5, f64()).to_vector() == std::vector<double>{0, 1, 2, 3, 4});
  const Tensor s = Tensor::scalar(7);
  CHECK(s.shape() == Shape{});
  CHECK(s.numel() == 1);
  CHECK(s.item() == 7);
  const Tensor v = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {3, 2}, f64());
  CHECK(v.to_vector() == std::vector<double>{1, 2, 3, 4, 5, 6});
  CHECK(v.data<double>()[3] == 4);
  CHECK(Tensor::zeros({0, 5}).numel() == 0);
  CHECK(Tensor::ones({3}, f32().with_requires_grad(true)).requires_grad());
  CHECK_THROWS_AS(Tensor::zeros({2, -1}), kvc::Error);
  CHECK_THROWS_WITH_AS(Tensor::from_vector({1, 2, 3}, {2, 2}), doctest::Contains("(2, 2)"),
                       kvc::Error);
  CHECK_THROWS_AS(v.size(2), kvc::Error);
  CHECK_THROWS_AS(v.data<float>(), kvc::Error);
}

TEST_CASE("tensor: the CPU allocator counts the bytes in use and their peak") {
  namespace mem = kernels::cpu;
  const size_t start = mem::bytes_in_use();
  mem::reset_peak_stats();
  CHECK(mem::peak_bytes_in_use() == start);
  {
    // 1000 floats, rounded up to whole 64-byte units: 4032 bytes.
    const Tensor a = Tensor::empty({1000});
    CHECK(mem::bytes_in_use() == start + 4032);
    {
      const Tensor b = Tensor::empty({10}, f64());  // 80 bytes -> 128
      CHECK(mem::bytes_in_use() == start + 4032 + 128);
    }
    CHECK(mem::bytes_in_use() == start + 4032);
    CHECK(mem::peak_bytes_in_use() == start + 4032 + 128);
    mem::reset_peak_stats();
    CHECK(mem::peak_bytes_in_use() == start + 4032);
  }
  CHECK(mem::bytes_in_use() == start);
  // The memory is 64-byte aligned and writable to its last byte.
  void* p = mem::alloc(100);
  CHECK(reinterpret_cast<uintptr_t>(p) % 64 == 0);
  static_cast<char*>(p)[99] = 1;
  mem::free(p);
  CHECK(mem::bytes_in_use() == start);
}

TEST_CASE("tensor: on-demand storage allocates at first use and again after release") {
  namespace mem = kernels::cpu;
  const size_t start = mem::bytes_in_use();
  Storage lazy(1000, Device::cpu(), Storage::OnDemand{});
  CHECK_FALSE(lazy.allocated());
  CHECK(lazy.allocations() == 0);
  CHECK(mem::bytes_in_use() == start);
  static_cast<char*>(lazy.data())[999] = 1;
  CHECK(lazy.allocated());
  CHECK(lazy.allocations() == 1);
  CHECK(mem::bytes_in_use() == start + 1024);
  lazy.data();  // no second allocation while it has memory
  CHECK(lazy.allocations() == 1);
  CHECK(lazy.release());
  CHECK_FALSE(lazy.allocated());
  CHECK(mem::bytes_in_use() == start);
  CHECK(lazy.release());  // nothing to give back
  CHECK(lazy.data() != nullptr);
  CHECK(lazy.allocations() == 2);
  // A plain storage keeps its memory.
  Storage plain(64, Device::cpu());
  CHECK(plain.allocated());
  CHECK_FALSE(plain.release());
  CHECK(plain.allocated());
}

TEST_CASE("tensor: to(dtype), item, clone and detach") {
  const Tensor x = Tensor::from_vector({0.1, -1.5, 3e38}, {3}, f64());
  const Tensor f = x.to(DType::f32);
  CHECK(f.dtype() == DType::f32);
  CHECK(f.to_vector()[0] == static_cast<double>(0.1f));
  CHECK(f.to_vector()[1] == -1.5);
  CHECK(f.to_vector()[2] == static_cast<double>(3e38f));
  const Tensor back = f.to(DType::f64);
  CHECK(back.dtype() == DType::f64);
  CHECK(back.to_vector()[0] == static_cast<double>(0.1f));
  CHECK(x.to(DType::f64).raw_data() == x.raw_data());  // same dtype: no copy
  const Tensor c = x.clone();
  CHECK(c.raw_data() != x.raw_data());
  CHECK(c.to_vector() == x.to_vector());
  CHECK(Tensor::scalar(2.5, f64()).item() == 2.5);
  CHECK(Tensor::ones({1, 1}).item() == 1);
  CHECK_THROWS_WITH_AS(Tensor::ones({2}).item(), doctest::Contains("(2,)"), kvc::Error);
  CHECK_THROWS_AS(Tensor().shape(), kvc::Error);
}

TEST_CASE("tensor: printing shows shape, dtype and values") {
  const Tensor x = Tensor::from_vector({1, 2.5, -3, 4, 5, 6}, {2, 3});
  const std::string s = x.to_string();
  CHECK(s.find("shape=(2, 3)") != std::string::npos);
  CHECK(s.find("float32") != std::string::npos);
  CHECK(s.find("cpu") != std::string::npos);
  CHECK(s.find("1, 2.5, -3, 4, 5, 6") != std::string::npos);
  std::ostringstream os;
  os << Tensor::arange(40);
  CHECK(os.str().find("shape=(40,)") != std::string::npos);
  CHECK(os.str().find("...") != std::string::npos);
  CHECK(Tensor().to_string().find("undefined") != std::string::npos);
}

TEST_CASE("tensor: philox known answers") {
  // Random123's kat_vectors for philox4x32-10.
  const philox::U4 a = philox::philox4x32_10({0, 0, 0, 0}, 0, 0);
  CHECK(a.x == 0x6627e8d5u);
  CHECK(a.y == 0xe169c58du);
  CHECK(a.z == 0xbc57ac4cu);
  CHECK(a.w == 0x9b00dbd8u);
  const philox::U4 b = philox::philox4x32_10({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                                             0xa4093822u, 0x299f31d0u);
  CHECK(b.x == 0xd16cfe09u);
  CHECK(b.y == 0x94fdccebu);
  CHECK(b.z == 0x5001e420u);
  CHECK(b.w == 0x24126ea1u);
}

namespace {

// |sample mean - mu| and |sample std - sigma| within `k` standard errors; the standard error of
// the sample std is sigma * sqrt((kurtosis - 1) / (4 n)).
void check_moments(const std::vector<double>& v, double mu, double sigma, double kurtosis,
                   double k = 5) {
  const double n = static_cast<double>(v.size());
  double m = 0;
  for (double x : v) m += x;
  m /= n;
  double var = 0;
  for (double x : v) var += (x - m) * (x - m);
  const double sd = std::sqrt(var / (n - 1));
  CHECK(std::fabs(m - mu) < k * sigma / std::sqrt(n));
  CHECK(std::fabs(sd - sigma) < k * sigma * std::sqrt((kurtosis - 1) / (4 * n)));
}

}  // namespace

TEST_CASE("tensor: rand and randn statistics") {
  const int64_t n = 100000;
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(dtype_name(dt));
    const TensorOptions opt = TensorOptions{}.with_dtype(dt);
    // U[-1, 3): mean 1, std 4 / sqrt(12), kurtosis 9/5.
    const std::vector<double> u = Tensor::rand({n}, 123, 0, -1.0, 3.0, opt).to_vector();
    check_moments(u, 1.0, 4.0 / std::sqrt(12.0), 1.8);
    double lo = 1e9, hi = -1e9;
    for (double x : u) lo = std::fmin(lo, x), hi = std::fmax(hi, x);
    CHECK(lo >= -1.0);
    CHECK(hi < 3.0);
    // N(2, 0.5^2): kurtosis 3.
    const std::vector<double> g = Tensor::randn({n}, 321, 7, 2.0, 0.5, opt).to_vector();
    check_moments(g, 2.0, 0.5, 3.0);
    // Tails: P(|z| > 2) = 0.0455 for a normal.
    int64_t tail = 0;
    for (double x : g) tail += std::fabs(x - 2.0) > 1.0;
    const double frac = static_cast<double>(tail) / n;
    CHECK(std::fabs(frac - 0.0455) < 5 * std::sqrt(0.0455 * 0.9545 / n));
  }
}

TEST_CASE("tensor: random streams are functions of (seed, offset, index)") {
  const Tensor a = Tensor::randn({1001}, 5, 3, 0, 1, f64());
  const Tensor b = Tensor::randn({1001}, 5, 3, 0, 1, f64());
  CHECK(a.to_vector() == b.to_vector());
  CHECK(Tensor::randn({1001}, 5, 4, 0, 1, f64()).to_vector() != a.to_vector());
  CHECK(Tensor::randn({1001}, 6, 3, 0, 1, f64()).to_vector() != a.to_vector());
  // Element i is philox::normal / philox::uniform at i, whatever the tensor's length (odd
  // lengths end inside a Philox block).
  const std::vector<double> av = a.to_vector();
  const std::vector<double> u = Tensor::rand({7}, 5, 3, 0, 1, f64()).to_vector();
  bool same = true;
  for (uint64_t i = 0; i < av.size(); ++i) same = same && av[i] == philox::normal(5, 3, i);
  for (uint64_t i = 0; i < u.size(); ++i) same = same && u[i] == philox::uniform(5, 3, i);
  CHECK(same);
  // A prefix of a longer draw equals a shorter draw.
  const std::vector<double> shorter = Tensor::randn({3}, 5, 3, 0, 1, f64()).to_vector();
  CHECK(shorter == std::vector<double>(av.begin(), av.begin() + 3));
  // float32 rounds the same numbers.
  const std::vector<double> f = Tensor::randn({1001}, 5, 3, 0, 1).to_vector();
  for (size_t i = 0; i < f.size(); ++i)
    same = same && f[i] == static_cast<double>(static_cast<float>(av[i]));
  CHECK(same);
}
