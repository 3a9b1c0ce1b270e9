// The FLOP and byte model of one distill training step, from the kind registry's FLOP models.
#include "train/step_work.h"

namespace kvc::train {

StepWork step_work(const CompressorOptions& o, const KVShape& s, int64_t params) {
  const CompressorKind& kind = compressor_kind(o.kind);
  const double b = s.batch, h = s.heads, d = s.dim_head, nq = s.queries, seq = s.seq;
  const double hq = h * static_cast<double>(s.query_heads);
  const double w = static_cast<double>(o.windows(s.seq));
  const double blocks = b * h * w;
  const double comp = kind.forward_flops(o, blocks);
  const double target = 4 * b * hq * nq * seq * d, pred = 4 * b * hq * nq * w * d;
  StepWork wk;
  wk.forward_flops = 2 * comp + target + pred;
  const double affine = kind.affine_input_flops ? kind.affine_input_flops(o, blocks) : 0.0;
  wk.backward_flops = 2 * (2 * comp - affine + pred);
  const double kv = 2 * b * h * seq * d * 4, q = b * hq * nq * d * 4, out = 2 * blocks * d * 4;
  const double p = static_cast<double>(params) * 4;
  wk.forward_bytes = kv + q + p + out;
  wk.backward_bytes = kv + q + p + out + p;
  wk.optimizer_bytes = 7 * p;
  return wk;
}

}  // namespace kvc::train
