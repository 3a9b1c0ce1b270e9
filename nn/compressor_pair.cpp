// CompressorPair: block splitting, positions, the pair's compress, attention and both losses.
#include "nn/compressor_pair.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"

namespace kvc {

Tensor split_blocks(const Tensor& seq, int64_t block) {
  KVC_CHECK(seq.defined(), "split_blocks: input is an undefined tensor");
  KVC_CHECK(seq.dim() == 4, "split_blocks: input ", seq.shape(), " must be (b, h, seq, d)");
  KVC_CHECK(block > 0, "split_blocks: block ", block, " must be positive");
  const int64_t b = seq.size(0), h = seq.size(1), s = seq.size(2), d = seq.size(3);
  KVC_CHECK(s >= block, "split_blocks: seq ", s, " of input ", seq.shape(),
            " is shorter than one block of ", block);
  const int64_t w = s / block;
  const Tensor kept = s == w * block ? seq : narrow(seq, 2, 0, w * block);
  return reshape(kept, {b, h, w, block, d});
}

CompressorPair::CompressorPair(const CompressorOptions& options) : options_(options) {
  validate(options_);
  CompressorOptions k = options_, v = options_;
  k.seed = derive_seed(options_.seed, 1);
  v.seed = derive_seed(options_.seed, 2);
  k_compress_ = register_module("k_compress", make_compressor(k));
  v_compress_ = register_module("v_compress", make_compressor(v));
  const TensorOptions opt = TensorOptions{}.with_dtype(options_.dtype).with_device(options_.device);
  const Shape pos_shape{options_.heads, options_.block, options_.dim_head};
  k_positions_ = register_parameter("k_intrablock_positions", Tensor::zeros(pos_shape, opt));
  v_positions_ = register_parameter("v_intrablock_positions", Tensor::zeros(pos_shape, opt));
}

void CompressorPair::check_kv(const char* what, const Tensor& x) const {
  KVC_CHECK(x.defined(), name(), ": ", what, " is an undefined tensor");
  KVC_CHECK(x.dim() == 4 && x.size(1) == options_.heads && x.size(3) == options_.dim_head, name(),
            ": ", what, " ", x.shape(), " does not match the pair's (b, ", options_.heads,
            ", seq, ", options_.dim_head, ")");
}

std::pair<Tensor, Tensor> CompressorPair::compress(const Tensor& k, const Tensor& v) {
  check_kv("k", k);
  check_kv("v", v);
  // Each compressor over add(split_blocks(x, n), reshape(positions, (1, h, 1, n, d))).
  return {k_compress_->compress_sequence(k, k_positions_),
          v_compress_->compress_sequence(v, v_positions_)};
}

Tensor CompressorPair::attention(const Tensor& q, const Tensor& k, const Tensor& v) {
  KVC_CHECK(q.defined() && k.defined() && v.defined(), "attention: undefined input");
  KVC_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && k.shape() == v.shape() &&
                q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
            "attention: q ", q.shape(), " (b, h, nq, d), k ", k.shape(), " and v ", v.shape(),
            " (b, h, s, d) do not fit");
  // SPEC section 4: matmul(softmax(scale(matmul(q, k, false, true), d^-0.5), -1), v). The fused
  // op scales inside the GEMM and softmaxes in place: for the full-sequence target (no grad)
  // one (b, h, nq, seq) buffer instead of three.
  return scaled_dot_attention(q, k, v, 1.0 / std::sqrt(static_cast<double>(q.size(3))));
}

Tensor CompressorPair::grouped_queries(const Tensor& q, const Tensor& k) const {
  const int64_t g = options_.query_heads, h = options_.heads, d = options_.dim_head;
  KVC_CHECK(q.defined(), name(), ": q is an undefined tensor");
  KVC_CHECK(q.dim() == 4 && q.size(0) == k.size(0) && q.size(1) == h * g && q.size(3) == d, name(),
            ": q ", q.shape(), " does not match (", k.size(0), ", ", h * g, ", nq, ", d, ") for k ",
            k.shape(), " and ", g, " query heads per KV head");
  return g == 1 ? q : reshape(q, {q.size(0), h, g * q.size(2), d});
}

Tensor CompressorPair::distill_loss(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& q_pos) {
  check_kv("k", k);
  const Tensor qg = grouped_queries(q, k);
  const double alpha = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  const int64_t heads = q.size(1), seq = k.size(2);
  VisibleCounts keys, blocks;
  Tensor weights;  // causal: 1 / (kept rows * d) on the kept rows, 0 on the others
  if (options_.causal) {
    KVC_CHECK(q_pos.defined(), name(), ": causal distillation needs the queries' positions");
    KVC_CHECK(q_pos.shape() == Shape({q.size(0), q.size(2)}), name(), ": query positions ",
              q_pos.shape(), " do not match q ", q.shape(), " (expected (", q.size(0), ", ",
              q.size(2), "))");
    keys = visible_counts(q_pos, heads, 0, 1, seq);
    blocks = visible_counts(q_pos, heads, options_.block - 1, stride(), windows(seq), &weights,
                            static_cast<double>(q.size(3)));
  }
  // The compressors run first: where they make bf16 copies of K and V (the MLP kinds, for their
  // backward; the attention pools, on their way through), the target reads those instead of
  // rounding K and V again.
  const ShareBf16Copies share_kv({k, v});
  const auto kv = compress(k, v);
  Tensor target;
  {
    NoGradGuard no_grad;  // the target is data, not something to train
    // Fused forward-only attention: no (b, h, nq, seq) scores in memory.
    target = attention_target(qg, k, v, alpha, keys);
  }
  const Tensor pred = scaled_dot_attention(qg, kv.first, kv.second, alpha, blocks);
  if (!options_.causal) return mse_loss(pred, target);
  const Tensor diff = sub(pred, target);
  return sum(mul(mul(diff, diff), reshape(weights, {q.size(0), options_.heads, -1, 1})));
}

double SelectionRecall::mean() const {
  return count > 0 ? sum / static_cast<double>(count) : std::numeric_limits<double>::quiet_NaN();
}

SelectionRecall& SelectionRecall::operator+=(const SelectionRecall& o) {
  sum += o.sum;
  count += o.count;
  queries_without_block += o.queries_without_block;
  return *this;
}

namespace {

// (b, h*G, m, w) -> (b, h, m, w) on the host: the sum over each KV head's G query heads.
std::vector<double> group_sum(const Tensor& p, int64_t heads) {
  const int64_t b = p.size(0), g = p.size(1) / heads;
  return sum(reshape(p, {b, heads, g, p.size(2), p.size(3)}), 2).to_vector();
}

// The indices of the k largest of row[0..c), ties to the lower index.
std::vector<int64_t> top_indices(const double* row, int64_t c, int64_t k) {
  std::vector<int64_t> idx(static_cast<size_t>(c));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t b) {
    return row[a] > row[b] || (row[a] == row[b] && a < b);
  });
  idx.resize(static_cast<size_t>(k));
  std::sort(idx.begin(), idx.end());
  return idx;
}

}  // namespace

SelectionRecall CompressorPair::selection_recall(const Tensor& q, const Tensor& k,
                                                 const Tensor& q_pos, int64_t topk,
                                                 int64_t max_scores) {
  KVC_CHECK(topk >= 1, name(), ": selection recall top-k ", topk, " must be at least 1");
  check_kv("k", k);
  const int64_t b = q.size(0), nq = q.size(2);
  if (options_.causal) {
    KVC_CHECK(q_pos.defined() && q_pos.shape() == Shape({b, nq}), name(),
              ": causal selection recall needs query positions (", b, ", ", nq, ")");
  }
  NoGradGuard no_grad;
  const Tensor kc = k_compress_->compress_sequence(k, k_positions_);
  // Queries in chunks, so the (b, h*G, chunk, seq) probabilities stay within max_scores elements
  // (the long shape's 1024 queries over 131072 keys would hold 4.3 GB at once).
  const int64_t per_query = b * q.size(1) * k.size(2);
  const int64_t chunk = std::clamp<int64_t>(max_scores / std::max<int64_t>(per_query, 1), 1, nq);
  SelectionRecall out;
  for (int64_t j0 = 0; j0 < nq; j0 += chunk) {
    const int64_t len = std::min(chunk, nq - j0);
    if (len == nq) return recall_of_queries(q, k, kc, q_pos, topk);
    out += recall_of_queries(narrow(q, 2, j0, len), k, kc,
                             q_pos.defined() ? narrow(q_pos, 1, j0, len) : q_pos, topk);
  }
  return out;
}

SelectionRecall CompressorPair::recall_of_queries(const Tensor& q, const Tensor& k,
                                                  const Tensor& kc, const Tensor& q_pos,
                                                  int64_t topk) const {
  const Tensor qg = grouped_queries(q, k);
  const int64_t b = q.size(0), h = options_.heads, nq = q.size(2), seq = k.size(2);
  const int64_t n = options_.block, s = stride(), w = windows(seq);
  const double alpha = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  VisibleCounts keys, blocks;
  if (options_.causal) {
    keys = visible_counts(q_pos, q.size(1), 0, 1, seq);
    blocks = visible_counts(q_pos, q.size(1), n - 1, s, w);
  }
  const Tensor pc = masked_softmax(matmul(qg, kc, false, true) * alpha, blocks);
  // The true mass of each block: the probabilities summed in chunks of gcd(n, stride) tokens,
  // then windows of n / c chunks every stride / c chunks summed (the window op over chunks).
  const Tensor pf = masked_softmax(matmul(qg, k, false, true) * alpha, keys);
  const int64_t c = std::gcd(n, s), chunks = ((w - 1) * s + n) / c, rows = pf.numel() / seq;
  const Tensor chunk_sums =
      sum(reshape(narrow(pf, 3, 0, chunks * c), {rows, 1, chunks, c}), 3, /*keepdim=*/true);
  const Tensor zero = Tensor::zeros({1, n / c, 1}, pf.options());
  const Tensor mass =
      reshape(sum(add_block_positions(chunk_sums, zero, n / c, s / c), 3), {b, q.size(1), nq, w});
  const std::vector<double> pc_host = group_sum(reshape(pc, {b, q.size(1), nq, w}), h);
  const std::vector<double> mass_host = group_sum(mass, h);
  const std::vector<int32_t> seen = blocks.defined() ? blocks.to_vector() : std::vector<int32_t>();
  SelectionRecall out;
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t j = 0; j < nq; ++j) {
      // Rows of visible_counts are (b, h*G, nq): every head of a query sees the same blocks.
      const int64_t visible = seen.empty() ? w : seen[static_cast<size_t>(bi * q.size(1) * nq + j)];
      if (visible == 0) {
        ++out.queries_without_block;
        continue;
      }
      const int64_t kk = std::min(topk, visible);
      for (int64_t hh = 0; hh < h; ++hh) {
        const size_t at = static_cast<size_t>(((bi * h + hh) * nq + j) * w);
        const std::vector<int64_t> a = top_indices(pc_host.data() + at, visible, kk);
        const std::vector<int64_t> t = top_indices(mass_host.data() + at, visible, kk);
        std::vector<int64_t> both;
        std::set_intersection(a.begin(), a.end(), t.begin(), t.end(), std::back_inserter(both));
        out.sum += static_cast<double>(both.size()) / static_cast<double>(kk);
        ++out.count;
      }
    }
  }
  return out;
}

Tensor CompressorPair::teacher_loss(const CompressorPair& teacher, const Tensor& k,
                                    const Tensor& v) {
  KVC_CHECK(teacher.options_.kind == options_.kind && teacher.options_.heads == options_.heads &&
                teacher.options_.dim_head == options_.dim_head &&
                teacher.options_.block == options_.block,
            name(), ": teacher ", teacher.name(), " (h ", teacher.options_.heads, ", d ",
            teacher.options_.dim_head, ", n ", teacher.options_.block,
            ") does not match the student (h ", options_.heads, ", d ", options_.dim_head, ", n ",
            options_.block, ")");
  std::pair<Tensor, Tensor> target;
  {
    NoGradGuard no_grad;
    // compress() is non-const only because dropout counters advance in training mode; the
    // frozen teacher runs in eval mode (make_teacher), where it changes nothing.
    target = const_cast<CompressorPair&>(teacher).compress(k, v);
  }
  const auto out = compress(k, v);
  return add(mse_loss(out.first, target.first), mse_loss(out.second, target.second));
}

std::shared_ptr<CompressorPair> CompressorPair::make_teacher(const CompressorOptions& options,
                                                             double noise) {
  KVC_CHECK(std::isfinite(noise) && noise >= 0.0, "teacher: noise std ", noise,
            " must be a non-negative number");
  CompressorOptions t = options;
  t.seed = options.seed + 1;
  auto teacher = std::make_shared<CompressorPair>(t);
  {
    NoGradGuard no_grad;
    const uint64_t noise_seed = derive_seed(t.seed, 0x7EAC8E2ull);  // not any init stream
    uint64_t offset = 0;
    for (auto& kv : teacher->named_parameters()) {
      Tensor p = kv.second;
      const Tensor eps = Tensor::randn(p.shape(), noise_seed, offset++, 0.0, noise, p.options());
      p.copy_from(add(p.detach(), eps));
    }
  }
  teacher->requires_grad(false);
  teacher->eval();
  return teacher;
}

}  // namespace kvc
