// Activations: row-major, shape stored beside the buffer (outermost dimension first). fp32, or
// bf16 where a backend keeps the activations around its matmuls in bf16
// (Backend::activation_dtype: the CUDA backend's bf16 mode); data() is for fp32 tensors only.
//
// A Tensor shares its storage: copies are cheap views, `RowSlice` and `Reshaped` alias the same
// buffer. Which device the buffer lives on is recorded so that a backend can refuse a tensor of
// another device; the CPU backend's buffers are plain host memory.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "common/format/dtype.h"

namespace tpserve {

enum class Device { kCpu, kCuda };

class Tensor {
 public:
  Tensor() = default;
  // Zero-filled host tensor of `shape`.
  explicit Tensor(std::vector<int64_t> shape);
  Tensor(std::initializer_list<int64_t> shape) : Tensor(std::vector<int64_t>(shape)) {}
  // Host tensor of `shape` whose contents are unspecified until written (large ones are zero).
  static Tensor Uninitialized(std::vector<int64_t> shape);
  // Wraps a buffer owned by `storage` (any device) of `dtype` elements: kF32 or kBF16.
  Tensor(std::shared_ptr<void> storage, void* data, std::vector<int64_t> shape, Device device,
         DType dtype = DType::kF32);

  const std::vector<int64_t>& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[i < 0 ? i + ndim() : i]; }
  int64_t numel() const;
  // The last dimension, and the product of all the others (a [T, heads, hd] tensor has T*heads
  // rows of hd).
  int64_t cols() const { return shape_.empty() ? 1 : shape_.back(); }
  int64_t rows() const { return cols() == 0 ? 0 : numel() / cols(); }
  bool empty() const { return data_ == nullptr; }
  Device device() const { return device_; }
  DType dtype() const { return dtype_; }
  int64_t element_bytes() const { return dtype_ == DType::kF32 ? 4 : 2; }
  int64_t bytes() const { return numel() * element_bytes(); }

  // The elements of an fp32 tensor (aborts for another dtype).
  float* data() const {
    if (dtype_ != DType::kF32) [[unlikely]]
      NotFp32();
    return static_cast<float*>(data_);
  }
  float* row(int64_t r) const { return data() + r * cols(); }
  // The buffer, whatever the dtype (bf16: __nv_bfloat16 bit patterns).
  void* raw() const { return data_; }

  // Same buffer, new shape with the same number of elements.
  Tensor Reshaped(std::vector<int64_t> shape) const;
  // Elements [begin, end) of the outermost dimension, sharing the buffer.
  Tensor Slice0(int64_t begin, int64_t end) const;

  std::string ShapeString() const;  // "[3, 576]"

 private:
  Tensor(std::vector<int64_t> shape, bool clear);
  [[noreturn]] void NotFp32() const;

  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
  std::vector<int64_t> shape_;
  Device device_ = Device::kCpu;
  DType dtype_ = DType::kF32;
};

}  // namespace tpserve
