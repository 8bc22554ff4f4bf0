// Activations: fp32, row-major, shape stored beside the buffer (outermost dimension first).
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
  // Wraps a buffer owned by `storage` (any device).
  Tensor(std::shared_ptr<void> storage, float* data, std::vector<int64_t> shape, Device device);

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

  float* data() const { return data_; }
  float* row(int64_t r) const { return data_ + r * cols(); }

  // Same buffer, new shape with the same number of elements.
  Tensor Reshaped(std::vector<int64_t> shape) const;
  // Elements [begin, end) of the outermost dimension, sharing the buffer.
  Tensor Slice0(int64_t begin, int64_t end) const;

  std::string ShapeString() const;  // "[3, 576]"

 private:
  Tensor(std::vector<int64_t> shape, bool clear);

  std::shared_ptr<void> storage_;
  float* data_ = nullptr;
  std::vector<int64_t> shape_;
  Device device_ = Device::kCpu;
};

}  // namespace tpserve
