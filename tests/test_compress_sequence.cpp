// Compressor::compress_sequence, which every kind may compute its own way (the positions moved
// into a first affine layer, the attention pools' fused op), against its definition:
// (*m)(add_block_positions(seq, positions, n, stride)), values and every gradient.
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "nn/compressor.h"
#include "tests/test_nn_util.h"
#include "tests/test_util.h"

namespace kvc {
namespace {

struct Grads {
  Tensor y;
  std::vector<Tensor> grads;  // seq (when it needs one), positions, then every parameter
};

Grads run(Compressor& m, const Tensor& seq0, const Tensor& pos0, bool seq_grad,
          bool by_definition) {
  Tensor seq = seq0.detach(), pos = pos0.detach();
  seq.set_requires_grad(seq_grad);
  pos.set_requires_grad(true);
  for (auto& kv : m.named_parameters()) kv.second.zero_grad();
  const CompressorOptions& o = m.options();
  const Tensor y = by_definition ? m(add_block_positions(seq, pos, o.block, o.block_stride()))
                                 : m.compress_sequence(seq, pos);
  backward(y, Tensor::randn(y.shape(), 91, 0, 0.0, 1.0, y.options()));
  Grads out{y.to(DType::f64).to(Device::cpu()), {}};
  if (seq_grad) out.grads.push_back(seq.grad().to(DType::f64).to(Device::cpu()));
  out.grads.push_back(pos.grad().to(DType::f64).to(Device::cpu()));
  for (auto& kv : m.named_parameters()) {
    REQUIRE(kv.second.grad().defined());
    out.grads.push_back(kv.second.grad().to(DType::f64).to(Device::cpu()));
  }
  return out;
}

void check_kinds(DType dtype, Device device, double tol) {
  // (n, stride, seq): disjoint blocks tiling the sequence, a dropped tail, overlapping blocks.
  const std::vector<std::vector<int64_t>> shapes = {{4, 4, 24}, {4, 4, 27}, {4, 2, 23}};
  for (const std::string& kind : compressor_kinds()) {
    for (const auto& s : shapes) {
      CompressorOptions o;
      o.kind = kind;
      o.heads = 2;
      o.dim_head = 6;
      o.block = s[0];
      o.stride = s[1];
      o.expand = 0.75;
      o.reduction = 2;
      o.seed = 5;
      o.dtype = dtype;
      o.device = device;
      auto m = make_compressor(o);
      test::perturb(*m, 7, 0.3);
      const TensorOptions opt = TensorOptions{}.with_dtype(dtype).with_device(device);
      const Tensor seq = Tensor::randn({2, 2, s[2], 6}, 31, 0, 0.0, 1.0, opt);
      const Tensor pos = Tensor::randn({2, s[0], 6}, 32, 0, 0.0, 0.5, opt);
      for (const bool seq_grad : {false, true}) {
        INFO("kind ", kind, ", n ", s[0], ", stride ", s[1], ", seq ", s[2], ", seq grad ",
             seq_grad, ", ", std::string(dtype_name(dtype)), " on ", device.name());
        const Grads want = run(*m, seq, pos, seq_grad, true);
        const Grads got = run(*m, seq, pos, seq_grad, false);
        CHECK(test::rel_error(got.y, want.y) < tol);
        REQUIRE(got.grads.size() == want.grads.size());
        for (size_t i = 0; i < got.grads.size(); ++i) {
          CAPTURE(i);
          CHECK(test::rel_error(got.grads[i], want.grads[i]) < tol);
        }
      }
    }
  }
}

TEST_CASE("compress_sequence: every kind equals itself over add_block_positions, float64") {
  check_kinds(DType::f64, Device::cpu(), 1e-12);
}

TEST_CASE("compress_sequence cuda: the same on the GPU, float64 and float32") {
  KVC_REQUIRE_CUDA();
  check_kinds(DType::f64, Device::cuda(), 1e-12);
  check_kinds(DType::f32, Device::cuda(), 1e-5);
}

}  // namespace
}  // namespace kvc
