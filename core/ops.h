// The differentiable ops. Each checks its inputs (errors name the op and the shapes), runs the
// forward through kernels::cpu or kernels::cuda, and records a tape entry when grad is needed.
// Implementations: core/ops_*.cpp, one file per family.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace kvc {

// ---- elementwise with numpy broadcasting (shapes aligned at the right; size-1 axes stretch) ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor neg(const Tensor& a);
Tensor scale(const Tensor& a, double s);       // s * a
Tensor add_scalar(const Tensor& a, double s);  // a + s

// The broadcast shape of a and b, or an error naming `op` and both shapes.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);

// ---- reductions ----
Tensor sum(const Tensor& a);                                      // shape ()
Tensor sum(const Tensor& a, int64_t axis, bool keepdim = false);  // negative axes allowed
Tensor mean(const Tensor& a);
Tensor mean(const Tensor& a, int64_t axis, bool keepdim = false);
// Sums a broadcast gradient back to `shape` (the adjoint of broadcasting to a.shape()).
Tensor sum_to(const Tensor& a, const Shape& shape);

// ---- shape ----
Tensor reshape(const Tensor& a, const Shape& shape);  // one axis may be -1; shares storage
Tensor permute(const Tensor& a, const std::vector<int64_t>& perm);            // one copy
Tensor narrow(const Tensor& a, int64_t axis, int64_t start, int64_t length);  // one copy

// ---- linear algebra ----
// op(a) @ op(b) over the last two axes. a (..., m, k), b (..., k, n) with equal leading axes,
// or b two-dimensional and shared by every batch entry (a weight). trans_* transpose the last
// two axes without a copy.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// Grouped linear (einops EinMix 'b h w i -> b h w o'): x (..., h, w, in), weight (h, in, out),
// bias (h, out) or undefined. y[.., h, w, o] = sum_i x[.., h, w, i] W[h, i, o] + B[h, o].
Tensor mix(const Tensor& x, const Tensor& weight, const Tensor& bias);

// ---- activations ----
Tensor softmax(const Tensor& a, int64_t axis);
Tensor relu(const Tensor& a);
Tensor gelu(const Tensor& a);  // exact (erf)
// Inverted dropout: identity when !training or p == 0 (no kernel runs); the mask is
// philox::keep(seed, offset, i, p) for element i, identical on every backend.
Tensor dropout(const Tensor& a, double p, bool training, uint64_t seed, uint64_t offset);

// ---- losses ----
Tensor mse_loss(const Tensor& pred, const Tensor& target);  // mean((pred - target)^2), shape ()

// ---- causal visibility (core/ops_window.cpp) ----
// Per-row counts for masked attention: row r of a (..., m, s) score matrix (rows = the product
// of all axes but the last) sees columns 0 .. count(r) - 1 only. Held as int32 on the device of
// the tensors it masks; copies share the buffer. Undefined: no mask.
class VisibleCounts {
 public:
  VisibleCounts() = default;
  VisibleCounts(std::shared_ptr<Storage> counts, int64_t rows)
      : counts_(std::move(counts)), rows_(rows) {}
  bool defined() const { return counts_ != nullptr; }
  int64_t rows() const { return rows_; }
  Device device() const;
  const int32_t* data() const;
  std::vector<int32_t> to_vector() const;  // a host copy (tests, eval counts)

 private:
  std::shared_ptr<Storage> counts_;
  int64_t rows_ = 0;
};

// For queries at positions pos (b, nq) (whole numbers held as floats) repeated over `heads`
// query heads, rows ordered (b, heads, nq): count = clamp(floor((pos - first) / step) + 1, 0,
// limit). Keys 0..t of a sequence: first 0, step 1, limit seq. Blocks of n tokens at a stride
// whose last token is <= t: first n - 1, step stride, limit w. `weights`, when given, becomes
// (b, heads, nq, 1): 1 / (kept * scale) on rows that see something, else 0, kept = how many
// do (all 0 when none does), so sum(weights * x) over rows is the mean over the kept rows.
VisibleCounts visible_counts(const Tensor& pos, int64_t heads, int64_t first, int64_t step,
                             int64_t limit, Tensor* weights = nullptr, double scale = 1.0);
// Softmax over the last axis with row r seeing its first count(r) entries (the rest 0, a row that
// sees none all 0); undefined `visible`: softmax(x, -1). Forward only (evaluation): not recorded,
// and an error when x requires grad under grad mode.
Tensor masked_softmax(const Tensor& x, const VisibleCounts& visible);

// ---- fused ops (core/ops_fused.cpp): one pass where the composition in each comment takes
// several; same values and gradients ----
// PyTorch F.linear: x (..., in), weight (out, in), bias (out) or undefined -> (..., out).
// = add(matmul(x, weight, false, true), bias), the bias added inside the GEMM.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);
// softmax(alpha q k^T) v over the last two axes: q (..., m, d), k (..., s, d), v (..., s, e)
// -> (..., m, e). = matmul(softmax(scale(matmul(q, k, false, true), alpha), -1), v), with alpha
// in the GEMM and the softmax in place: one (..., m, s) buffer forward, kept for backward. On
// CUDA in bf16 with queries that need no gradient and d = e in {64, 128}: a flash forward and
// backward instead, keeping only each row's log-sum-exp.
// `visible` (rows = the product of q's axes but the last) masks keys past each row's count to
// probability 0; a row that sees none gives 0 (and passes no gradient).
Tensor scaled_dot_attention(const Tensor& q, const Tensor& k, const Tensor& v, double alpha,
                            const VisibleCounts& visible = {});
// The same softmax(alpha q k^T) v forward only, for targets: q (..., nq, d), k and v (..., seq, d)
// -> (..., nq, d), fused (online softmax over key tiles, no (nq, seq) buffer). With grad needed it
// runs scaled_dot_attention instead (core/ops_attention.cpp).
// `visible` as for scaled_dot_attention; every count must be >= 1 here.
Tensor attention_target(const Tensor& q, const Tensor& k, const Tensor& v, double alpha,
                        const VisibleCounts& visible = {});
// x, logits (..., n, d) -> (..., d): sum over n of x * softmax over n of (alpha * logits).
// = sum(mul(x, softmax(scale(logits, alpha), -2)), -2); the softmax is never stored.
Tensor softmax_pool(const Tensor& x, const Tensor& logits, double alpha);
// seq (b, h, s, d), positions (h, n, d) -> (b, h, w, n, d): the windows of n tokens starting
// at 0, stride, 2 stride, ... (w = (s - n) / stride + 1; stride 0 means n: split_blocks, the
// tail that does not fill a block dropped) plus positions broadcast as (1, h, 1, n, d), one
// pass. Overlapping windows (stride < n) scatter-add their gradients back onto the sequence.
Tensor add_block_positions(const Tensor& seq, const Tensor& positions, int64_t block,
                           int64_t stride = 0);
// The attention pools' layer over the blocks of a sequence: x = add_block_positions(seq,
// positions, block, stride), softmax_pool(x, linear(x, weight), alpha) -> (b, h, w, d), weight
// (d, d). On CUDA in float32 one fused tensor-core pass each way (the blocks and logits are
// never stored; fp32 math as three TF32 products) where the sizes fit and seq needs no
// gradient; the composition everywhere else.
Tensor attention_pool(const Tensor& seq, const Tensor& positions, const Tensor& weight,
                      int64_t block, int64_t stride, double alpha);
// The MLP kinds' two layers per head: act(x W1 + b1) W2 + b2 over x (b, h, w, in) -> (b, h, w,
// out). Weights per head as Mix keeps them, w1 (h, in, hidden) and w2 (h, hidden, out), or one
// pair for every head as F.linear keeps it, w1 (hidden, in) and w2 (out, hidden); b1 (h, hidden)
// or (hidden), b2 (h, out) or (out). = mix or linear, relu or gelu, mix or linear, each bias
// added. On CUDA in float32 one cuBLASLt pass each way (kernels/mlp.h: the bias and ReLU in the
// first product's epilogue, the hidden activations kept in the products' operand type); the
// composition on the CPU and in float64. With `shift` (1, h, 1, in) the rows of head h read
// x + shift[h] (the positions of blocks): the shift moves into the first bias, b1 + shift W1 per
// head, so x is never shifted and its gradient is formed only where x needs one.
//
// With a `residual` (enhanced_mlp's skip) the op returns mean_j(x_j) + scale * MLP, where x_j are
// the `block` groups of in / block = out values of each (shifted) row and scale is a (1,) tensor:
// on CUDA the mean, the scaling and their gradients are a pass each way beside the MLP's, where
// the composition launched eight small ones.
enum class Activation { relu, gelu };
struct MlpResidual {
  int64_t block = 0;  // 0: no residual
  Tensor scale;       // (1,)
};
Tensor two_layer_mlp(const Tensor& x, const Tensor& w1, const Tensor& b1, Activation act,
                     const Tensor& w2, const Tensor& b2, const Tensor& shift = Tensor(),
                     const MlpResidual& residual = {});

// While alive, CUDA bf16 math that rounds one of these float32 tensors (or a part) to bfloat16
// takes the copy another op made and still holds instead of rounding it again: the MLP kinds keep
// theirs of K and V for the backward, the attention pools' forward writes them on its way through
// K and V, and the attention target then reads those. The tensors must not change while it
// lives. Elsewhere (CPU, other precisions) it does nothing (core/ops_fused.cpp,
// kernels/precision.h).
class ShareBf16Copies {
 public:
  explicit ShareBf16Copies(const std::vector<Tensor>& tensors);
  ~ShareBf16Copies();
  ShareBf16Copies(const ShareBf16Copies&) = delete;
  ShareBf16Copies& operator=(const ShareBf16Copies&) = delete;

 private:
  struct Scope;
  std::vector<Tensor> tensors_;  // kept alive (and their storage unmoved) while shared
  std::unique_ptr<Scope> scope_;
};

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& a) { return neg(a); }
inline Tensor operator*(const Tensor& a, double s) { return scale(a, s); }
inline Tensor operator*(double s, const Tensor& a) { return scale(a, s); }
inline Tensor operator+(const Tensor& a, double s) { return add_scalar(a, s); }

}  // namespace kvc
