// matmul, mix, conv1d and the CPU GEMM: values against naive loops written here, float64
// gradchecks of every input, float32/float64 agreement, gradient accumulation and shape errors.
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/gradcheck.h"
#include "core/ops.h"
#include "kernels/gemm.h"
#include "tests/reference/conv1d.h"
#include "tests/test_util.h"

namespace kvc {
namespace {

using Vec = std::vector<double>;

Tensor randn64(const Shape& shape, uint64_t seed) {
  return Tensor::randn(shape, seed, 0, 0.0, 1.0, f64());
}

// Beyond the library's tolerances, every linalg gradient element is this close to the differences.
constexpr double kGradMaxAbs = 1e-7;

using test::check_error;

// ---- independent references ----------------------------------------------------------------

// a (batch..., ar, ac), b (batch..., br, bc) or (br, bc); op() transposes the last two axes.
Vec ref_matmul(const Vec& a, const Shape& as, const Vec& b, const Shape& bs, bool ta, bool tb) {
  int64_t batch = 1;
  for (size_t i = 0; i + 2 < as.size(); ++i) batch *= as[i];
  const int64_t ar = as[as.size() - 2], ac = as.back();
  const int64_t br = bs[bs.size() - 2], bc = bs.back();
  const bool shared = bs.size() == 2;
  const int64_t m = ta ? ac : ar, k = ta ? ar : ac, n = tb ? br : bc;
  Vec y(static_cast<size_t>(batch * m * n));
  for (int64_t p = 0; p < batch; ++p) {
    const double* A = a.data() + p * ar * ac;
    const double* B = b.data() + (shared ? 0 : p * br * bc);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t l = 0; l < k; ++l) {
          const double av = ta ? A[l * ac + i] : A[i * ac + l];
          const double bv = tb ? B[j * bc + l] : B[l * bc + j];
          s += av * bv;
        }
        y[static_cast<size_t>((p * m + i) * n + j)] = s;
      }
    }
  }
  return y;
}

// x (P, h, w, in), W (h, in, out), B (h, out) or empty.
Vec ref_mix(const Vec& x, const Vec& W, const Vec& B, int64_t P, int64_t h, int64_t w, int64_t in,
            int64_t out) {
  Vec y(static_cast<size_t>(P * h * w * out));
  for (int64_t p = 0; p < P; ++p)
    for (int64_t hh = 0; hh < h; ++hh)
      for (int64_t ww = 0; ww < w; ++ww)
        for (int64_t o = 0; o < out; ++o) {
          double s = B.empty() ? 0.0 : B[static_cast<size_t>(hh * out + o)];
          for (int64_t i = 0; i < in; ++i) {
            s += x[static_cast<size_t>(((p * h + hh) * w + ww) * in + i)] *
                 W[static_cast<size_t>((hh * in + i) * out + o)];
          }
          y[static_cast<size_t>(((p * h + hh) * w + ww) * out + o)] = s;
        }
  return y;
}

// PyTorch Conv1d, padding 0: x (B, cin, L), W (cout, cin/g, K), bias (cout) or empty.
Vec ref_conv1d(const Vec& x, const Vec& W, const Vec& bias, int64_t B, int64_t cin, int64_t L,
               int64_t cout, int64_t K, int64_t S, int64_t G) {
  const int64_t lo = (L - K) / S + 1, cig = cin / G, cog = cout / G;
  Vec y(static_cast<size_t>(B * cout * lo));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < cout; ++o)
      for (int64_t t = 0; t < lo; ++t) {
        const int64_t g = o / cog;
        double s = bias.empty() ? 0.0 : bias[static_cast<size_t>(o)];
        for (int64_t c = 0; c < cig; ++c)
          for (int64_t k = 0; k < K; ++k) {
            s += W[static_cast<size_t>((o * cig + c) * K + k)] *
                 x[static_cast<size_t>((b * cin + g * cig + c) * L + t * S + k)];
          }
        y[static_cast<size_t>((b * cout + o) * lo + t)] = s;
      }
  return y;
}

// ---- GEMM kernel ---------------------------------------------------------------------------

TEST_CASE("gemm kernel: hand numbers, beta 0 ignores NaN in C, beta 1 accumulates") {
  // A = [[1, 2], [3, 4]], B = [[5, 6], [7, 8]]: A B = [[19, 22], [43, 50]].
  const double a[] = {1, 2, 3, 4}, b[] = {5, 6, 7, 8};
  double c[4];
  for (double& v : c) v = std::numeric_limits<double>::quiet_NaN();
  kernels::GemmArgs g;
  g.m = g.n = g.k = 2;
  g.lda = g.ldb = g.ldc = 2;
  kernels::cpu::gemm<double>(g, a, b, c);
  CHECK(c[0] == 19);
  CHECK(c[1] == 22);
  CHECK(c[2] == 43);
  CHECK(c[3] == 50);
  g.beta = 1.0;
  g.trans_a = true;  // A^T B = [[26, 30], [38, 44]], added on
  kernels::cpu::gemm<double>(g, a, b, c);
  CHECK(c[0] == 19 + 26);
  CHECK(c[1] == 22 + 30);
  CHECK(c[2] == 43 + 38);
  CHECK(c[3] == 50 + 44);
}

TEST_CASE("gemm kernel: two batch levels with a shared (stride 0) operand, float") {
  // 2 x 3 batch of (1 x 2) @ (2 x 1); B is shared across the outer level.
  std::vector<float> a(12), b(6), c(6, -1.0f);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i + 1);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(10 * (i + 1));
  kernels::GemmArgs g;
  g.m = 1, g.n = 1, g.k = 2, g.lda = 2, g.ldb = 1, g.ldc = 1;
  g.batch_outer = 2, g.batch_inner = 3;
  g.outer_stride_a = 6, g.inner_stride_a = 2;
  g.outer_stride_b = 0, g.inner_stride_b = 2;
  g.outer_stride_c = 3, g.inner_stride_c = 1;
  kernels::cpu::gemm<float>(g, a.data(), b.data(), c.data());
  for (int p = 0; p < 2; ++p)
    for (int q = 0; q < 3; ++q) {
      const float* ap = a.data() + p * 6 + q * 2;
      const float* bp = b.data() + q * 2;
      CHECK(c[static_cast<size_t>(p * 3 + q)] == doctest::Approx(ap[0] * bp[0] + ap[1] * bp[1]));
    }
}

TEST_CASE("gemm kernel: k == 0 is an empty sum") {
  double c[2] = {std::numeric_limits<double>::quiet_NaN(), 5.0};
  kernels::GemmArgs g;
  g.m = 1, g.n = 2, g.k = 0, g.ldc = 2;
  kernels::cpu::gemm<double>(g, nullptr, nullptr, c);
  CHECK(c[0] == 0.0);
  CHECK(c[1] == 0.0);
}

// ---- matmul --------------------------------------------------------------------------------

TEST_CASE("linalg: matmul hand numbers") {
  const Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}, f64());
  const Tensor b = Tensor::from_vector({7, 8, 9, 10, 11, 12}, {3, 2}, f64());
  // [[1,2,3],[4,5,6]] @ [[7,8],[9,10],[11,12]] = [[58, 64], [139, 154]]
  CHECK(matmul(a, b).to_vector() == Vec{58, 64, 139, 154});
  // a^T (3, 2) @ a (2, 3)... via flags: a^T a = [[17,22,27],[22,29,36],[27,36,45]]
  CHECK(matmul(a, a, true, false).to_vector() == Vec{17, 22, 27, 22, 29, 36, 27, 36, 45});
  // a a^T = [[14, 32], [32, 77]]
  CHECK(matmul(a, a, false, true).to_vector() == Vec{14, 32, 32, 77});
}

TEST_CASE("linalg: matmul values and gradients, all transpose combos, batched and 2-D weight") {
  const int64_t m = 3, k = 4, n = 2;
  uint64_t seed = 100;
  for (bool shared : {false, true}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        CAPTURE(shared);
        CAPTURE(ta);
        CAPTURE(tb);
        const Shape as = ta ? Shape{2, 3, k, m} : Shape{2, 3, m, k};
        const Shape bmat = tb ? Shape{n, k} : Shape{k, n};
        Shape bs = bmat;
        if (!shared) bs.insert(bs.begin(), {2, 3});
        Tensor a = randn64(as, ++seed);
        Tensor b = randn64(bs, ++seed);
        const Tensor y = matmul(a, b, ta, tb);
        CHECK(y.shape() == Shape{2, 3, m, n});
        CHECK(test::max_abs_diff(y.to_vector(),
                                 ref_matmul(a.to_vector(), as, b.to_vector(), bs, ta, tb)) < 1e-12);
        test::require_gradcheck(
            gradcheck([&] { return matmul(a, b, ta, tb); }, {{"a", a}, {"b", b}}), kGradMaxAbs);

        // The float32 path agrees with float64.
        const Tensor y32 = matmul(a.to(DType::f32), b.to(DType::f32), ta, tb);
        CHECK(y32.dtype() == DType::f32);
        CHECK(test::rel_error(y32.to_vector(), y.to_vector()) < 1e-6);
      }
    }
  }
}

TEST_CASE("linalg: matmul 2-D by 2-D and gradient of one input only") {
  Tensor a = randn64({3, 5}, 7);
  Tensor b = randn64({5, 4}, 8);
  CHECK(test::max_abs_diff(matmul(a, b).to_vector(),
                           ref_matmul(a.to_vector(), {3, 5}, b.to_vector(), {5, 4}, false, false)) <
        1e-12);
  test::require_gradcheck(gradcheck([&] { return matmul(a, b); }, {{"a", a}}), kGradMaxAbs);
  test::require_gradcheck(gradcheck([&] { return matmul(a, b); }, {{"b", b}}), kGradMaxAbs);
}

TEST_CASE("linalg: matmul gradients accumulate onto an existing gradient (GEMM beta 1)") {
  // d sum(a @ b) / da = ones(m, n) @ b^T: row sums of b, per row of a.
  Tensor a = Tensor::from_vector({1, 2, 3, 4}, {2, 2}, f64().with_requires_grad(true));
  Tensor b = Tensor::from_vector({5, 6, 7, 8}, {2, 2}, f64().with_requires_grad(true));
  for (int rep = 0; rep < 2; ++rep) {
    const Tensor y = matmul(a, b);
    backward(y, Tensor::ones({2, 2}, f64()));
  }
  // one pass: ga = [[11, 15], [11, 15]], gb = a^T ones = [[4, 4], [6, 6]]
  CHECK(a.grad().to_vector() == Vec{22, 30, 22, 30});
  CHECK(b.grad().to_vector() == Vec{8, 8, 12, 12});
}

TEST_CASE("linalg: matmul shape errors name the op and both shapes") {
  const Tensor a = Tensor::zeros({2, 3});
  const Tensor b = Tensor::zeros({4, 5});
  check_error([&] { matmul(a, b); }, {"matmul", "(2, 3)", "(4, 5)"});
  const Tensor a3 = Tensor::zeros({2, 2, 3});
  const Tensor b3 = Tensor::zeros({3, 3, 4});
  check_error([&] { matmul(a3, b3); }, {"matmul", "(2, 2, 3)", "(3, 3, 4)"});
  check_error([&] { matmul(Tensor::zeros({3}), Tensor::zeros({3, 1})); }, {"matmul", "(3,)"});
  check_error([&] { matmul(a, Tensor::zeros({3, 2}, f64())); }, {"matmul", "float32", "float64"});
}

// ---- mix -----------------------------------------------------------------------------------

TEST_CASE("linalg: mix values and gradients (x, weight, bias), with and without leading axes") {
  struct Case {
    Shape lead;
    bool bias;
  };
  uint64_t seed = 300;
  for (const Case& c : {Case{{2}, true}, Case{{}, true}, Case{{2, 3}, false}, Case{{3}, false}}) {
    const int64_t h = 2, w = 3, in = 4, out = 3;
    Shape xs = c.lead;
    xs.insert(xs.end(), {h, w, in});
    int64_t P = 1;
    for (int64_t s : c.lead) P *= s;
    Tensor x = randn64(xs, ++seed);
    Tensor W = randn64({h, in, out}, ++seed);
    Tensor B = c.bias ? randn64({h, out}, ++seed) : Tensor();
    const Tensor y = mix(x, W, B);
    Shape ys = c.lead;
    ys.insert(ys.end(), {h, w, out});
    CHECK(y.shape() == ys);
    CHECK(test::max_abs_diff(y.to_vector(),
                             ref_mix(x.to_vector(), W.to_vector(), c.bias ? B.to_vector() : Vec{},
                                     P, h, w, in, out)) < 1e-12);
    std::vector<std::pair<std::string, Tensor>> inputs{{"x", x}, {"weight", W}};
    if (c.bias) inputs.push_back({"bias", B});
    test::require_gradcheck(gradcheck([&] { return mix(x, W, B); }, inputs), kGradMaxAbs);

    const Tensor y32 =
        mix(x.to(DType::f32), W.to(DType::f32), c.bias ? B.to(DType::f32) : Tensor());
    CHECK(test::rel_error(y32.to_vector(), y.to_vector()) < 1e-6);
  }
}

TEST_CASE("linalg: mix hand numbers") {
  // One head, one row: x = [1, 2], W = [[1, 0, 2], [3, 1, 0]], B = [10, 20, 30]
  // y = [1 + 6 + 10, 0 + 2 + 20, 2 + 0 + 30] = [17, 22, 32]
  const Tensor x = Tensor::from_vector({1, 2}, {1, 1, 2}, f64());
  const Tensor W = Tensor::from_vector({1, 0, 2, 3, 1, 0}, {1, 2, 3}, f64());
  const Tensor B = Tensor::from_vector({10, 20, 30}, {1, 3}, f64());
  CHECK(mix(x, W, B).to_vector() == Vec{17, 22, 32});
}

TEST_CASE("linalg: mix weight gradient sums over the leading batch and accumulates") {
  // x all ones (P=3, h=1, w=2, in=1), W (1,1,1), seed ones: dW = sum over 6 ones = 6, dB = 6.
  Tensor x = Tensor::ones({3, 1, 2, 1}, f64());
  Tensor W = Tensor::from_vector({2.0}, {1, 1, 1}, f64().with_requires_grad(true));
  Tensor B = Tensor::from_vector({0.5}, {1, 1}, f64().with_requires_grad(true));
  backward(mix(x, W, B), Tensor::ones({3, 1, 2, 1}, f64()));
  CHECK(W.grad().item() == 6.0);
  CHECK(B.grad().item() == 6.0);
  backward(mix(x, W, B), Tensor::ones({3, 1, 2, 1}, f64()));
  CHECK(W.grad().item() == 12.0);
  CHECK(B.grad().item() == 12.0);
}

// Gradients of sum(y * gy) for y = mix(x, W, B), x (P, h, w, in): {gx, gW, gB} by naive loops.
std::vector<Vec> ref_mix_grads(const Vec& x, const Vec& W, const Vec& gy, int64_t P, int64_t h,
                               int64_t w, int64_t in, int64_t out) {
  Vec gx(static_cast<size_t>(P * h * w * in)), gW(static_cast<size_t>(h * in * out));
  Vec gB(static_cast<size_t>(h * out));
  for (int64_t p = 0; p < P; ++p)
    for (int64_t hh = 0; hh < h; ++hh)
      for (int64_t ww = 0; ww < w; ++ww) {
        const int64_t row = (p * h + hh) * w + ww;
        for (int64_t o = 0; o < out; ++o) {
          const double g = gy[static_cast<size_t>(row * out + o)];
          gB[static_cast<size_t>(hh * out + o)] += g;
          for (int64_t i = 0; i < in; ++i) {
            gx[static_cast<size_t>(row * in + i)] +=
                g * W[static_cast<size_t>((hh * in + i) * out + o)];
            gW[static_cast<size_t>((hh * in + i) * out + o)] +=
                g * x[static_cast<size_t>(row * in + i)];
          }
        }
      }
  return {gx, gW, gB};
}

// Shapes that reach every plan of mix's weight gradient (core/ops_linalg.cpp, plan_weight_grad:
// split-K when w is long next to a small (in, out) output). Each backward runs twice so the
// second writes onto existing gradients (the accumulate flag true) after the first found none.
struct MixGradCase {
  int64_t P, h, w, in, out;
  const char* plan;
};
const MixGradCase kMixGradCases[] = {
    {3, 2, 1024, 3, 5, "split-K, 8 chunks dividing w: one uniform batch"},
    {2, 2, 997, 4, 3, "split-K, w prime: 6 full chunks and a tail chunk"},
    {1, 1, 300, 2, 2, "split-K of a single (p, h)"},
    {4, 3, 64, 3, 2, "no split, the leading batch summed by the reduction"},
    {1, 2, 100, 3, 4, "direct GEMM"},
    {1, 3, 1, 7, 130,
     "one row a head: an outer product (a row length the CUDA kernel walks singly)"},
    {1, 2, 1, 5, 64, "one row a head: an outer product (four columns a CUDA thread)"},
    {1, 3, 1, 9, 1100,
     "one row a head: an outer product over two column blocks of CUDA threads, their row "
     "blocks spanning two heads"},
};

void check_mix_grads_on(Device device, DType dt, const MixGradCase& c, double tol) {
  CAPTURE(c.plan);
  CAPTURE(device.name());
  CAPTURE(dtype_name(dt));
  const Tensor x64 = randn64({c.P, c.h, c.w, c.in}, 11), w64 = randn64({c.h, c.in, c.out}, 12);
  const Tensor b64 = randn64({c.h, c.out}, 13);
  const Tensor g1 = randn64({c.P, c.h, c.w, c.out}, 14), g2 = randn64({c.P, c.h, c.w, c.out}, 15);
  auto on = [&](const Tensor& t) { return t.to(dt).to(device); };
  Tensor x = on(x64).set_requires_grad(true), W = on(w64).set_requires_grad(true);
  Tensor B = on(b64).set_requires_grad(true);
  const std::vector<Vec> r1 =
      ref_mix_grads(x64.to_vector(), w64.to_vector(), g1.to_vector(), c.P, c.h, c.w, c.in, c.out);
  const std::vector<Vec> r2 =
      ref_mix_grads(x64.to_vector(), w64.to_vector(), g2.to_vector(), c.P, c.h, c.w, c.in, c.out);
  const Tensor* params[3] = {&x, &W, &B};
  backward(mix(x, W, B), on(g1));
  for (int i = 0; i < 3; ++i) {
    INFO("fresh gradient of input ", i);
    CHECK(test::rel_error(params[i]->grad().to_vector(), r1[static_cast<size_t>(i)]) < tol);
  }
  backward(mix(x, W, B), on(g2));
  for (int i = 0; i < 3; ++i) {
    INFO("accumulated gradient of input ", i);
    Vec sum = r1[static_cast<size_t>(i)];
    for (size_t j = 0; j < sum.size(); ++j) sum[j] += r2[static_cast<size_t>(i)][j];
    CHECK(test::rel_error(params[i]->grad().to_vector(), sum) < tol);
  }
}

TEST_CASE("linalg: mix gradients on long w (split-K weight gradient) match naive loops") {
  for (const MixGradCase& c : kMixGradCases) {
    check_mix_grads_on(Device::cpu(), DType::f64, c, 1e-12);
    check_mix_grads_on(Device::cpu(), DType::f32, c, 1e-5);
  }
}

TEST_CASE("linalg: mix gradcheck on long w (split-K, with and without a tail chunk)") {
  Tensor x = randn64({1, 1, 300, 2}, 21), W = randn64({1, 2, 2}, 22), B = randn64({1, 2}, 23);
  test::require_gradcheck(
      gradcheck([&] { return mix(x, W, B); }, {{"x", x}, {"weight", W}, {"bias", B}}), kGradMaxAbs);
  Tensor x2 = randn64({2, 2, 997, 4}, 24), W2 = randn64({2, 4, 3}, 25), B2 = randn64({2, 3}, 26);
  test::require_gradcheck(
      gradcheck([&] { return mix(x2, W2, B2); }, {{"weight", W2}, {"bias", B2}}), kGradMaxAbs);
}

TEST_CASE("linalg: CUDA mix gradients on long w (split-K weight gradient) match naive loops") {
  KVC_REQUIRE_CUDA();
  for (const MixGradCase& c : kMixGradCases) {
    check_mix_grads_on(Device::cuda(), DType::f64, c, 1e-12);
    check_mix_grads_on(Device::cuda(), DType::f32, c, 1e-5);
  }
}

TEST_CASE("linalg: mix shape errors name the op and both shapes") {
  const Tensor x = Tensor::zeros({2, 3, 4, 5});
  check_error(
      [&] {
        mix(x, Tensor::zeros({2, 5, 6}), Tensor());
      },
      {"mix", "(2, 3, 4, 5)", "(2, 5, 6)"});
  check_error(
      [&] {
        mix(x, Tensor::zeros({3, 4, 6}), Tensor());
      },
      {"mix", "(2, 3, 4, 5)", "(3, 4, 6)"});
  check_error(
      [&] {
        mix(x, Tensor::zeros({3, 5, 6}), Tensor::zeros({3, 5}));
      },
      {"mix", "(3, 5)", "(3, 5, 6)"});
  check_error(
      [&] {
        mix(Tensor::zeros({4, 5}), Tensor::zeros({3, 5, 6}), Tensor());
      },
      {"mix", "(4, 5)", "(3, 5, 6)"});
}

// ---- conv1d --------------------------------------------------------------------------------

TEST_CASE("linalg: conv1d hand numbers") {
  // One channel, kernel 2, stride 2: x = [1, 2, 3, 4, 5], w = [10, 1], bias 0.5.
  // windows [1,2], [3,4] (5 dropped): 10 + 2 + 0.5 = 12.5, 30 + 4 + 0.5 = 34.5
  const Tensor x = Tensor::from_vector({1, 2, 3, 4, 5}, {1, 1, 5}, f64());
  const Tensor w = Tensor::from_vector({10, 1}, {1, 1, 2}, f64());
  const Tensor b = Tensor::from_vector({0.5}, {1}, f64());
  const Tensor y = conv1d(x, w, b, 2, 1);
  CHECK(y.shape() == Shape{1, 1, 2});
  CHECK(y.to_vector() == Vec{12.5, 34.5});
  // stride 1: [12, 23, 34, 45]
  CHECK(conv1d(x, w, Tensor(), 1, 1).to_vector() == Vec{12, 23, 34, 45});
}

TEST_CASE("linalg: conv1d values and gradients over kernel/stride/groups") {
  struct Case {
    int64_t batch, cin, cout, length, kernel, stride, groups;
    bool bias;
  };
  const Case cases[] = {
      {2, 4, 4, 8, 2, 2, 1, true},   // kernel == stride, groups 1
      {2, 4, 4, 9, 2, 2, 2, true},   // kernel == stride, groups 2, a dropped tail
      {1, 4, 8, 6, 3, 3, 4, true},   // kernel == stride, depthwise-like, c_out = 2 * c_in
      {2, 4, 2, 7, 3, 2, 2, true},   // overlapping windows (kernel > stride)
      {1, 2, 4, 8, 2, 3, 1, false},  // gaps (stride > kernel), no bias
      {2, 6, 4, 5, 1, 1, 2, true},   // pointwise (kernel 1, stride 1), groups 2
      {1, 3, 2, 4, 1, 2, 1, true},   // kernel 1 with stride 2
  };
  uint64_t seed = 500;
  for (const Case& c : cases) {
    CAPTURE(c.kernel);
    CAPTURE(c.stride);
    CAPTURE(c.groups);
    CAPTURE(c.length);
    Tensor x = randn64({c.batch, c.cin, c.length}, ++seed);
    Tensor w = randn64({c.cout, c.cin / c.groups, c.kernel}, ++seed);
    Tensor b = c.bias ? randn64({c.cout}, ++seed) : Tensor();
    const Tensor y = conv1d(x, w, b, c.stride, c.groups);
    const int64_t lo = (c.length - c.kernel) / c.stride + 1;
    CHECK(y.shape() == Shape{c.batch, c.cout, lo});
    CHECK(test::max_abs_diff(
              y.to_vector(),
              ref_conv1d(x.to_vector(), w.to_vector(), c.bias ? b.to_vector() : Vec{}, c.batch,
                         c.cin, c.length, c.cout, c.kernel, c.stride, c.groups)) < 1e-12);
    std::vector<std::pair<std::string, Tensor>> inputs{{"x", x}, {"weight", w}};
    if (c.bias) inputs.push_back({"bias", b});
    test::require_gradcheck(gradcheck([&] { return conv1d(x, w, b, c.stride, c.groups); }, inputs),
                            kGradMaxAbs);

    const Tensor y32 = conv1d(x.to(DType::f32), w.to(DType::f32),
                              c.bias ? b.to(DType::f32) : Tensor(), c.stride, c.groups);
    CHECK(test::rel_error(y32.to_vector(), y.to_vector()) < 1e-6);
  }
}

TEST_CASE("linalg: conv1d parameter gradients accumulate, also when only one had a gradient") {
  // x all ones (1, 1, 4), w (1, 1, 2), stride 2, seed ones: dw = [2, 2], db = 2, dx = w tiled.
  Tensor x = Tensor::ones({1, 1, 4}, f64().with_requires_grad(true));
  Tensor w = Tensor::from_vector({3, 5}, {1, 1, 2}, f64().with_requires_grad(true));
  Tensor b = Tensor::from_vector({1}, {1}, f64().with_requires_grad(true));
  auto run = [&] { backward(conv1d(x, w, b, 2, 1), Tensor::ones({1, 1, 2}, f64())); };
  run();
  CHECK(w.grad().to_vector() == Vec{2, 2});
  CHECK(b.grad().to_vector() == Vec{2});
  CHECK(x.grad().to_vector() == Vec{3, 5, 3, 5});
  run();
  CHECK(w.grad().to_vector() == Vec{4, 4});
  CHECK(b.grad().to_vector() == Vec{4});
  CHECK(x.grad().to_vector() == Vec{6, 10, 6, 10});
  b.zero_grad();  // now w accumulates while b starts fresh
  run();
  CHECK(w.grad().to_vector() == Vec{6, 6});
  CHECK(b.grad().to_vector() == Vec{2});
}

TEST_CASE("linalg: conv1d shape errors name the op and both shapes") {
  const Tensor x = Tensor::zeros({2, 4, 8});
  check_error(
      [&] {
        conv1d(x, Tensor::zeros({4, 3, 2}), Tensor(), 2, 1);
      },
      {"conv1d", "(2, 4, 8)", "(4, 3, 2)"});
  check_error(
      [&] {
        conv1d(x, Tensor::zeros({3, 2, 2}), Tensor(), 2, 2);
      },
      {"conv1d", "(2, 4, 8)", "(3, 2, 2)"});
  check_error(
      [&] {
        conv1d(x, Tensor::zeros({4, 4, 9}), Tensor(), 1, 1);
      },
      {"conv1d", "(2, 4, 8)", "(4, 4, 9)"});
  check_error(
      [&] {
        conv1d(x, Tensor::zeros({4, 4, 2}), Tensor::zeros({3}), 2, 1);
      },
      {"conv1d", "(3,)", "(4, 4, 2)"});
  check_error(
      [&] {
        conv1d(Tensor::zeros({4, 8}), Tensor::zeros({4, 4, 2}), Tensor(), 2, 1);
      },
      {"conv1d", "(4, 8)", "(4, 4, 2)"});
}

// ---- CUDA against CPU --------------------------------------------------------------------

using OpOnInputs = std::function<Tensor(const std::vector<Tensor>&)>;

// Output and every input's gradient (seeded with one fixed random tensor made on the host) of
// `f` run on copies of `inputs` moved to `device`; undefined inputs stay undefined.
std::vector<Vec> forward_backward_on(Device device, const std::vector<Tensor>& inputs,
                                     const OpOnInputs& f) {
  std::vector<Tensor> moved;
  for (const Tensor& t : inputs) {
    moved.push_back(t.defined() ? t.to(device).set_requires_grad(true) : Tensor());
  }
  const Tensor y = f(moved);
  const Tensor seed = Tensor::randn(y.shape(), 77, 0, 0.0, 1.0, TensorOptions{y.dtype()});
  backward(y, seed.to(device));
  std::vector<Vec> out{y.to_vector()};
  for (const Tensor& t : moved) {
    if (t.defined()) out.push_back(t.grad().to_vector());
  }
  return out;
}

void check_cuda_matches_cpu(const std::vector<Tensor>& inputs, const OpOnInputs& f, double tol) {
  const std::vector<Vec> cpu = forward_backward_on(Device::cpu(), inputs, f);
  const std::vector<Vec> gpu = forward_backward_on(Device::cuda(), inputs, f);
  REQUIRE(cpu.size() == gpu.size());
  for (size_t i = 0; i < cpu.size(); ++i) {
    INFO("output 0 / gradient i: ", i);
    CHECK(test::rel_error(gpu[i], cpu[i]) < tol);
  }
}

TEST_CASE("linalg: CUDA matches CPU for matmul, mix and conv1d, values and gradients") {
  KVC_REQUIRE_CUDA();
  for (DType dt : {DType::f64, DType::f32}) {
    CAPTURE(dtype_name(dt));
    const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
    auto rnd = [&](const Shape& s, uint64_t seed) { return randn64(s, seed).to(dt); };
    for (bool shared : {false, true}) {
      for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
          CAPTURE(shared);
          CAPTURE(ta);
          CAPTURE(tb);
          const Tensor a = rnd(ta ? Shape{2, 3, 5, 4} : Shape{2, 3, 4, 5}, 1);
          const Tensor b = shared ? rnd(tb ? Shape{6, 5} : Shape{5, 6}, 2)
                                  : rnd(tb ? Shape{2, 3, 6, 5} : Shape{2, 3, 5, 6}, 2);
          check_cuda_matches_cpu(
              {a, b}, [&](const std::vector<Tensor>& v) { return matmul(v[0], v[1], ta, tb); },
              tol);
        }
      }
    }
    for (bool with_bias : {true, false}) {
      const Tensor x = rnd({2, 3, 5, 4}, 3), w = rnd({3, 4, 6}, 4);
      const Tensor b = with_bias ? rnd({3, 6}, 5) : Tensor();
      check_cuda_matches_cpu(
          {x, w, b}, [](const std::vector<Tensor>& v) { return mix(v[0], v[1], v[2]); }, tol);
    }
    struct Conv {
      int64_t cin, cout, length, kernel, stride, groups;
    };
    for (const Conv& c : {Conv{8, 8, 32, 4, 4, 2}, Conv{4, 2, 11, 3, 2, 2}, Conv{6, 4, 9, 1, 1, 2},
                          Conv{2, 4, 10, 2, 3, 1}}) {
      const Tensor x = rnd({2, c.cin, c.length}, 6);
      const Tensor w = rnd({c.cout, c.cin / c.groups, c.kernel}, 7);
      const Tensor b = rnd({c.cout}, 8);
      check_cuda_matches_cpu(
          {x, w, b},
          [&](const std::vector<Tensor>& v) {
            return conv1d(v[0], v[1], v[2], c.stride, c.groups);
          },
          tol);
    }
  }
}

}  // namespace
}  // namespace kvc
