// Tensor: a handle to shared storage with a shape, dtype, device and autograd state.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "core/storage.h"

namespace kvc {

struct TensorOptions {
  DType dtype = DType::f32;
  Device device = Device::cpu();
  bool requires_grad = false;

  TensorOptions& with_dtype(DType d) {
    dtype = d;
    return *this;
  }
  TensorOptions& with_device(Device d) {
    device = d;
    return *this;
  }
  TensorOptions& with_requires_grad(bool r) {
    requires_grad = r;
    return *this;
  }
};

inline TensorOptions f32() { return TensorOptions{}; }
inline TensorOptions f64() { return TensorOptions{}.with_dtype(DType::f64); }

class Tensor;

// Shared state behind a Tensor handle. Always contiguous, row-major, starting at offset_ bytes.
struct TensorImpl {
  std::shared_ptr<Storage> storage;
  size_t offset = 0;  // bytes into storage (views made by reshape keep 0; narrow views do not)
  Shape shape;
  DType dtype = DType::f32;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;  // accumulated gradient, same shape/dtype/device
  // Where backward puts this tensor's gradient while it has none (an optimizer's slice of its
  // flat gradient buffer, see Adam): the first gradient is written there instead of into a new
  // buffer, so that an optimizer need not zero-fill its buffer before every backward.
  std::shared_ptr<TensorImpl> grad_home;
  // Set by ops: which tape entry produced this tensor, and in which tape generation.
  int64_t tape_index = -1;
  uint64_t tape_generation = 0;
};

class Tensor {
 public:
  Tensor() = default;  // undefined
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- factories ----
  static Tensor empty(const Shape& shape, const TensorOptions& opt = {});
  static Tensor zeros(const Shape& shape, const TensorOptions& opt = {});
  static Tensor ones(const Shape& shape, const TensorOptions& opt = {});
  static Tensor full(const Shape& shape, double value, const TensorOptions& opt = {});
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape,
                            const TensorOptions& opt = {});
  static Tensor scalar(double value, const TensorOptions& opt = {});  // shape ()
  static Tensor arange(int64_t n, const TensorOptions& opt = {});     // 0..n-1, shape (n)
  // Uniform on [low, high) / normal(mean, std) drawn from Philox4x32-10 keyed by (seed, offset).
  static Tensor rand(const Shape& shape, uint64_t seed, uint64_t offset = 0, double low = 0.0,
                     double high = 1.0, const TensorOptions& opt = {});
  // randn's `first`: the tensor holds elements first.. of the stream (a shard of a larger draw).
  static Tensor randn(const Shape& shape, uint64_t seed, uint64_t offset = 0, double mean = 0.0,
                      double std = 1.0, const TensorOptions& opt = {}, uint64_t first = 0);

  // ---- metadata ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  int64_t size(int64_t axis) const;  // negative axes count from the end
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }
  TensorOptions options() const { return TensorOptions{dtype(), device(), false}; }

  // ---- data ----
  void* raw_data() const;
  template <typename T>
  T* data() const {
    KVC_CHECK(dtype() == dtype_of<T>::value, "tensor: data<", dtype_name(dtype_of<T>::value),
              ">() on a ", dtype_name(dtype()), " tensor of shape ", shape());
    return static_cast<T*>(raw_data());
  }
  double item() const;                    // one element; copies to host
  std::vector<double> to_vector() const;  // all elements as double, on the host
  std::string to_string(int64_t max_elements = 16) const;

  // ---- conversion (not recorded on the tape) ----
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;
  Tensor clone() const;   // new storage, no grad history
  Tensor detach() const;  // shares storage, no grad history, requires_grad false
  // Shares storage under a new shape of the same numel (the op `reshape` records autograd).
  Tensor view_as_shape(const Shape& shape) const;
  void copy_from(const Tensor& src);  // same shape and dtype; any devices
  void fill_(double value);

  // ---- autograd ----
  bool requires_grad() const;
  Tensor& set_requires_grad(bool r);
  Tensor grad() const;  // undefined until backward reaches this tensor
  void set_grad(const Tensor& g);
  void zero_grad();      // drops the gradient (PyTorch's set_to_none)
  bool is_leaf() const;  // not produced by a recorded op

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  const TensorImpl& checked() const;
  std::shared_ptr<TensorImpl> impl_;
};

// a * b for sizes and counts (both >= 0). Every product of sizes that can come from a flag or a
// file goes through here: an overflow throws kvc::Error naming `what` and both values instead of
// wrapping into a small or negative size.
int64_t checked_mul(int64_t a, int64_t b, const char* what = "size");
// The number of elements of `shape`, through checked_mul: throws naming the shape on overflow.
int64_t numel_of(const Shape& shape);
// numel_of(shape) * dtype_size(dtype), checked: throws naming the shape when it overflows.
size_t nbytes_of(const Shape& shape, DType dtype);
std::string shape_str(const Shape& shape);
// The flat index of the first NaN or infinite element of a float tensor (any device), or -1.
int64_t find_non_finite(const Tensor& t);
std::ostream& operator<<(std::ostream& os, const Tensor& t);

}  // namespace kvc
