#include "worker/backend/tensor.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>

#include "absl/strings/str_join.h"
#include "worker/backend/check.h"

namespace tpserve {
namespace {

// Buffers from this size on are mapped zeroed by the kernel (see Tensor(shape)); smaller ones come
// from the allocator and are cleared here. Activations (a 32-sequence step's logits are 6 MB)
// stay below it: mapped and unmapped every step they cost page faults on first touch and an
// munmap at the end (~0.6 ms of a 25 ms step), more than clearing reused memory.
constexpr size_t kLazyZeroBytes = size_t{64} << 20;

int64_t Product(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
}

}  // namespace

Tensor::Tensor(std::vector<int64_t> shape) : Tensor(std::move(shape), /*clear=*/true) {}

Tensor Tensor::Uninitialized(std::vector<int64_t> shape) {
  return Tensor(std::move(shape), /*clear=*/false);
}

Tensor::Tensor(std::vector<int64_t> shape, bool clear) : shape_(std::move(shape)) {
  const int64_t n = Product(shape_);
  // 64-byte alignment: one AVX-512 register, one cache line.
  const size_t bytes = ((static_cast<size_t>(n) * sizeof(float) + 63) / 64) * 64;
  if (bytes >= kLazyZeroBytes) {
    // Big buffers (the KV pool: gigabytes) come zeroed from the kernel, page by page on first
    // touch: load and exit cost what is used, not the pool size (memset of 11 GB took 40 s).
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TPSERVE_CHECK(m != MAP_FAILED, "out of memory mapping %zu bytes", bytes);
    storage_ = std::shared_ptr<void>(m, [bytes](void* q) { munmap(q, bytes); });
    data_ = m;
    return;
  }
  void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  TPSERVE_CHECK(p != nullptr, "out of memory allocating %zu bytes", bytes);
  if (clear) std::memset(p, 0, bytes);
  storage_ = std::shared_ptr<void>(p, std::free);
  data_ = p;
}

Tensor::Tensor(std::shared_ptr<void> storage, void* data, std::vector<int64_t> shape, Device device,
               DType dtype)
    : storage_(std::move(storage)),
      data_(data),
      shape_(std::move(shape)),
      device_(device),
      dtype_(dtype) {
  TPSERVE_CHECK(dtype == DType::kF32 || dtype == DType::kBF16, "a %s tensor %s", DTypeName(dtype),
                ShapeString().c_str());
}

void Tensor::NotFp32() const {
  TPSERVE_CHECK(dtype_ == DType::kF32, "the fp32 elements of a %s tensor %s", DTypeName(dtype_),
                ShapeString().c_str());
  std::abort();
}

int64_t Tensor::numel() const { return shape_.empty() && data_ == nullptr ? 0 : Product(shape_); }

Tensor Tensor::Reshaped(std::vector<int64_t> shape) const {
  TPSERVE_CHECK(Product(shape) == numel(), "reshape %s -> [%s]", ShapeString().c_str(),
                absl::StrJoin(shape, ", ").c_str());
  return Tensor(storage_, data_, std::move(shape), device_, dtype_);
}

Tensor Tensor::Slice0(int64_t begin, int64_t end) const {
  TPSERVE_CHECK(!shape_.empty() && 0 <= begin && begin <= end && end <= shape_[0],
                "slice [%lld, %lld) of %s", static_cast<long long>(begin),
                static_cast<long long>(end), ShapeString().c_str());
  std::vector<int64_t> shape = shape_;
  const int64_t inner = shape_[0] == 0 ? 0 : numel() / shape_[0];
  shape[0] = end - begin;
  return Tensor(storage_, static_cast<char*>(data_) + begin * inner * element_bytes(),
                std::move(shape), device_, dtype_);
}

std::string Tensor::ShapeString() const { return "[" + absl::StrJoin(shape_, ", ") + "]"; }

}  // namespace tpserve
