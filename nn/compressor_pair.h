// CompressorPair: NSA's k/v compressors with intra-block positions, and the training losses
// (SPEC section 4).
#pragma once

#include <memory>
#include <utility>

#include "nn/compressor.h"

namespace kvc {

// (b, h, seq, d) -> (b, h, seq / block, block, d); trailing tokens that do not fill a block are
// dropped (as NSA does). Throws when seq < block or the input is not 4-D.
Tensor split_blocks(const Tensor& seq, int64_t block);

// Selection recall@k of one batch (see CompressorPair::selection_recall): the sum of the per
// (query, KV head) recalls, how many there are, and the queries that see no block (left out).
struct SelectionRecall {
  double sum = 0;
  int64_t count = 0;
  int64_t queries_without_block = 0;
  double mean() const;  // sum / count (NaN when count is 0)
  SelectionRecall& operator+=(const SelectionRecall& o);
};

// Keys, in registration order: k_compress.<key>..., v_compress.<key>..., k_intrablock_positions,
// v_intrablock_positions (SPEC section 4's listing; PyTorch's named_parameters would list the
// two positions first, the keys are the same).
class CompressorPair : public Module {
 public:
  // k_compress and v_compress are `options.kind` with seeds derive_seed(options.seed, 1) and
  // derive_seed(options.seed, 2): separate weights. The positions start at zero.
  explicit CompressorPair(const CompressorOptions& options);

  std::string name() const override { return "pair(" + options_.kind + ")"; }
  const CompressorOptions& options() const { return options_; }
  Compressor& k_compress() { return *k_compress_; }
  Compressor& v_compress() { return *v_compress_; }

  // The block stride and the blocks of a sequence (CompressorOptions::block_stride, windows).
  int64_t stride() const { return options_.block_stride(); }
  int64_t windows(int64_t seq) const { return options_.windows(seq); }

  // k, v (b, h, seq, d) -> (k_compressed, v_compressed), each (b, h, w, d):
  // compressor(blocks of n tokens every stride tokens + positions broadcast as (1, h, 1, n, d)).
  std::pair<Tensor, Tensor> compress(const Tensor& k, const Tensor& v);

  // softmax(q k^T / sqrt d) v: q (b, h, nq, d), k and v (b, h, s, d) -> (b, h, nq, d).
  static Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v);

  // The distill task: mean((attention(q, Kc, Vc) - attention(q, k, v))^2), the target computed
  // without gradient. q (b, h*G, nq, d) (G = options.query_heads; query head j uses KV head
  // j / G), k and v (b, h, seq, d); returns shape (). Causal (options.causal): q_pos (b, nq)
  // holds each query's position t (whole numbers, as floats); the target sees keys 0..t, the
  // prediction the blocks whose last token is <= t, and queries that see no block are left out
  // of the mean (a loss of 0 when every query is). q_pos is ignored otherwise.
  Tensor distill_loss(const Tensor& q, const Tensor& k, const Tensor& v,
                      const Tensor& q_pos = Tensor());

  // NSA's selection recall@k for the distill task's inputs (evaluation, no gradient): per KV
  // head (the probabilities of its G query heads summed) and query, the top-k compressed blocks
  // by compressed-attention probability against the top-k by true attention mass (full-attention
  // probability summed over each block's tokens), both under the causal rule when the pair is
  // causal; k = min(topk, blocks the query sees), and queries that see none are left out.
  // Memory: the (b, h*G, nq, seq) probabilities in query chunks of at most `max_scores`
  // elements (the result does not depend on it).
  static constexpr int64_t kRecallMaxScores = int64_t{1} << 26;
  SelectionRecall selection_recall(const Tensor& q, const Tensor& k, const Tensor& q_pos,
                                   int64_t topk, int64_t max_scores = kRecallMaxScores);

  // The teacher task: MSE(k outputs) + MSE(v outputs) against `teacher.compress(k, v)` computed
  // without gradient. The teacher must not be in training mode with dropout (its counters would
  // advance); make_teacher returns it in eval mode. Returns shape ().
  Tensor teacher_loss(const CompressorPair& teacher, const Tensor& k, const Tensor& v);

  // SPEC section 4's teacher: a pair from options.seed + 1, then N(0, noise^2) added to every
  // parameter (so identity- and zero-initialized ones differ from the student's), frozen
  // (requires_grad false) and in eval mode.
  static std::shared_ptr<CompressorPair> make_teacher(const CompressorOptions& options,
                                                      double noise = 0.1);

 private:
  void check_kv(const char* what, const Tensor& x) const;
  // q (b, h*G, nq, d) as (b, h, G*nq, d): one group's query heads are consecutive rows.
  Tensor grouped_queries(const Tensor& q, const Tensor& k) const;
  // selection_recall over the queries of q (and their q_pos) with the compressed keys kc.
  SelectionRecall recall_of_queries(const Tensor& q, const Tensor& k, const Tensor& kc,
                                    const Tensor& q_pos, int64_t topk) const;

  CompressorOptions options_;
  std::shared_ptr<Compressor> k_compress_, v_compress_;
  Tensor k_positions_;  // (h, n, d)
  Tensor v_positions_;  // (h, n, d)
};

}  // namespace kvc
