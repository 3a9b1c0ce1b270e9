// The work of one distill training step (FLOPs and compulsory bytes): bench's denominators.
#pragma once

#include <cstdint>

#include "data/batch.h"
#include "nn/compressor.h"

namespace kvc::train {

// Per training step of the distill task, one pair = k and v compressors; M = b*h*w blocks,
// w = floor((seq - n) / stride) + 1 (stride n when unset), hq = h * query_heads query heads.
//   compressor: the kind's registry FLOP model over M blocks (GEMM multiply-adds count 2)
//   attention GEMMs: target softmax(QK^T)V 4*b*hq*nq*seq*d; prediction over w blocks
//   4*b*hq*nq*w*d (full attention: a causal run computes about half of both)
//   forward  = 2 * compressor + target + prediction
//   backward = 2 * (2 * compressor - affine + prediction)   (the target has no gradient;
//              affine: the registry's affine_input_flops, a first layer whose input gradient
//              is never formed)
// Adam's elementwise work is not counted as FLOPs. Bytes (the compulsory traffic, float32): the
// forward reads K, V, Q and the parameters and writes Kc, Vc; the backward reads them again and
// writes the parameter gradients; Adam reads parameter, gradient and both moments and writes
// parameter and moments (7 * 4 * P bytes). Dividing by measured times gives a roofline
// position, not a count of what the kernels actually move.
struct StepWork {
  double forward_flops = 0, backward_flops = 0;
  double forward_bytes = 0, backward_bytes = 0, optimizer_bytes = 0;
};

// Throws kvc::Error for an unknown kind (the registry's message).
StepWork step_work(const CompressorOptions& options, const KVShape& shape, int64_t params);

}  // namespace kvc::train
