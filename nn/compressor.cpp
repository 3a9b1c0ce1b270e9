// The kind registry, compressor options checks, the shared input check and make_compressor.
#include "nn/compressor.h"

#include <cmath>
#include <sstream>

#include "core/ops.h"
#include "nn/kinds/kinds.h"

namespace kvc {

namespace {

// The built-in kinds, one line each, in SPEC section 3's order; then whatever was registered.
std::vector<CompressorKind>& registry() {
  // clang-format off
  static std::vector<CompressorKind> kinds = {
      kinds::conv(),
      kinds::efficient_conv(),
      kinds::attention_pool(),
      kinds::scaled_attention_pool(),
      kinds::grouped_mlp(),
      kinds::enhanced_mlp(),
      kinds::mlp(),
  };
  // clang-format on
  return kinds;
}
// How many entries of registry() are built in (unregister_compressor_kind leaves them).
size_t builtin_kinds() {
  static const size_t n = registry().size();
  return n;
}

std::string kinds_list() {
  std::ostringstream os;
  const auto& kinds = registry();
  for (size_t i = 0; i < kinds.size(); ++i) os << (i ? ", " : "") << kinds[i].name;
  return os.str();
}

}  // namespace

const std::vector<CompressorKind>& compressor_registry() { return registry(); }

std::vector<std::string> compressor_kinds() {
  std::vector<std::string> names;
  for (const CompressorKind& k : registry()) names.push_back(k.name);
  return names;
}

const CompressorKind& compressor_kind(const std::string& name) {
  for (const CompressorKind& k : registry()) {
    if (k.name == name) return k;
  }
  KVC_FAIL("compressor: unknown kind '", name, "' (expected one of ", kinds_list(), ")");
}

void register_compressor_kind(CompressorKind kind) {
  builtin_kinds();  // counted before the first addition
  KVC_CHECK(!kind.name.empty() && kind.make && kind.forward_flops, "compressor: kind '", kind.name,
            "' needs a name, a factory and a FLOP model");
  for (const CompressorKind& k : registry()) {
    KVC_CHECK(k.name != kind.name, "compressor: kind '", kind.name, "' is already registered");
  }
  registry().push_back(std::move(kind));
}

void unregister_compressor_kind(const std::string& name) {
  auto& kinds = registry();
  for (size_t i = builtin_kinds(); i < kinds.size(); ++i) {
    if (kinds[i].name == name) {
      kinds.erase(kinds.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
  }
  KVC_FAIL("compressor: kind '", name, "' was not registered by register_compressor_kind");
}

void validate(const CompressorOptions& o) {
  const KindOptionsUsed uses = compressor_kind(o.kind).uses;
  KVC_CHECK(o.heads > 0 && o.dim_head > 0 && o.block > 0, o.kind, ": heads ", o.heads,
            ", dim_head ", o.dim_head, " and block ", o.block, " must all be positive");
  KVC_CHECK(o.dropout >= 0.0 && o.dropout < 1.0, o.kind, ": dropout ", o.dropout,
            " is outside [0, 1)");
  KVC_CHECK(std::isfinite(o.expand) && o.expand > 0.0, o.kind, ": expand ", o.expand,
            " must be a positive number");
  KVC_CHECK(o.reduction >= 1, o.kind, ": reduction ", o.reduction, " must be at least 1");
  KVC_CHECK(o.stride >= 0 && o.stride <= o.block, o.kind, ": stride ", o.stride,
            " must be in [1, block ", o.block, "]");
  KVC_CHECK(o.query_heads >= 1, o.kind, ": query heads ", o.query_heads, " must be at least 1");
  if (uses.reduction) {
    KVC_CHECK(o.dim_head % o.reduction == 0, o.kind, ": dim_head ", o.dim_head,
              " is not divisible by reduction ", o.reduction);
  }
  // Every parameter's size is a product of these; checked once here so none can wrap.
  const int64_t block_width = checked_mul(o.block, o.dim_head, "compressor: block * dim_head");
  const int64_t channels = checked_mul(o.heads, o.dim_head, "compressor: heads * dim_head");
  checked_mul(channels, block_width,
              "compressor: conv weight (heads * dim_head) * (dim_head * block)");
  if (uses.expand) {
    const double hidden = std::floor(static_cast<double>(block_width) * o.expand);
    KVC_CHECK(hidden >= 1.0, o.kind, ": hidden size floor(n * d * expand) = floor(", o.block, " * ",
              o.dim_head, " * ", o.expand, ") = ", hidden, " must be at least 1");
    KVC_CHECK(hidden < 0x1p62, o.kind, ": hidden size floor(n * d * expand) = floor(", o.block,
              " * ", o.dim_head, " * ", o.expand, ") = ", hidden, " is too large");
    checked_mul(checked_mul(o.heads, block_width, "compressor: heads * block * dim_head"),
                static_cast<int64_t>(hidden), "compressor: MLP weight (heads * n * d) * hidden");
  }
}

Compressor::Compressor(const CompressorOptions& options)
    : options_(options), needs_block_(compressor_kind(options.kind).needs_block) {
  validate(options_);
}

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

Tensor Compressor::compress_sequence(const Tensor& seq, const Tensor& positions) {
  return (*this)(add_block_positions(seq, positions, options_.block, options_.block_stride()));
}

std::shared_ptr<Compressor> make_compressor(const CompressorOptions& options) {
  validate(options);
  return compressor_kind(options.kind).make(options);
}

}  // namespace kvc
