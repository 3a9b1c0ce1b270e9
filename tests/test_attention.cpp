// attention_target and kernels::*::attention_forward: CPU against a naive float64 reference, CUDA
// against the CPU path (outputs poisoned with NaN first), the tensor-core (tf32 / bf16) kernels
// against the same reference within their rounding, and the fallback when grad is needed.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "kernels/attention.h"
#include "kernels/precision.h"
#include "tests/test_util.h"

#ifdef KVC_WITH_CUDA
#include <cuda_runtime.h>

#include "kernels/attention_backward.h"
#include "kernels/cuda/attention_tc.cuh"
#endif

namespace kvc {
namespace {

struct Case {
  int64_t bh, nq, seq, d;
  // std of q and k: large values test the max subtraction. Logits have std spread^2; at 30 the
  // softmax is near one-hot and exp(logit) would overflow without it. Logits of a few hundred
  // with competing keys are left out: float32 rounding of the logits alone (|s| * 2^-24 per term)
  // then moves the probabilities by more than 1e-5, in any float32 implementation.
  double spread;
};

// seq below, at and across the 64-key tile and the CPU's 256-key block; d on and off the fast
// CUDA sizes; nq not a multiple of the 64-query tile.
const std::vector<Case> kCases = {
    {2, 5, 7, 4, 1.0},      {1, 64, 64, 32, 1.0},  {3, 70, 131, 64, 1.0},
    {2, 33, 300, 128, 1.0}, {2, 17, 65, 20, 1.0},  {1, 1, 1, 64, 1.0},
    {2, 9, 257, 64, 30.0},  {1, 130, 97, 32, 1.0}, {1, 40, 520, 128, 2.5}};

// out[b, i, :] = sum_j softmax_j(alpha q_i . k_j) v_j, plain loops in float64.
std::vector<double> reference(const std::vector<double>& q, const std::vector<double>& k,
                              const std::vector<double>& v, const Case& c, double alpha) {
  std::vector<double> out(static_cast<size_t>(c.bh * c.nq * c.d));
  std::vector<double> s(static_cast<size_t>(c.seq));
  for (int64_t b = 0; b < c.bh; ++b) {
    for (int64_t i = 0; i < c.nq; ++i) {
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < c.seq; ++j) {
        double dot = 0;
        for (int64_t e = 0; e < c.d; ++e) {
          dot += q[(b * c.nq + i) * c.d + e] * k[(b * c.seq + j) * c.d + e];
        }
        s[j] = alpha * dot;
        mx = std::max(mx, s[j]);
      }
      double total = 0;
      for (int64_t j = 0; j < c.seq; ++j) total += (s[j] = std::exp(s[j] - mx));
      for (int64_t e = 0; e < c.d; ++e) {
        double acc = 0;
        for (int64_t j = 0; j < c.seq; ++j) acc += s[j] * v[(b * c.seq + j) * c.d + e];
        out[(b * c.nq + i) * c.d + e] = acc / total;
      }
    }
  }
  return out;
}

// A case's sizes in the report of a failed check.
#define CAPTURE_CASE(c) \
  CAPTURE((c).bh);      \
  CAPTURE((c).nq);      \
  CAPTURE((c).seq);     \
  CAPTURE((c).d)

struct Inputs {
  Tensor q, k, v;
};

Inputs make_inputs(const Case& c, DType dtype, uint64_t seed) {
  // Drawn in float64 and cast: every dtype and device sees the same values.
  return {Tensor::randn({c.bh, c.nq, c.d}, seed, 1, 0.0, c.spread, f64()).to(dtype),
          Tensor::randn({c.bh, c.seq, c.d}, seed, 2, 0.0, c.spread, f64()).to(dtype),
          Tensor::randn({c.bh, c.seq, c.d}, seed, 3, 0.0, 1.0, f64()).to(dtype)};
}

// Norm-wise relative error, and every element within tol of the largest reference magnitude.
void check_close(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  REQUIRE(got.size() == want.size());
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (double g : got) REQUIRE(std::isfinite(g));
  CHECK(test::rel_error(got, want) <= tol);
  CHECK(test::max_abs_diff(got, want) <= tol * scale);
}

TEST_CASE("attention_target: CPU matches a naive float64 reference") {
  uint64_t seed = 100;
  for (const Case& c : kCases) {
    const double alpha = 1.0 / std::sqrt(static_cast<double>(c.d));
    for (DType dtype : {DType::f32, DType::f64}) {
      CAPTURE_CASE(c);
      CAPTURE(c.spread);
      const std::string dtype_str = dtype_name(dtype);
      CAPTURE(dtype_str);
      const Inputs in = make_inputs(c, dtype, seed);
      const std::vector<double> want =
          reference(in.q.to_vector(), in.k.to_vector(), in.v.to_vector(), c, alpha);
      const Tensor got = attention_target(in.q, in.k, in.v, alpha);
      CHECK(got.shape() == in.q.shape());
      check_close(got.to_vector(), want, dtype == DType::f32 ? 1e-5 : 1e-12);
    }
    ++seed;
  }
}

TEST_CASE("attention_target: 4-d inputs, grad fallback and shape errors") {
  const Tensor q = Tensor::randn({2, 3, 5, 8}, 1, 0, 0.0, 1.0, f64());
  const Tensor k = Tensor::randn({2, 3, 11, 8}, 2, 0, 0.0, 1.0, f64());
  const Tensor v = Tensor::randn({2, 3, 11, 8}, 3, 0, 0.0, 1.0, f64());
  const Tensor ref = scaled_dot_attention(q, k, v, 0.3);
  CHECK(test::rel_error(attention_target(q, k, v, 0.3), ref) <= 1e-13);
  // With grad needed it must still be differentiable: the recorded op runs instead.
  const Tensor qg = Tensor::randn({2, 3, 5, 8}, 1, 0, 0.0, 1.0, f64()).set_requires_grad(true);
  const Tensor y = attention_target(qg, k, v, 0.3);
  CHECK(y.requires_grad());
  CHECK(test::rel_error(y, ref) <= 1e-13);
  test::check_error(
      [&] {
        attention_target(q, Tensor::zeros({2, 3, 11, 7}, f64()), v, 0.3);
      },
      {"attention_target", "(2, 3, 5, 8)", "(2, 3, 11, 7)"});
  test::check_error(
      [&] {
        attention_target(q, k, Tensor::zeros({2, 3, 10, 8}, f64()), 0.3);
      },
      {"attention_target", "(2, 3, 10, 8)"});
}

// Runs every case on CUDA (raw launcher into a NaN-poisoned output, then the op) against the CPU.
void check_cuda_cases(const std::vector<Case>& cases, uint64_t seed) {
  for (const Case& c : cases) {
    const double alpha = 1.0 / std::sqrt(static_cast<double>(c.d));
    for (DType dtype : {DType::f32, DType::f64}) {
      if (dtype == DType::f64 && c.seq > 2000) continue;  // the float64 kernel is the slow one
      CAPTURE_CASE(c);
      const std::string dtype_str = dtype_name(dtype);
      CAPTURE(dtype_str);
      const Inputs in = make_inputs(c, dtype, seed);
      const Tensor want = attention_target(in.q, in.k, in.v, alpha);
      const Device gpu = Device::cuda();
      const Tensor q = in.q.to(gpu), k = in.k.to(gpu), v = in.v.to(gpu);
      Tensor out = Tensor::empty(q.shape(), q.options());
      out.fill_(std::numeric_limits<double>::quiet_NaN());
#ifdef KVC_WITH_CUDA
      if (dtype == DType::f32) {
        kernels::cuda::attention_forward<float>(q.data<float>(), k.data<float>(), v.data<float>(),
                                                out.data<float>(), c.bh, c.nq, c.seq, c.d, alpha);
      } else {
        kernels::cuda::attention_forward<double>(q.data<double>(), k.data<double>(),
                                                 v.data<double>(), out.data<double>(), c.bh, c.nq,
                                                 c.seq, c.d, alpha);
      }
#endif
      const double tol = dtype == DType::f32 ? 1e-5 : 1e-12;
      check_close(out.to_vector(), want.to_vector(), tol);
      // The op on CUDA tensors reaches the same kernels.
      check_close(attention_target(q, k, v, alpha).to_vector(), want.to_vector(), tol);
    }
    ++seed;
  }
}

TEST_CASE("cuda: attention_forward matches the CPU path (outputs poisoned first)") {
  KVC_REQUIRE_CUDA();
  std::vector<Case> cases = kCases;
  cases.push_back({2, 100, 1000, 48, 1.0});  // float through the generic kernel
  check_cuda_cases(cases, 500);
}

TEST_CASE("cuda: attention_forward at the nsa target size") {
  KVC_REQUIRE_CUDA();
  check_cuda_cases({{8, 512, 8192, 64, 1.0}, {1, 256, 20000, 128, 1.0}}, 900);
}

TEST_CASE("cuda: attention_forward with the keys split over CTAs") {
  KVC_REQUIRE_CUDA();
  // Few query tiles and many keys: the float kernel splits the keys and combines the partial
  // results. seq is no multiple of the 64-key tile, so the last split ends in a partial tile.
  check_cuda_cases({{2, 64, 50000, 128, 1.0}, {1, 70, 30011, 64, 2.0}, {1, 33, 9000, 32, 1.0}},
                   1300);
}

#ifdef KVC_WITH_CUDA
// The tensor-core kernels against the exact float32 CPU path, within the rounding of their
// operands: TF32 keeps 10 mantissa bits (relative rounding 2^-11), bf16 keeps 7 (2^-8). With
// logits of unit spread the outputs then differ by ~3e-4 (tf32) and ~3e-3 (bf16) norm-wise; the
// bounds below leave 3-5x. The error must also exceed the FP32 kernel's (< 1e-6), which shows
// that the rounded path really ran.
void check_tensor_core_cases(kernels::MathPrecision precision, double tol,
                             const std::vector<Case>& cases, uint64_t seed) {
  for (const Case& c : cases) {
    CAPTURE_CASE(c);
    const double alpha = 1.0 / std::sqrt(static_cast<double>(c.d));
    const Inputs in = make_inputs(c, DType::f32, seed++);
    const std::vector<double> want = attention_target(in.q, in.k, in.v, alpha).to_vector();
    const Device gpu = Device::cuda();
    const Tensor q = in.q.to(gpu), k = in.k.to(gpu), v = in.v.to(gpu);
    Tensor out = Tensor::empty(q.shape(), q.options());
    out.fill_(std::numeric_limits<double>::quiet_NaN());
    test::PrecisionScope scope(precision);
    kernels::cuda::attention_forward<float>(q.data<float>(), k.data<float>(), v.data<float>(),
                                            out.data<float>(), c.bh, c.nq, c.seq, c.d, alpha);
    const std::vector<double> got = out.to_vector();
    check_close(got, want, tol);
    const double err = test::rel_error(got, want);
    MESSAGE(std::string(kernels::precision_name(precision)), " rel error ", err, " (bh ", c.bh,
            ", nq ", c.nq, ", seq ", c.seq, ", d ", c.d, ")");
    CHECK(err > 1e-6);
    check_close(attention_target(q, k, v, alpha).to_vector(), want, tol);  // the op, same path
    // The mma.sync kernel, which GPUs other than Hopper run (the call above may have taken the
    // warpgroup-MMA one: bf16 and TF32 at d 64 and 128).
    out.fill_(std::numeric_limits<double>::quiet_NaN());
    kernels::cuda::attention_forward_tc(q.data<float>(), k.data<float>(), v.data<float>(),
                                        out.data<float>(), c.bh, c.nq, c.seq, c.d, alpha, precision,
                                        nullptr, kernels::cuda::TcKernel::mma_sync);
    const std::vector<double> sync = out.to_vector();
    check_close(sync, want, tol);
    MESSAGE(std::string(kernels::precision_name(precision)), " mma.sync rel error ",
            test::rel_error(sync, want));
    CHECK(test::rel_error(sync, want) > 1e-6);
  }
}

// d = 32, 64, 128; nq off the 64- and 128-query tiles; seq off the 32/64-key tiles; one key.
const std::vector<Case> kTensorCoreSmall = {
    {2, 70, 131, 64, 1.0}, {1, 130, 97, 32, 1.0}, {2, 33, 300, 128, 1.0}, {1, 1, 1, 64, 1.0}};
// Long key ranges with few query tiles (split over CTAs and combined), and the nsa target.
const std::vector<Case> kTensorCoreLarge = {{2, 64, 50001, 128, 1.0},
                                            {1, 70, 30011, 64, 1.0},
                                            {1, 33, 9000, 32, 1.0},
                                            {8, 512, 8192, 64, 1.0}};
#endif

TEST_CASE("cuda: tensor-core attention_forward (tf32, bf16) matches the CPU path, small shapes") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  check_tensor_core_cases(kernels::MathPrecision::tf32, 2e-3, kTensorCoreSmall, 2100);
  check_tensor_core_cases(kernels::MathPrecision::bf16, 1.5e-2, kTensorCoreSmall, 2200);
#endif
}

TEST_CASE("cuda: the warpgroup-MMA attention kernel runs where the GPU and the build allow it") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  int device = 0, major = 0, minor = 0;
  REQUIRE(cudaGetDevice(&device) == cudaSuccess);
  REQUIRE(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess);
  REQUIRE(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess);
#ifdef KVC_HAVE_SM90A
  CHECK(kernels::cuda::attention_wgmma_available() == (major == 9 && minor == 0));
#else
  CHECK_FALSE(kernels::cuda::attention_wgmma_available());
#endif
  MESSAGE("compute capability ", major, ".", minor, ", warpgroup MMA ",
          std::string(kernels::cuda::attention_wgmma_available() ? "on" : "off"));
#endif
}

TEST_CASE("cuda: tensor-core attention_forward (tf32, bf16) matches the CPU path, split keys") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  check_tensor_core_cases(kernels::MathPrecision::tf32, 2e-3, kTensorCoreLarge, 2300);
  check_tensor_core_cases(kernels::MathPrecision::bf16, 1.5e-2, kTensorCoreLarge, 2400);
#endif
}

TEST_CASE(
    "cuda: float32 attention on split TF32 products (Hopper, d 64 and 128) keeps float32's error") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  if (!kernels::cuda::attention_wgmma_available()) {
    MESSAGE("no warpgroup MMA on this GPU or build: float32 attention runs the FFMA kernel only");
    return;
  }
  // Against float64 on the CPU, the split kernel's error next to the FFMA kernel's on the same
  // float32 inputs. Each operand is hi + lo, both TF32 rounded to nearest, so a product is off
  // by ~2^-21 relative (the dropped lo lo term and lo's rounding), against float32's 2^-24 a
  // rounding: the split kernel's error may be a few times the FFMA kernel's, and must stay two
  // orders below TF32's (4e-4 to 7e-4 here). Cases, at both head sizes (d = 128 has its own
  // kernel, q in shared memory): nq and seq off the tiles, one key, large logits, keys split over
  // CTAs, the nsa target (d 64), more than one query tile (d 128), and causal rows (1 visible key
  // to all of them).
  struct SplitCase {
    Case c;
    bool causal;
  };
  const std::vector<SplitCase> cases = {
      {{3, 70, 131, 64, 1.0}, false},    {{1, 1, 1, 64, 1.0}, false},
      {{2, 9, 257, 64, 3.0}, false},     {{1, 70, 30011, 64, 1.0}, false},
      {{8, 512, 8192, 64, 1.0}, false},  {{2, 70, 9001, 64, 1.0}, true},
      {{3, 70, 131, 128, 1.0}, false},   {{1, 1, 1, 128, 1.0}, false},
      {{2, 9, 257, 128, 3.0}, false},    {{1, 70, 30011, 128, 1.0}, false},
      {{2, 300, 4099, 128, 1.0}, false}, {{2, 300, 9001, 128, 1.0}, true}};
  for (size_t i = 0; i < cases.size(); ++i) {
    const SplitCase& m = cases[i];
    const Case& c = m.c;
    // One subcase a shape, so that a run may pick one (the sanitizers take the small ones).
    const std::string name = "d " + std::to_string(c.d) + ", bh " + std::to_string(c.bh) + ", nq " +
                             std::to_string(c.nq) + ", seq " + std::to_string(c.seq) +
                             (m.causal ? ", causal" : "");
    SUBCASE(name.c_str()) {
      CAPTURE_CASE(c);
      CAPTURE(m.causal);
      const double alpha = 1.0 / std::sqrt(static_cast<double>(c.d));
      const Inputs in = make_inputs(c, DType::f32, 3100 + i);
      VisibleCounts cpu_vis, gpu_vis;
      if (m.causal) {  // rows see key counts 1 .. seq (test_nsa.cpp's positions)
        std::vector<double> p(static_cast<size_t>(c.nq));
        for (int64_t r = 0; r < c.nq; ++r) p[static_cast<size_t>(r)] = (r * 7919) % c.seq;
        p[0] = 0, p[1] = static_cast<double>(c.seq - 1);
        const Tensor positions = Tensor::from_vector(p, {1, c.nq}, f32());
        cpu_vis = visible_counts(positions, c.bh, 0, 1, c.seq);
        gpu_vis = visible_counts(positions.to(Device::cuda()), c.bh, 0, 1, c.seq);
      }
      NoGradGuard ng;
      const std::vector<double> want = attention_target(in.q.to(DType::f64), in.k.to(DType::f64),
                                                        in.v.to(DType::f64), alpha, cpu_vis)
                                           .to_vector();
      const Tensor q = in.q.to(Device::cuda()), k = in.k.to(Device::cuda()),
                   v = in.v.to(Device::cuda());
      const auto run = [&](bool split) {
        kernels::cuda::set_split_fp32_attention(split);
        Tensor out = Tensor::empty(q.shape(), q.options());
        out.fill_(std::numeric_limits<double>::quiet_NaN());
        kernels::cuda::attention_forward<float>(q.data<float>(), k.data<float>(), v.data<float>(),
                                                out.data<float>(), c.bh, c.nq, c.seq, c.d, alpha,
                                                m.causal ? gpu_vis.data() : nullptr);
        kernels::cuda::set_split_fp32_attention(true);
        return out.to_vector();
      };
      const std::vector<double> ffma = run(false), split = run(true);
      const double e_ffma = test::rel_error(ffma, want), e_split = test::rel_error(split, want);
      MESSAGE("float32 attention rel error: split TF32 ", e_split, ", FFMA ", e_ffma, " (", name,
              ")");
      check_close(split, want, 3e-6);
      CHECK(e_split <= std::max(4 * e_ffma, 1e-6));
      CHECK(split != ffma);  // the split kernel ran, not the FFMA one
      // A batch-head a chunk (1 byte of scratch asked for; the key splits may differ): the same
      // accuracy, and the rows' log-sum-exps of one chunk of all.
      Tensor chunked = Tensor::empty(q.shape(), q.options());
      Tensor lse_one = Tensor::zeros({c.bh * c.nq}, q.options()), lse_all = lse_one.clone();
      kernels::cuda::attention_forward_wgmma_split(
          q.data<float>(), k.data<float>(), v.data<float>(), chunked.data<float>(), c.bh, c.nq,
          c.seq, c.d, alpha, m.causal ? gpu_vis.data() : nullptr, lse_one.data<float>(), 1);
      check_close(chunked.to_vector(), want, 3e-6);
      kernels::cuda::attention_forward_wgmma_split(
          q.data<float>(), k.data<float>(), v.data<float>(), chunked.data<float>(), c.bh, c.nq,
          c.seq, c.d, alpha, m.causal ? gpu_vis.data() : nullptr, lse_all.data<float>());
      CHECK(test::rel_error(lse_one, lse_all) < 1e-6);
    }
  }
#endif
}

#ifdef KVC_WITH_CUDA
// scaled_dot_attention's output and K and V gradients for queries without grad (the attention
// over compressed blocks), which bf16 on CUDA computes by the flash pair (kernels/
// attention_backward.h: a forward keeping the rows' log-sum-exp, one backward pass recomputing P
// from it), against float64 on the CPU. The products round q, k, v, P and gy to bf16 (2^-8
// relative), so with unit-spread logits the gradients differ by ~3e-3 norm-wise; the bound leaves
// ~8x, and the error must exceed float32's (< 1e-5): the bf16 path really ran.
struct KvGrads {
  Tensor y, gk, gv;
};
KvGrads attention_kv_grads(int64_t b, int64_t h, int64_t m, int64_t s, int64_t d, bool masked,
                           DType dtype, Device device, int passes) {
  const TensorOptions opt = TensorOptions{}.with_dtype(DType::f64);
  const Tensor q = Tensor::randn({b, h, m, d}, 801, 0, 0.0, 1.0, opt).to(dtype).to(device);
  Tensor k = Tensor::randn({b, h, s, d}, 802, 0, 0.0, 1.0, opt).to(dtype).to(device);
  Tensor v = Tensor::randn({b, h, s, d}, 803, 0, 0.0, 1.0, opt).to(dtype).to(device);
  const Tensor gy = Tensor::randn({b, h, m, d}, 804, 0, 0.0, 1.0, opt).to(dtype).to(device);
  k.set_requires_grad(true);
  v.set_requires_grad(true);
  VisibleCounts visible;
  if (masked) {  // positions in [0, s + 8): rows before key 8 see nothing, late ones everything
    std::vector<double> pos(static_cast<size_t>(b * m));
    for (size_t i = 0; i < pos.size(); ++i) pos[i] = static_cast<double>((i * 37) % (s + 8));
    const Tensor at = Tensor::from_vector(pos, {b, m}, opt).to(dtype).to(device);
    visible = visible_counts(at, h, 8, 1, s);
  }
  Tensor y;
  for (int i = 0; i < passes; ++i) {
    y = scaled_dot_attention(q, k, v, 1.0 / std::sqrt(static_cast<double>(d)), visible);
    backward(y, gy);
  }
  return {y.to(DType::f64).to(Device::cpu()), k.grad().to(DType::f64).to(Device::cpu()),
          v.grad().to(DType::f64).to(Device::cpu())};
}
#endif

TEST_CASE("cuda: scaled_dot_attention's flash bf16 forward and K, V gradients match the CPU") {
  KVC_REQUIRE_CUDA();
#ifdef KVC_WITH_CUDA
  test::PrecisionScope scope(kernels::MathPrecision::bf16);
  struct KvCase {
    int64_t b, h, m, s, d;
    bool masked;
  };
  // d 64 and 128; keys off the 64-key tile (100, 37: 37 in the last) and on it; query rows off
  // the 32-row tile; causal counts with rows that see nothing; the nsa compressed attention; 1100
  // keys for 40 rows, which the forward splits over CTAs (the log-sum-exp from the merge), masked
  // too (rows that see no key in any split).
  const std::vector<KvCase> cases = {{1, 2, 45, 100, 64, false}, {1, 1, 40, 1100, 64, false},
                                     {2, 3, 70, 128, 128, true}, {1, 1, 32, 64, 128, false},
                                     {1, 2, 7, 37, 64, true},    {4, 8, 512, 512, 64, true},
                                     {1, 1, 40, 1100, 128, true}};
  for (const KvCase& c : cases) {
    CAPTURE(c.b);
    CAPTURE(c.h);
    CAPTURE(c.m);
    CAPTURE(c.s);
    CAPTURE(c.d);
    CAPTURE(c.masked);
    REQUIRE(kernels::cuda::attention_kv_fused_fits(c.d, c.d));
    const KvGrads want =
        attention_kv_grads(c.b, c.h, c.m, c.s, c.d, c.masked, DType::f64, Device::cpu(), 1);
    const KvGrads got =
        attention_kv_grads(c.b, c.h, c.m, c.s, c.d, c.masked, DType::f32, Device::cuda(), 1);
    const double ek = test::rel_error(got.gk, want.gk), ev = test::rel_error(got.gv, want.gv);
    CHECK(test::rel_error(got.y, want.y) < 1.5e-2);
    MESSAGE("bf16 fused K / V gradients: rel error ", ek, " / ", ev, " (b ", c.b, ", h ", c.h,
            ", m ", c.m, ", s ", c.s, ", d ", c.d, std::string(c.masked ? ", masked)" : ")"));
    CHECK(ek < 2.5e-2);
    CHECK(ev < 2.5e-2);
    CHECK(ek > 1e-5);
    CHECK(ev > 1e-5);
    // A second backward adds onto the first's gradients.
    const KvGrads twice =
        attention_kv_grads(c.b, c.h, c.m, c.s, c.d, c.masked, DType::f32, Device::cuda(), 2);
    const std::vector<double> k1 = got.gk.to_vector(), k2 = twice.gk.to_vector();
    const std::vector<double> v1 = got.gv.to_vector(), v2 = twice.gv.to_vector();
    for (size_t i = 0; i < k1.size(); ++i) CHECK(k2[i] == doctest::Approx(2 * k1[i]).epsilon(1e-5));
    for (size_t i = 0; i < v1.size(); ++i) CHECK(v2[i] == doctest::Approx(2 * v1[i]).epsilon(1e-5));
  }
#endif
}

}  // namespace
}  // namespace kvc
