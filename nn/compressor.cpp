// Compressor options checks, the shared input check and the kind -> layer factory.
#include "nn/compressor.h"

#include <cmath>
#include <sstream>

#include "nn/compressors.h"

namespace kvc {

const std::vector<std::string>& compressor_kinds() {
  static const std::vector<std::string> kinds = {"conv",
                                                 "efficient_conv",
                                                 "attention_pool",
                                                 "scaled_attention_pool",
                                                 "grouped_mlp",
                                                 "enhanced_mlp",
                                                 "mlp"};
  return kinds;
}

namespace {

bool is_mlp_kind(const std::string& kind) {
  return kind == "grouped_mlp" || kind == "enhanced_mlp" || kind == "mlp";
}

std::string kinds_list() {
  std::ostringstream os;
  const auto& kinds = compressor_kinds();
  for (size_t i = 0; i < kinds.size(); ++i) os << (i ? ", " : "") << kinds[i];
  return os.str();
}

}  // namespace

void validate(const CompressorOptions& o) {
  bool known = false;
  for (const auto& k : compressor_kinds()) known = known || k == o.kind;
  KVC_CHECK(known, "compressor: unknown kind '", o.kind, "' (expected one of ", kinds_list(), ")");
  KVC_CHECK(o.heads > 0 && o.dim_head > 0 && o.block > 0, o.kind, ": heads ", o.heads,
            ", dim_head ", o.dim_head, " and block ", o.block, " must all be positive");
  KVC_CHECK(o.dropout >= 0.0 && o.dropout < 1.0, o.kind, ": dropout ", o.dropout,
            " is outside [0, 1)");
  KVC_CHECK(std::isfinite(o.expand) && o.expand > 0.0, o.kind, ": expand ", o.expand,
            " must be a positive number");
  KVC_CHECK(o.reduction >= 1, o.kind, ": reduction ", o.reduction, " must be at least 1");
  if (o.kind == "efficient_conv") {
    KVC_CHECK(o.dim_head % o.reduction == 0, o.kind, ": dim_head ", o.dim_head,
              " is not divisible by reduction ", o.reduction);
  }
  // Every parameter's size is a product of these; checked once here so none can wrap.
  const int64_t block_width = checked_mul(o.block, o.dim_head, "compressor: block * dim_head");
  const int64_t channels = checked_mul(o.heads, o.dim_head, "compressor: heads * dim_head");
  checked_mul(channels, block_width,
              "compressor: conv weight (heads * dim_head) * (dim_head * block)");
  if (is_mlp_kind(o.kind)) {
    const double hidden = std::floor(static_cast<double>(block_width) * o.expand);
    KVC_CHECK(hidden >= 1.0, o.kind, ": hidden size floor(n * d * expand) = floor(", o.block, " * ",
              o.dim_head, " * ", o.expand, ") = ", hidden, " must be at least 1");
    KVC_CHECK(hidden < 0x1p62, o.kind, ": hidden size floor(n * d * expand) = floor(", o.block,
              " * ", o.dim_head, " * ", o.expand, ") = ", hidden, " is too large");
    checked_mul(checked_mul(o.heads, block_width, "compressor: heads * block * dim_head"),
                static_cast<int64_t>(hidden), "compressor: MLP weight (heads * n * d) * hidden");
  }
}

Compressor::Compressor(const CompressorOptions& options) : options_(options) { validate(options_); }

void Compressor::check_input(const Tensor& x) const {
  const CompressorOptions& o = options_;
  const std::string want =
      str("(b, ", o.heads, ", w, ", needs_block() ? std::to_string(o.block) : std::string("n"),
          ", ", o.dim_head, ")");
  KVC_CHECK(x.defined(), o.kind, ": input is an undefined tensor (expected ", want, ")");
  KVC_CHECK(x.dim() == 5, o.kind, ": input ", x.shape(), " must be 5-D, the layer's ", want);
  KVC_CHECK(
      x.size(1) == o.heads && x.size(4) == o.dim_head && (!needs_block() || x.size(3) == o.block),
      o.kind, ": input ", x.shape(), " does not match the layer's ", want);
  KVC_CHECK(x.dtype() == dtype() && x.device() == device(), o.kind, ": input ", x.shape(), " is ",
            dtype_name(x.dtype()), " on ", x.device().name(), " but the layer's parameters are ",
            dtype_name(dtype()), " on ", device().name());
}

std::shared_ptr<Compressor> make_compressor(const CompressorOptions& options) {
  validate(options);
  const std::string& k = options.kind;
  if (k == "conv") return std::make_shared<ConvCompressor>(options);
  if (k == "efficient_conv") return std::make_shared<EfficientConvCompressor>(options);
  if (k == "attention_pool") return std::make_shared<AttentionPoolCompressor>(options, false);
  if (k == "scaled_attention_pool") {
    return std::make_shared<AttentionPoolCompressor>(options, true);
  }
  if (k == "grouped_mlp") return std::make_shared<GroupedMlpCompressor>(options);
  if (k == "enhanced_mlp") return std::make_shared<EnhancedMlpCompressor>(options);
  return std::make_shared<MlpCompressor>(options);  // validate() admitted only "mlp" here
}

}  // namespace kvc
