// The synthetic KV generator: Philox draws on the device, the AR(1) scan kernel, then Mix ops.
#include "data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/op_util.h"
#include "core/ops.h"
#include "data/streams.h"
#include "kernels/math/synthetic.h"
#include "kernels/synthetic.h"

namespace kvc {

namespace {

namespace ds = data_streams;
enum Draw : uint64_t { kLatent = 0, kNoiseK = 1, kNoiseV = 2, kQueryPos = 3, kNoiseQ = 4 };

// (b, 1, n, r) latent rows broadcast to every head, then each head's map: (b, h, n, d).
Tensor project(const Tensor& z, const Tensor& map, int64_t heads) {
  const Shape& s = z.shape();  // (b, n, r)
  const Tensor zb = reshape(z, {s[0], 1, s[1], s[2]});
  const Tensor ones = Tensor::ones({1, heads, 1, 1}, z.options());
  return mix(mul(zb, ones), map, Tensor());
}

}  // namespace

SyntheticKV::SyntheticKV(KVShape shape, uint64_t seed, Device device, DType dtype, Split split,
                         Shard shard)
    : shape_(shape),
      seed_(seed),
      key_(ds::key(seed)),
      device_(device),
      dtype_(dtype),
      split_(split),
      shard_(shard),
      latent_dim_(std::max<int64_t>(1, shape.dim_head / 4)) {
  KVC_CHECK(shape.batch >= 1 && shape.heads >= 1 && shape.dim_head >= 1 && shape.seq >= 1 &&
                shape.queries >= 1 && shape.query_heads >= 1,
            "synthetic: every size must be >= 1, got batch ", shape.batch, ", heads ", shape.heads,
            ", dim_head ", shape.dim_head, ", seq ", shape.seq, ", queries ", shape.queries,
            ", query heads ", shape.query_heads);
  KVC_CHECK(shard.count >= 1 && shard.index >= 0 && shard.index < shard.count, "synthetic: shard ",
            shard.index, " of ", shard.count, " does not exist");
  const TensorOptions opt = TensorOptions{}.with_dtype(dtype).with_device(device);
  const Shape map_shape{shape.heads, latent_dim_, shape.dim_head};
  const double map_std = 1.0 / std::sqrt(static_cast<double>(latent_dim_));
  // The shared family: the maps depend on the seed only, so train and eval see the same ones.
  map_k_ = Tensor::randn(map_shape, key_, ds::offset(ds::kShared, 0, 0), 0.0, map_std, opt);
  map_v_ = Tensor::randn(map_shape, key_, ds::offset(ds::kShared, 0, 1), 0.0, map_std, opt);
  // One map per query head (h * G of them; with G = 1 the shape and draws of the K and V maps).
  map_q_ = Tensor::randn({checked_mul(shape.heads, shape.query_heads), latent_dim_, shape.dim_head},
                         key_, ds::offset(ds::kShared, 0, 2), 0.0, map_std, opt);
}

uint64_t SyntheticKV::stream(uint64_t index, uint64_t which) const {
  return ds::offset(ds::family_of(split_), index, which);
}

Tensor SyntheticKV::latent_at(uint64_t index) const {
  const TensorOptions opt = TensorOptions{}.with_dtype(dtype_).with_device(device_);
  const uint64_t per_row = static_cast<uint64_t>(shape_.seq * latent_dim_);
  Tensor z = Tensor::randn({shape_.batch, shape_.seq, latent_dim_}, key_, stream(index, kLatent),
                           0.0, 1.0, opt, first_row() * per_row);
  KVC_DISPATCH_FLOAT(dtype_, "synthetic", [&] {
    KVC_LAUNCH(device_, K::ar1_scan<scalar_t>(z.data<scalar_t>(), shape_.batch, shape_.seq,
                                              latent_dim_, kRho));
  });
  return z;
}

Batch SyntheticKV::batch_at(uint64_t index) {
  NoGradGuard no_grad;
  const TensorOptions opt = TensorOptions{}.with_dtype(dtype_).with_device(device_);
  const int64_t b = shape_.batch, h = shape_.heads, n = shape_.seq, d = shape_.dim_head;
  const int64_t nq = shape_.queries, r = latent_dim_;
  const Tensor z = latent_at(index);  // (b, n, r)
  Tensor zq = Tensor::empty({b, nq, r}, opt);
  const uint64_t pos_stream = stream(index, kQueryPos);
  KVC_DISPATCH_FLOAT(dtype_, "synthetic", [&] {
    KVC_LAUNCH(device_, K::gather_random_rows<scalar_t>(z.data<scalar_t>(), zq.data<scalar_t>(), b,
                                                        n, r, nq, key_, pos_stream,
                                                        static_cast<int64_t>(first_row())));
  });
  const uint64_t kv_first = first_row() * static_cast<uint64_t>(h * n * d);
  const uint64_t q_first = first_row() * static_cast<uint64_t>(h * shape_.query_heads * nq * d);
  Batch out;
  out.k = add(project(z, map_k_, h), Tensor::randn({b, h, n, d}, key_, stream(index, kNoiseK), 0.0,
                                                   kNoise, opt, kv_first));
  out.v = add(project(z, map_v_, h), Tensor::randn({b, h, n, d}, key_, stream(index, kNoiseV), 0.0,
                                                   kNoise, opt, kv_first));
  const int64_t hq = h * shape_.query_heads;
  out.q = add(project(zq, map_q_, hq), Tensor::randn({b, hq, nq, d}, key_, stream(index, kNoiseQ),
                                                     0.0, kNoise, opt, q_first));
  // The positions the kernel drew, recomputed on the host (the same Philox draws).
  std::vector<double> pos(static_cast<size_t>(b * nq));
  const int64_t first_query = static_cast<int64_t>(first_row()) * nq;
  for (int64_t row = 0; row < b * nq; ++row) {
    pos[static_cast<size_t>(row)] =
        static_cast<double>(kernels::math::random_row(key_, pos_stream, first_query + row, n));
  }
  out.q_pos = Tensor::from_vector(pos, {b, nq}, opt);
  return out;
}

Batch SyntheticKV::next() {
  Batch b = batch_at(position_);
  ++position_;
  return b;
}

std::string SyntheticKV::describe() const {
  return str("synthetic (seed ", seed_, ", ", split_name(split_), " split, batch ", shape_.batch,
             ", heads ", shape_.heads, ", seq ", shape_.seq, ", dim_head ", shape_.dim_head,
             ", queries ", shape_.queries, ", on ", device_.name(),
             shard_.count > 1 ? str(", part ", shard_.index + 1, " of ", shard_.count) : "", ")");
}

}  // namespace kvc
