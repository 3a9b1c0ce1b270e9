// The CUDA runtime pieces: the clear error without a GPU, device round trips, identical random
// streams and dropout masks on both backends, the caching allocator's steady state, and the
// Adam / synthetic-data kernels against their CPU twins.
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/storage.h"
#include "data/synthetic.h"
#include "kernels/adam.h"
#ifdef KVC_WITH_CUDA
#include "kernels/cuda/cublas_loader.h"
#endif
#include "kernels/gemm.h"
#include "kernels/memory.h"
#include "kernels/precision.h"
#include "kernels/synthetic.h"
#include "nn/compressor_pair.h"
#include "optim/adam.h"
#include "tests/test_train_util.h"
#include "tests/test_util.h"

namespace kvc {
namespace {

#ifdef KVC_WITH_CUDA
// Needs the CUDA toolkit's libraries, not a GPU. cuBLAS and cuBLASLt are opened at their first
// call (kernels/cuda/cublas_loader.cpp): every function the library calls is found by its name in
// the libraries opened (the link already checked that each has a forward).
TEST_CASE("cuda: cuBLAS and cuBLASLt, opened at first use, have every function the library calls") {
  CHECK_NOTHROW(kernels::cuda::load_cublas());
}

// A process that multiplies nothing on a GPU does not load cuBLAS (whose start-up took ~0.4 s and
// ~210 MB in every process while it was linked).
TEST_CASE("cuda: kvcompress --version does not load cuBLAS") {
  const test::TempDir dir("cublas_lazy");
  const test::RunResult r =
      test::run_shell("LD_DEBUG=libs " + test::kvcompress_binary() + " --version", dir.path);
  INFO(r.out, r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.err.find("libcudart") != std::string::npos);  // LD_DEBUG lists what it loads
  CHECK(r.err.find("libcublas") == std::string::npos);
}
#endif

// Runs even without a GPU (CPU-only and CUDA builds alike): that path must fail clearly.
TEST_CASE("cuda: asking for cuda without a GPU is a clear kvc::Error") {
  if (cuda_available()) {
    CHECK(cuda_unavailable_reason().empty());
    return;
  }
  CHECK_FALSE(cuda_unavailable_reason().empty());
  bool thrown = false;
  try {
    Tensor::zeros({2}, f32().with_device(Device::cuda()));
  } catch (const Error& e) {
    thrown = true;
    const std::string msg = e.what();
    INFO("message: ", msg);
    CHECK(msg.find("cuda") != std::string::npos);
  }
  CHECK(thrown);
}

#ifdef KVC_WITH_CUDA

TEST_CASE("cuda: to(cuda) and back is exact for both dtypes and casts run on the device") {
  KVC_REQUIRE_CUDA();
  for (DType dt : {DType::f32, DType::f64}) {
    const Tensor a = Tensor::randn({3, 257}, 5, 0, 0.0, 1.0, TensorOptions{}.with_dtype(dt));
    const Tensor g = a.to(Device::cuda());
    CHECK(g.device().is_cuda());
    CHECK(g.shape() == a.shape());
    const Tensor back = g.to(Device::cpu());
    CHECK(back.device().is_cpu());
    CHECK(std::memcmp(back.raw_data(), a.raw_data(), a.nbytes()) == 0);
    CHECK(g.clone().to_vector() == a.to_vector());
    const DType other = dt == DType::f32 ? DType::f64 : DType::f32;
    CHECK(g.to(other).to(Device::cpu()).to_vector() == a.to(other).to_vector());
  }
  const Tensor s = Tensor::scalar(2.5, f32().with_device(Device::cuda()));
  CHECK(s.item() == 2.5);
  const Tensor r = Tensor::arange(1000, f64().with_device(Device::cuda()));
  CHECK(r.to_vector() == Tensor::arange(1000, f64()).to_vector());
  const Tensor f = Tensor::full({5, 7}, -3.25, f32().with_device(Device::cuda()));
  CHECK(f.to_vector() == std::vector<double>(35, -3.25));
}

TEST_CASE("cuda: rand streams are bit-identical to the CPU and randn within the last bits") {
  KVC_REQUIRE_CUDA();
  const Shape shape{1001, 3};  // odd size: the last Philox block is partial
  for (DType dt : {DType::f32, DType::f64}) {
    const TensorOptions cpu = TensorOptions{}.with_dtype(dt);
    const TensorOptions gpu = TensorOptions{}.with_dtype(dt).with_device(Device::cuda());
    INFO("dtype ", std::string(dtype_name(dt)));
    CHECK(Tensor::rand(shape, 77, 3, -2.0, 5.0, gpu).to_vector() ==
          Tensor::rand(shape, 77, 3, -2.0, 5.0, cpu).to_vector());
    // Box-Muller uses log, sin and cos: CUDA's double versions are within 2 ulp of glibc's, so
    // float64 may differ in the last bits and float32 almost never (a rounding-boundary case).
    const std::vector<double> a = Tensor::randn(shape, 78, 4, 1.0, 3.0, gpu).to_vector();
    const std::vector<double> b = Tensor::randn(shape, 78, 4, 1.0, 3.0, cpu).to_vector();
    // Differences are measured against the scale of the draw (std 3): near the mean a last-bit
    // difference of std * z would look large relative to the value itself.
    size_t differ = 0;
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i] != b[i]) ++differ;
      worst = std::fmax(worst, std::fabs(a[i] - b[i]) / (std::fabs(b[i]) + 3.0));
    }
    MESSAGE("randn ", std::string(dtype_name(dt)), ": ", differ, " of ", a.size(),
            " elements differ, worst difference relative to |x| + std ", worst);
    CHECK(worst <= (dt == DType::f32 ? 2.5e-7 : 1e-15));
    if (dt == DType::f32) CHECK(differ <= a.size() / 1000);
  }
}

TEST_CASE("cuda: dropout masks are identical across devices for the same seed and offset") {
  KVC_REQUIRE_CUDA();
  for (DType dt : {DType::f32, DType::f64}) {
    const Tensor ones = Tensor::ones({333, 7}, TensorOptions{}.with_dtype(dt));
    for (double p : {0.1, 0.5, 0.9}) {
      const Tensor c = dropout(ones, p, true, 42, 9);
      const Tensor g = dropout(ones.to(Device::cuda()), p, true, 42, 9);
      CHECK(g.to_vector() == c.to_vector());  // mask and scale, bit for bit
      const std::vector<double> v = c.to_vector();
      size_t kept = 0;
      for (double x : v) kept += x != 0;
      CHECK(std::fabs(static_cast<double>(kept) / v.size() - (1 - p)) < 0.05);
    }
    // Another offset draws another mask.
    CHECK(dropout(ones.to(Device::cuda()), 0.5, true, 42, 10).to_vector() !=
          dropout(ones, 0.5, true, 42, 9).to_vector());
  }
}

TEST_CASE("cuda: a repeated training step allocates no device memory after warm-up") {
  KVC_REQUIRE_CUDA();
  const TensorOptions opt = f32().with_device(Device::cuda());
  Tensor w1 = Tensor::randn({32, 64}, 1, 0, 0.0, 0.1, opt).set_requires_grad(true);
  Tensor w2 = Tensor::randn({64, 16}, 2, 0, 0.0, 0.1, opt).set_requires_grad(true);
  Tensor x = Tensor::randn({8, 10, 32}, 3, 0, 0.0, 1.0, opt);
  Tensor target = Tensor::randn({8, 10, 16}, 4, 0, 0.0, 1.0, opt);
  auto step = [&] {
    const Tensor h = dropout(gelu(matmul(x, w1)), 0.1, true, 7, 0);
    const Tensor y = softmax(matmul(h, w2), -1);
    const Tensor loss = mse_loss(add(y, sum(y, 0, true)), target);
    backward(loss);
    w1.zero_grad();
    w2.zero_grad();
  };
  step();
  step();
  const kernels::cuda::AllocatorStats before = kernels::cuda::allocator_stats();
  for (int i = 0; i < 5; ++i) step();
  const kernels::cuda::AllocatorStats after = kernels::cuda::allocator_stats();
  CHECK(after.device_allocations == before.device_allocations);
  CHECK(after.bytes_in_use == before.bytes_in_use);
  CHECK(after.peak_bytes_in_use >= after.bytes_in_use);
  CHECK(after.bytes_cached > 0);

  // empty_cache returns every raw allocation that is wholly cached to the driver (here all of
  // them: these tensors are small blocks, never carved out of a shared one); tensors still alive
  // are untouched.
  kernels::cuda::empty_cache();
  const kernels::cuda::AllocatorStats emptied = kernels::cuda::allocator_stats();
  CHECK(emptied.bytes_cached == 0);
  CHECK(emptied.device_frees > after.device_frees);
  CHECK(emptied.bytes_in_use == after.bytes_in_use);
  CHECK(w1.to_vector().size() == 32 * 64);
}

TEST_CASE("cuda: the allocator rounds a block to 512 B up to 1 MiB and to 2 MiB above") {
  KVC_REQUIRE_CUDA();
  constexpr size_t kMiB = size_t{1} << 20;
  // (bytes asked, bytes the block holds): the closed form of the two size classes.
  const std::vector<std::pair<size_t, size_t>> cases = {{1, 512},
                                                        {513, 1024},
                                                        {kMiB, kMiB},
                                                        {kMiB + 1, 2 * kMiB},
                                                        {33 * kMiB + 1, 34 * kMiB},
                                                        {1056 * kMiB + 7, 1058 * kMiB}};
  for (const auto& [bytes, held] : cases) {
    CAPTURE(bytes);
    const size_t before = kernels::cuda::allocator_stats().bytes_in_use;
    void* p = kernels::cuda::alloc(bytes, 0);
    CHECK(kernels::cuda::allocator_stats().bytes_in_use - before == held);
    kernels::cuda::free(p, 0);
    CHECK(kernels::cuda::allocator_stats().bytes_in_use == before);
  }
}

// An optimizer's gradients live in on-demand storage: on CUDA release() parks the block, so the
// next data() gets the same memory back (no other tensor took it meanwhile), and empty_cache
// reclaims it, after which data() allocates anew.
TEST_CASE("cuda: on-demand storage parks its block on release and takes it back") {
  KVC_REQUIRE_CUDA();
  constexpr size_t kBytes = size_t{6} << 20;  // a large block: 6 MiB, a class of its own
  Storage grad(kBytes, Device::cuda(), Storage::OnDemand{});
  void* first = grad.data();
  const kernels::cuda::AllocatorStats before = kernels::cuda::allocator_stats();
  CHECK(grad.release());
  CHECK_FALSE(grad.allocated());
  kernels::cuda::AllocatorStats s = kernels::cuda::allocator_stats();
  CHECK(s.bytes_parked == before.bytes_parked + kBytes);
  CHECK(s.bytes_in_use == before.bytes_in_use - kBytes);
  // A tensor's request of the same size gets other memory while the block is parked.
  void* other = kernels::cuda::alloc(kBytes, 0);
  CHECK(other != first);
  CHECK(grad.data() == first);
  CHECK(grad.allocations() == 2);
  CHECK(kernels::cuda::allocator_stats().bytes_parked == before.bytes_parked);
  kernels::cuda::free(other, 0);
  CHECK(grad.release());
  kernels::cuda::empty_cache();
  CHECK(kernels::cuda::allocator_stats().bytes_parked == 0);
  CHECK(grad.data() != nullptr);  // reclaimed: allocated anew
  CHECK(grad.allocations() == 3);
}

// The same for the real thing: a distill step of a compressor pair (dropout on) with Adam and
// clipping, on synthetic batches drawn on the device.
TEST_CASE("cuda: a compressor pair's training step allocates nothing after warm-up") {
  KVC_REQUIRE_CUDA();
  for (const char* kind : {"efficient_conv", "enhanced_mlp", "attention_pool"}) {
    INFO(kind);
    CompressorOptions o;
    o.kind = kind;
    o.heads = 2;
    o.dim_head = 16;
    o.block = 4;
    o.dropout = 0.1;
    o.device = Device::cuda();
    CompressorPair pair(o);
    Adam adam(pair.named_parameters(), AdamOptions{});
    KVShape shape;
    shape.heads = 2;
    shape.dim_head = 16;
    shape.seq = 64;
    shape.queries = 8;
    SyntheticKV data(shape, 0, Device::cuda());
    auto step = [&] {
      const Batch b = data.next();
      adam.zero_grad();
      const Tensor loss = pair.distill_loss(b.q, b.k, b.v);
      backward(loss);
      adam.set_clip_scale(1.0);
      adam.step();
    };
    step();
    step();
    const kernels::cuda::AllocatorStats before = kernels::cuda::allocator_stats();
    for (int i = 0; i < 4; ++i) step();
    const kernels::cuda::AllocatorStats after = kernels::cuda::allocator_stats();
    CHECK(after.device_allocations == before.device_allocations);
    CHECK(after.bytes_in_use == before.bytes_in_use);
  }
}

TEST_CASE("cuda: running out of device memory throws OutOfMemoryError naming the bytes") {
  KVC_REQUIRE_CUDA();
  bool thrown = false;
  try {
    // 2^50 bytes: more than any GPU has.
    Tensor::empty({int64_t{1} << 48}, f32().with_device(Device::cuda()));
  } catch (const OutOfMemoryError& e) {
    thrown = true;
    const std::string msg = e.what();
    INFO("message: ", msg);
    CHECK(msg.find("out of GPU memory") != std::string::npos);
    CHECK(msg.find(std::to_string(size_t{1} << 50)) != std::string::npos);
  }
  CHECK(thrown);
  // The device is still usable afterwards.
  CHECK(Tensor::ones({4}, f32().with_device(Device::cuda())).to_vector() ==
        std::vector<double>(4, 1.0));
}

TEST_CASE("cuda: set_math_precision switches float32 GEMMs to TF32 / bf16 tensor cores and back") {
  KVC_REQUIRE_CUDA();
  using kernels::MathPrecision;
  test::PrecisionScope restore(kernels::cuda::math_precision());  // set again below
  // A compute-bound product (~340 FLOPs per byte of float32 operands): bf16 rounds them.
  const Tensor a = Tensor::randn({2048, 2048}, 21, 0), b = Tensor::randn({2048, 2048}, 22, 0);
  const Tensor ref = matmul(a.to(DType::f64), b.to(DType::f64));
  const Tensor ag = a.to(Device::cuda()), bg = b.to(Device::cuda());
  auto error_with = [&](MathPrecision p, const Tensor& x, const Tensor& y, const Tensor& want) {
    kernels::cuda::set_math_precision(p);
    CHECK(kernels::cuda::math_precision() == p);
    return test::rel_error(matmul(x, y).to(DType::f64), want);
  };
  const double fp32 = error_with(MathPrecision::fp32, ag, bg, ref);
  const double tf32 = error_with(MathPrecision::tf32, ag, bg, ref);
  const double bf16 = error_with(MathPrecision::bf16, ag, bg, ref);
  MESSAGE("matmul rel error vs float64: fp32 ", fp32, ", tf32 ", tf32, ", bf16 ", bf16);
  CHECK(fp32 < 1e-6);
  CHECK(tf32 < 3e-3);       // TF32 keeps 10 mantissa bits: about 1e-4..1e-3 here
  CHECK(tf32 > 10 * fp32);  // and the setting really reached cuBLAS
  CHECK(bf16 < 1.5e-2);     // bf16 keeps 7: about 2e-3..4e-3 here
  CHECK(bf16 > 3 * tf32);   // operands really rounded to bf16 (not cuBLAS's TF32 kernels)
  CHECK(error_with(MathPrecision::fp32, ag, bg, ref) == fp32);  // and back

  // A memory-bound one (a thin weight over many rows, ~30 FLOPs per byte): a bf16 conversion
  // pass would cost more than it saves, so bf16 mode runs it on TF32 tensor cores: the error is
  // TF32's, not bf16's.
  const Tensor x = Tensor::randn({8192, 128}, 23, 0), w = Tensor::randn({128, 64}, 24, 0);
  const Tensor xw = matmul(x.to(DType::f64), w.to(DType::f64));
  const Tensor xg = x.to(Device::cuda()), wg = w.to(Device::cuda());
  const double thin_tf32 = error_with(MathPrecision::tf32, xg, wg, xw);
  const double thin_bf16 = error_with(MathPrecision::bf16, xg, wg, xw);
  MESSAGE("thin matmul rel error: tf32 ", thin_tf32, ", bf16 mode ", thin_bf16);
  CHECK(thin_tf32 > 10 * error_with(MathPrecision::fp32, xg, wg, xw));
  CHECK(thin_bf16 < 2 * thin_tf32);
}

template <typename T>
std::vector<T> host_copy(const Tensor& t) {
  const Tensor c = t.to(Device::cpu());
  return std::vector<T>(c.data<T>(), c.data<T>() + c.numel());
}

TEST_CASE("cuda: Adam step and grad-norm scale match the CPU kernels") {
  KVC_REQUIRE_CUDA();
  const int64_t n = 100003;
  for (bool decoupled : {false, true}) {
    kernels::AdamStepArgs args;
    args.lr = 1e-2;
    args.weight_decay = 0.01;
    args.decoupled = decoupled;
    args.step = 3;
    Tensor p = Tensor::randn({n}, 1, 0), g = Tensor::randn({n}, 2, 0);
    Tensor m = Tensor::randn({n}, 3, 0, 0.0, 0.1), v = Tensor::rand({n}, 4, 0, 0.0, 0.1);
    Tensor scale = Tensor::full({1}, 0.5);
    Tensor pg = p.to(Device::cuda()), gg = g.to(Device::cuda()), mg = m.to(Device::cuda()),
           vg = v.to(Device::cuda()), sg = scale.to(Device::cuda());
    kernels::cpu::adam_step<float>(p.data<float>(), g.data<float>(), m.data<float>(),
                                   v.data<float>(), n, args, scale.data<float>());
    kernels::cuda::adam_step<float>(pg.data<float>(), gg.data<float>(), mg.data<float>(),
                                    vg.data<float>(), n, args, sg.data<float>());
    INFO("decoupled ", decoupled);
    // Same operations, unfused on both sides: the bits agree.
    CHECK(host_copy<float>(pg) == std::vector<float>(p.data<float>(), p.data<float>() + n));
    CHECK(host_copy<float>(mg) == std::vector<float>(m.data<float>(), m.data<float>() + n));
    CHECK(host_copy<float>(vg) == std::vector<float>(v.data<float>(), v.data<float>() + n));
  }
  const Tensor g = Tensor::randn({n}, 5, 0, 0.0, 1.0, f64());
  Tensor ns = Tensor::zeros({2}, f64());
  Tensor nsg = Tensor::zeros({2}, f64().with_device(Device::cuda()));
  const kernels::GradSpan<double> whole{g.data<double>(), n};
  kernels::cpu::grad_norm_scale<double>(&whole, 1, 1.0, ns.data<double>());
  // On the device over three spans of the same values, one of them empty.
  const Tensor gd = g.to(Device::cuda());
  const double* d = gd.data<double>();
  const kernels::GradSpan<double> parts[3] = {{d, n / 3}, {d + n / 3, 0}, {d + n / 3, n - n / 3}};
  kernels::cuda::grad_norm_scale<double>(parts, 3, 1.0, nsg.data<double>());
  CHECK(test::rel_error(nsg, ns) < 1e-13);
}

TEST_CASE("cuda: synthetic-data kernels match the CPU bit for bit") {
  KVC_REQUIRE_CUDA();
  const int64_t b = 3, seq = 500, r = 8, nq = 37;
  const Tensor z0 = Tensor::randn({b, seq, r}, 11, 0);
  Tensor zc = z0.clone(), zg = z0.to(Device::cuda());
  kernels::cpu::ar1_scan<float>(zc.data<float>(), b, seq, r, 0.9);
  kernels::cuda::ar1_scan<float>(zg.data<float>(), b, seq, r, 0.9);
  CHECK(zg.to_vector() == zc.to_vector());
  Tensor qc = Tensor::empty({b, nq, r}),
         qg = Tensor::empty({b, nq, r}, f32().with_device(Device::cuda()));
  kernels::cpu::gather_random_rows<float>(zc.data<float>(), qc.data<float>(), b, seq, r, nq, 5, 6);
  kernels::cuda::gather_random_rows<float>(zg.data<float>(), qg.data<float>(), b, seq, r, nq, 5, 6);
  CHECK(qg.to_vector() == qc.to_vector());
}

#endif  // KVC_WITH_CUDA

}  // namespace
}  // namespace kvc
