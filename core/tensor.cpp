// Tensor factories, metadata, host access and conversions.
#include "core/tensor.h"

#include <cmath>
#include <cstring>
#include <iomanip>
#include <sstream>

#include "kernels/fill.h"

namespace kvc {

int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t product = 0;
  KVC_CHECK(a >= 0 && b >= 0 && !__builtin_mul_overflow(a, b, &product), what, ": ", a, " * ", b,
            a < 0 || b < 0 ? " has a negative factor" : " overflows 64 bits");
  return product;
}

int64_t numel_of(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    KVC_CHECK(s >= 0, "tensor: negative size in shape ", shape);
    KVC_CHECK(!__builtin_mul_overflow(n, s, &n), "tensor: shape ", shape,
              " has more elements than 64 bits can count");
  }
  return n;
}

size_t nbytes_of(const Shape& shape, DType dtype) {
  const int64_t n = numel_of(shape);
  int64_t bytes = 0;
  KVC_CHECK(!__builtin_mul_overflow(n, static_cast<int64_t>(dtype_size(dtype)), &bytes),
            "tensor: shape ", shape, " of ", dtype_name(dtype),
            " needs more bytes than 64 bits "
            "can count");
  return static_cast<size_t>(bytes);
}

std::string shape_str(const Shape& shape) { return str(shape); }

int64_t find_non_finite(const Tensor& t) {
  const Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
  int64_t found = -1;
  KVC_DISPATCH_FLOAT(host.dtype(), "find_non_finite", [&] {
    const scalar_t* p = host.data<scalar_t>();
    const int64_t n = host.numel();
    for (int64_t i = 0; i < n && found < 0; ++i) {
      if (!std::isfinite(p[i])) found = i;
    }
  });
  return found;
}

namespace {

void check_shape(const Shape& shape) {
  for (int64_t s : shape) KVC_CHECK(s >= 0, "tensor: negative size in shape ", shape);
}

void check_device_usable(Device device) {
  if (device.is_cuda()) {
    const std::string why = cuda_unavailable_reason();
    KVC_CHECK(why.empty(), "cuda: no usable GPU for device ", device.name(), ": ", why);
  }
}

// Runs a fill-family kernel on the tensor's backend with scalar_t bound.
template <typename Fn>
void on_backend(const Tensor& t, const char* op, Fn&& fn) {
  KVC_DISPATCH_FLOAT(t.dtype(), op, [&] {
    scalar_t* p = t.data<scalar_t>();
    if (t.device().is_cpu()) {
      fn(p, std::integral_constant<bool, false>{});
    } else {
      KVC_CUDA_ONLY(fn(p, std::integral_constant<bool, true>{}));
    }
  });
}

}  // namespace

const TensorImpl& Tensor::checked() const {
  KVC_CHECK(impl_ != nullptr, "tensor: use of an undefined tensor");
  return *impl_;
}

Tensor Tensor::empty(const Shape& shape, const TensorOptions& opt) {
  check_shape(shape);
  check_device_usable(opt.device);
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = shape;
  impl->dtype = opt.dtype;
  impl->storage = std::make_shared<Storage>(nbytes_of(shape, opt.dtype), opt.device);
  impl->requires_grad = opt.requires_grad;
  return Tensor(std::move(impl));
}

Tensor Tensor::full(const Shape& shape, double value, const TensorOptions& opt) {
  Tensor t = empty(shape, opt);
  t.fill_(value);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, const TensorOptions& opt) { return full(shape, 0.0, opt); }
Tensor Tensor::ones(const Shape& shape, const TensorOptions& opt) { return full(shape, 1.0, opt); }
Tensor Tensor::scalar(double value, const TensorOptions& opt) { return full({}, value, opt); }

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape,
                           const TensorOptions& opt) {
  check_shape(shape);
  KVC_CHECK(static_cast<int64_t>(values.size()) == numel_of(shape), "tensor: ", values.size(),
            " values do not fill shape ", shape);
  TensorOptions host = opt;
  host.device = Device::cpu();
  host.requires_grad = false;
  Tensor t = empty(shape, host);
  KVC_DISPATCH_FLOAT(t.dtype(), "from_vector", [&] {
    scalar_t* p = t.data<scalar_t>();
    for (size_t i = 0; i < values.size(); ++i) p[i] = static_cast<scalar_t>(values[i]);
  });
  Tensor out = opt.device.is_cpu() ? t : t.to(opt.device);
  out.set_requires_grad(opt.requires_grad);
  return out;
}

Tensor Tensor::arange(int64_t n, const TensorOptions& opt) {
  KVC_CHECK(n >= 0, "arange: negative length ", n);
  Tensor t = empty({n}, opt);
  on_backend(t, "arange", [&](auto* p, auto on_cuda) {
    using T = std::remove_pointer_t<decltype(p)>;
    if constexpr (decltype(on_cuda)::value) {
      KVC_CUDA_ONLY(kernels::cuda::arange<T>(p, n));
    } else {
      kernels::cpu::arange<T>(p, n);
    }
  });
  return t;
}

Tensor Tensor::rand(const Shape& shape, uint64_t seed, uint64_t offset, double low, double high,
                    const TensorOptions& opt) {
  KVC_CHECK(low <= high, "rand: low ", low, " is above high ", high);
  Tensor t = empty(shape, opt);
  const int64_t n = t.numel();
  on_backend(t, "rand", [&](auto* p, auto on_cuda) {
    using T = std::remove_pointer_t<decltype(p)>;
    if constexpr (decltype(on_cuda)::value) {
      KVC_CUDA_ONLY(kernels::cuda::uniform<T>(p, n, seed, offset, low, high));
    } else {
      kernels::cpu::uniform<T>(p, n, seed, offset, low, high);
    }
  });
  return t;
}

Tensor Tensor::randn(const Shape& shape, uint64_t seed, uint64_t offset, double mean, double std,
                     const TensorOptions& opt, uint64_t first) {
  KVC_CHECK(std >= 0, "randn: negative std ", std);
  Tensor t = empty(shape, opt);
  const int64_t n = t.numel();
  on_backend(t, "randn", [&](auto* p, auto on_cuda) {
    using T = std::remove_pointer_t<decltype(p)>;
    if constexpr (decltype(on_cuda)::value) {
      KVC_CUDA_ONLY(kernels::cuda::normal<T>(p, n, seed, offset, mean, std, first));
    } else {
      kernels::cpu::normal<T>(p, n, seed, offset, mean, std, first);
    }
  });
  return t;
}

void Tensor::fill_(double value) {
  const int64_t n = numel();
  on_backend(*this, "fill", [&](auto* p, auto on_cuda) {
    using T = std::remove_pointer_t<decltype(p)>;
    if constexpr (decltype(on_cuda)::value) {
      KVC_CUDA_ONLY(kernels::cuda::fill<T>(p, n, static_cast<T>(value)));
    } else {
      kernels::cpu::fill<T>(p, n, static_cast<T>(value));
    }
  });
}

const Shape& Tensor::shape() const { return checked().shape; }

int64_t Tensor::size(int64_t axis) const {
  const int64_t d = dim();
  const int64_t a = axis < 0 ? axis + d : axis;
  KVC_CHECK(a >= 0 && a < d, "tensor: axis ", axis, " out of range for shape ", shape());
  return shape()[static_cast<size_t>(a)];
}

int64_t Tensor::numel() const { return numel_of(shape()); }
DType Tensor::dtype() const { return checked().dtype; }
Device Tensor::device() const { return checked().storage->device(); }

void* Tensor::raw_data() const {
  const TensorImpl& impl = checked();
  return static_cast<char*>(impl.storage->data()) + impl.offset;
}

std::vector<double> Tensor::to_vector() const {
  const Tensor host = device().is_cpu() ? *this : to(Device::cpu());
  std::vector<double> out(static_cast<size_t>(numel()));
  KVC_DISPATCH_FLOAT(dtype(), "to_vector", [&] {
    const scalar_t* p = host.data<scalar_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(p[i]);
  });
  return out;
}

double Tensor::item() const {
  KVC_CHECK(numel() == 1, "item: tensor of shape ", shape(), " has ", numel(),
            " elements, not one");
  return to_vector()[0];
}

std::string Tensor::to_string(int64_t max_elements) const {
  if (!defined()) return "Tensor(undefined)";
  std::ostringstream os;
  os << "Tensor(shape=" << shape_str(shape()) << ", dtype=" << dtype_name(dtype())
     << ", device=" << device().name();
  if (requires_grad()) os << ", requires_grad";
  os << ", values=[";
  const std::vector<double> v = to_vector();
  const size_t shown = std::min<size_t>(v.size(), static_cast<size_t>(max_elements));
  os << std::setprecision(6);
  for (size_t i = 0; i < shown; ++i) os << (i ? ", " : "") << v[i];
  if (shown < v.size()) os << ", ...";
  os << "])";
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.to_string(); }

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return detach();
  Tensor out = empty(shape(), options().with_dtype(target));
  const int64_t n = numel();
  const bool cuda = device().is_cuda();
  KVC_DISPATCH_FLOAT(dtype(), "to(dtype)", [&] {
    using From = scalar_t;
    const From* src = data<From>();
    KVC_DISPATCH_FLOAT(target, "to(dtype)", [&] {
      if (cuda) {
        KVC_CUDA_ONLY(kernels::cuda::cast<scalar_t, From>(out.data<scalar_t>(), src, n));
      } else {
        kernels::cpu::cast<scalar_t, From>(out.data<scalar_t>(), src, n);
      }
    });
  });
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return detach();
  Tensor out = empty(shape(), options().with_device(target));
  copy_bytes(out.raw_data(), target, raw_data(), device(), nbytes());
  return out;
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), options());
  copy_bytes(out.raw_data(), device(), raw_data(), device(), nbytes());
  return out;
}

void Tensor::copy_from(const Tensor& src) {
  KVC_CHECK(src.shape() == shape() && src.dtype() == dtype(), "copy_from: source ", src.shape(),
            " ", dtype_name(src.dtype()), " does not match destination ", shape(), " ",
            dtype_name(dtype()));
  copy_bytes(raw_data(), device(), src.raw_data(), src.device(), nbytes());
}

Tensor Tensor::detach() const {
  const TensorImpl& impl = checked();
  auto out = std::make_shared<TensorImpl>();
  out->storage = impl.storage;
  out->offset = impl.offset;
  out->shape = impl.shape;
  out->dtype = impl.dtype;
  return Tensor(std::move(out));
}

Tensor Tensor::view_as_shape(const Shape& new_shape) const {
  check_shape(new_shape);
  KVC_CHECK(numel_of(new_shape) == numel(), "view: shape ", new_shape, " does not hold the ",
            numel(), " elements of ", shape());
  Tensor out = detach();
  out.impl_->shape = new_shape;
  return out;
}

bool Tensor::requires_grad() const { return checked().requires_grad; }

Tensor& Tensor::set_requires_grad(bool r) {
  checked();
  impl_->requires_grad = r;
  return *this;
}

Tensor Tensor::grad() const { return Tensor(checked().grad); }

void Tensor::set_grad(const Tensor& g) {
  checked();
  impl_->grad = g.impl_ptr();
}

void Tensor::zero_grad() {
  checked();
  impl_->grad.reset();
}

bool Tensor::is_leaf() const { return checked().tape_index < 0; }

}  // namespace kvc
