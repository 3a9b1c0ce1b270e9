// SyntheticKV: the deterministic synthetic KV generator of SPEC section 5.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "data/batch.h"

namespace kvc {

// Per sequence a latent AR(1) process z_t in R^r, r = max(1, d / 4):
//   z_0 ~ N(0, I),  z_t = rho z_(t-1) + sqrt(1 - rho^2) eps_t,  rho = 0.9,
// so every z_t is N(0, I) and the lag-1 autocorrelation is rho. Per head fixed maps A_h, B_h,
// C_h (d x r, entries N(0, 1/r)) drawn from the seed alone, shared by both splits; then
//   K[b,h,t] = A_h z_t + 0.1 xi,  V[b,h,t] = B_h z_t + 0.1 xi',  Q[b,g,j] = C_g z_(t_j) + 0.1 xi''
// with nq query positions t_j per sequence, uniform on [0, seq), shared by the heads (batch
// q_pos), and a map C_g per query head g < h * G (G = shape.query_heads).
// Everything is generated on `device` from Philox streams keyed by (seed, split, batch index):
// batch_at(i) is a pure function of them, and the train and eval splits use disjoint streams.
// With a shard, every draw is keyed by the sequence's index in the global batch, so the shards of
// N processes concatenate to the batch of one process with N times the batch size.
class SyntheticKV : public KVSource {
 public:
  static constexpr double kRho = 0.9;
  static constexpr double kNoise = 0.1;

  SyntheticKV(KVShape shape, uint64_t seed, Device device = Device::cpu(), DType dtype = DType::f32,
              Split split = Split::train, Shard shard = {});

  Batch next() override;
  Batch batch_at(uint64_t index) override;
  uint64_t position() const override { return position_; }
  void set_position(uint64_t position) override { position_ = position; }
  KVShape shape() const override { return shape_; }
  uint64_t batches_per_epoch() const override { return 0; }
  std::string describe() const override;

  int64_t latent_dim() const { return latent_dim_; }
  Split split() const { return split_; }
  uint64_t seed() const { return seed_; }
  // The latent z of batch `index`, (b, seq, r): the one batch_at(index) was made from.
  Tensor latent_at(uint64_t index) const;
  // The maps in matmul layout: K[b,h,t,:] = z[b,t,:] @ map_k()[h] + noise, i.e. A_h = map_k()[h]^T.
  const Tensor& map_k() const { return map_k_; }  // (h, r, d)
  const Tensor& map_v() const { return map_v_; }  // (h, r, d)
  const Tensor& map_q() const { return map_q_; }  // (h * G, r, d)

 private:
  uint64_t stream(uint64_t index, uint64_t which) const;  // the Philox offset of one draw
  // The index in the global batch of this shard's first sequence.
  uint64_t first_row() const { return static_cast<uint64_t>(shard_.index * shape_.batch); }

  KVShape shape_;
  uint64_t seed_;
  uint64_t key_;  // the Philox key: the seed mixed with a data tag, apart from init and dropout
  Device device_;
  DType dtype_;
  Split split_;
  Shard shard_;
  int64_t latent_dim_;
  uint64_t position_ = 0;
  Tensor map_k_;  // (h, r, d)
  Tensor map_v_;  // (h, r, d)
  Tensor map_q_;  // (h, r, d)
};

}  // namespace kvc
