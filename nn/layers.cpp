// The building blocks: parameter init from Philox and forwards through the ops of core/ops.h.
#include "nn/layers.h"

#include <cmath>

#include "core/ops.h"

namespace kvc {

Tensor ParamInit::uniform(const Shape& shape, double bound) {
  return Tensor::rand(shape, seed, take(), -bound, bound, options);
}

namespace {

void check_positive(const char* layer, const char* what, int64_t v) {
  KVC_CHECK(v > 0, layer, ": ", what, " must be positive, got ", v);
}

// Inputs must share the layer's dtype and device: say so before an op reports it less clearly.
void check_kind(const std::string& layer, const Tensor& x, const Tensor& weight) {
  KVC_CHECK(x.defined(), layer, ": input is an undefined tensor");
  KVC_CHECK(x.dtype() == weight.dtype() && x.device() == weight.device(), layer, ": input ",
            x.shape(), " is ", dtype_name(x.dtype()), " on ", x.device().name(),
            " but the layer's parameters are ", dtype_name(weight.dtype()), " on ",
            weight.device().name());
}

}  // namespace

// ---- Linear ---------------------------------------------------------------------------------

Linear::Linear(const LinearOptions& options, ParamInit& init)
    : in_(options.in_features()), out_(options.out_features()) {
  const int64_t in = in_, out = out_;
  check_positive("Linear", "in_features", in);
  check_positive("Linear", "out_features", out);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight_ = register_parameter("weight", init.uniform({out, in}, bound));
  if (options.bias()) bias_ = register_parameter("bias", init.uniform({out}, bound));
}

void Linear::check_input(const Tensor& x) const {
  check_kind(name(), x, weight_);
  KVC_CHECK(x.dim() >= 1 && x.size(-1) == in_, name(), ": input ", x.shape(),
            " does not end in the layer's in_features ", in_, " (weight ", weight_.shape(), ")");
}

// = add(matmul(x, W, false, true), b); the fused op adds the bias inside the GEMM.
Tensor Linear::forward(const Tensor& x) { return linear(x, weight_, bias_); }

// ---- Mix ------------------------------------------------------------------------------------

Mix::Mix(int64_t heads, int64_t in, int64_t out, ParamInit& init)
    : heads_(heads), in_(in), out_(out) {
  check_positive("Mix", "heads", heads);
  check_positive("Mix", "in", in);
  check_positive("Mix", "out", out);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight_ = register_parameter("weight", init.uniform({heads, in, out}, bound));
  bias_ = register_parameter("bias", init.uniform({heads, out}, bound));
}

void Mix::check_input(const Tensor& x) const {
  check_kind(name(), x, weight_);
  KVC_CHECK(x.dim() >= 3 && x.size(-3) == heads_ && x.size(-1) == in_, name(), ": input ",
            x.shape(), " does not match the layer's (..., ", heads_, ", w, ", in_, ")");
}

Tensor Mix::forward(const Tensor& x) { return mix(x, weight_, bias_); }

Tensor Mix::forward_shifted(const Tensor& x, const Tensor& shift) {
  return mix(x, weight_, shifted_bias(shift));
}

Tensor Mix::shifted_bias(const Tensor& shift) {
  KVC_CHECK(shift.shape() == Shape({1, heads_, 1, in_}), "Mix: shift ", shift.shape(),
            " must be (1, ", heads_, ", 1, ", in_, ")");
  return reshape(mix(shift, weight_, bias_), {heads_, out_});
}

// ---- Conv1d ---------------------------------------------------------------------------------

Conv1d::Conv1d(const Conv1dOptions& options, ParamInit& init) : options_(options) {
  const int64_t in_channels = options.in_channels(), out_channels = options.out_channels();
  const int64_t kernel = options.kernel(), groups = options.groups();
  check_positive("Conv1d", "in_channels", in_channels);
  check_positive("Conv1d", "out_channels", out_channels);
  check_positive("Conv1d", "kernel", kernel);
  check_positive("Conv1d", "stride", options.stride());
  check_positive("Conv1d", "groups", groups);
  KVC_CHECK(options.stride() == kernel, "Conv1d: stride ", options.stride(),
            " differs from kernel ", kernel, " (only non-overlapping windows are supported)");
  KVC_CHECK(in_channels % groups == 0 && out_channels % groups == 0, "Conv1d: channels ",
            in_channels, " -> ", out_channels, " are not divisible by groups ", groups);
  const int64_t fan_in = in_channels / groups * kernel;
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  weight_ = register_parameter("weight",
                               init.uniform({out_channels, in_channels / groups, kernel}, bound));
  bias_ = register_parameter("bias", init.uniform({out_channels}, bound));
}

void Conv1d::check_input(const Tensor& x) const {
  check_kind(name(), x, weight_);
  const int64_t in_channels = options_.in_channels(), kernel = options_.kernel();
  KVC_CHECK(x.dim() == 3 && x.size(1) == in_channels && x.size(2) >= kernel, name(), ": input ",
            x.shape(), " does not match the layer's (b, ", in_channels, ", L >= ", kernel, ")");
}

// With kernel == stride each output position reads one window of k taps, so on the layout
// (b, groups, windows, k*c_in), the taps of a window flattened tap-major,
//   y[b, g, t, o] = sum_{j, i} x[b, g, t, j*c_in + i] W[g*c_out + o, i, j] + bias[g*c_out + o],
// which is mix with W'[g, j*c_in + i, o] = W[g*c_out + o, i, j] and bias viewed (groups, c_out).
// Only the weight is permuted (c_out*c_in*k per group), on the tape, so weight and bias get
// their gradients. SPEC section 3's rearrange to channels and back (two copies of x each way,
// forward and backward) is then not needed where the blocks already are the windows.
Tensor Conv1d::forward_windows(const Tensor& windows) const {
  const int64_t g = options_.groups(), c_out = options_.out_channels() / g;
  return mix(windows, grouped_weight(), reshape(bias_, {g, c_out}));
}

Tensor Conv1d::forward_windows_shifted(const Tensor& windows, const Tensor& shift) const {
  const int64_t g = options_.groups(), k = options_.kernel();
  const int64_t c_in = options_.in_channels() / g, c_out = options_.out_channels() / g;
  KVC_CHECK(shift.shape() == Shape({1, g, 1, k * c_in}), "Conv1d: shift ", shift.shape(),
            " must be (1, ", g, ", 1, ", k * c_in, ")");
  const Tensor w = grouped_weight();
  return mix(windows, w, reshape(mix(shift, w, reshape(bias_, {g, c_out})), {g, c_out}));
}

Tensor Conv1d::forward_windows_linear(const Tensor& windows) const {
  return mix(windows, grouped_weight(), Tensor());
}

// The weight as mix's (g, k*c_in, c_out): (g*co, ci, k) -> (g, k, ci, co).
Tensor Conv1d::grouped_weight() const {
  const int64_t g = options_.groups(), k = options_.kernel();
  const int64_t c_in = options_.in_channels() / g, c_out = options_.out_channels() / g;
  return reshape(permute(reshape(weight_, {g, c_out, c_in, k}), {0, 3, 2, 1}),
                 {g, k * c_in, c_out});
}

Tensor Conv1d::forward(const Tensor& x) {
  const int64_t b = x.size(0), g = options_.groups(), k = options_.kernel();
  const int64_t c_in = options_.in_channels() / g, c_out = options_.out_channels() / g;
  const int64_t windows = x.size(2) / k;  // a remainder shorter than a window is not read
  const Tensor whole = windows * k == x.size(2) ? x : narrow(x, 2, 0, windows * k);
  // (b, g*ci, t*k) -> (b, g, ci, t, k) -> (b, g, t, k, ci) -> (b, g, t, k*ci)
  const Tensor xw = reshape(permute(reshape(whole, {b, g, c_in, windows, k}), {0, 1, 3, 4, 2}),
                            {b, g, windows, k * c_in});
  // (b, g, t, co) -> (b, g, co, t) -> (b, g*co, t)
  return reshape(permute(forward_windows(xw), {0, 1, 3, 2}), {b, g * c_out, windows});
}

// ---- activations, dropout ---------------------------------------------------------------------

Tensor ReLU::forward(const Tensor& x) { return relu(x); }
Tensor GELU::forward(const Tensor& x) { return gelu(x); }

Dropout::Dropout(double p, uint64_t seed) : p_(p), seed_(seed) {
  KVC_CHECK(p >= 0.0 && p < 1.0, "Dropout: p = ", p, " is outside [0, 1)");
}

Tensor Dropout::forward(const Tensor& x) {
  if (!training() || p_ == 0.0) return x;  // no kernel, no counter step: p = 0 costs nothing
  return dropout(x, p_, true, seed_, counter_++);
}

void Dropout::append_own_rng_counters(std::vector<uint64_t>* out) const {
  out->push_back(counter_);
}

size_t Dropout::restore_own_rng_counters(const std::vector<uint64_t>& in, size_t pos) {
  counter_ = in.at(pos);
  return pos + 1;
}

// ---- Sequential -----------------------------------------------------------------------------

Tensor Sequential::forward(const Tensor& x) { return forward_from(0, x); }

Tensor Sequential::forward_from(int64_t first, const Tensor& x) {
  KVC_CHECK(first >= 0 && first <= size_, "Sequential: first layer ", first, " of ", size_);
  Tensor y = x;
  for (size_t i = static_cast<size_t>(first); i < layers_.size(); ++i) y = (*layers_[i])(y);
  return y;
}

}  // namespace kvc
