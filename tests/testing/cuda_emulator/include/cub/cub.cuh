// CUDA emulator (tests only): the subset of CUB the backend uses. Block collectives go through
// __shared__ storage and __syncthreads like the real ones, so a missing barrier or a divergent
// call shows in the emulator; device-wide sorts are queued like kernels.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda_runtime.h"

namespace cub {
namespace emu_detail {

// Raw per-thread slots: TempStorage must stay trivial whatever T is, since callers put it in a
// __shared__ union (a function-local static here).
template <class T, int N>
struct Slots {
  static_assert(std::is_trivially_copyable_v<T>, "emulated CUB needs trivially copyable T");
  alignas(T) unsigned char bytes[sizeof(T) * N];
  T Get(int i) const {
    T v;
    std::memcpy(&v, bytes + sizeof(T) * i, sizeof(T));
    return v;
  }
  void Set(int i, const T& v) { std::memcpy(bytes + sizeof(T) * i, &v, sizeof(T)); }
};

// Block collectives are specialised for one block shape; any other launch is a bug.
inline void CheckBlock(const char* what, int block_dim_x) {
  if (static_cast<int>(blockDim.x) != block_dim_x || blockDim.y != 1 || blockDim.z != 1) {
    ::tpserve_emu::Fatal("cub::%s<T, %d> used in a %ux%ux%u block", what, block_dim_x, blockDim.x,
                         blockDim.y, blockDim.z);
  }
}

}  // namespace emu_detail

// The aggregate is defined only in thread 0, as in CUB; other threads get their own input back
// so that code relying on it elsewhere fails visibly.
template <class T, int BLOCK_DIM_X>
class BlockReduce {
 public:
  struct TempStorage {
    emu_detail::Slots<T, BLOCK_DIM_X> slots;
  };
  explicit BlockReduce(TempStorage& storage) : s_(storage) {
    emu_detail::CheckBlock("BlockReduce", BLOCK_DIM_X);
  }
  T Sum(T input) {
    return Reduce(input, [](const T& a, const T& b) { return a + b; });
  }
  template <class Op>
  T Reduce(T input, Op op) {
    const int tid = static_cast<int>(threadIdx.x);
    s_.slots.Set(tid, input);
    __syncthreads();
    T out = input;
    if (tid == 0) {
      for (int i = 1; i < BLOCK_DIM_X; ++i) out = op(out, s_.slots.Get(i));
    }
    __syncthreads();
    return out;
  }

 private:
  TempStorage& s_;
};

template <class T, int BLOCK_DIM_X>
class BlockScan {
 public:
  struct TempStorage {
    emu_detail::Slots<T, BLOCK_DIM_X> slots;
  };
  explicit BlockScan(TempStorage& storage) : s_(storage) {
    emu_detail::CheckBlock("BlockScan", BLOCK_DIM_X);
  }
  void InclusiveSum(T input, T& output) {
    T aggregate;
    InclusiveSum(input, output, aggregate);
  }
  void InclusiveSum(T input, T& output, T& block_aggregate) {
    Scan(input, &output, nullptr, &block_aggregate);
  }
  // Thread 0 gets 0 (T{}), as CUB's ExclusiveSum documents.
  void ExclusiveSum(T input, T& output) {
    T aggregate;
    ExclusiveSum(input, output, aggregate);
  }
  void ExclusiveSum(T input, T& output, T& block_aggregate) {
    Scan(input, nullptr, &output, &block_aggregate);
  }

 private:
  void Scan(T input, T* inclusive, T* exclusive, T* aggregate) {
    const int tid = static_cast<int>(threadIdx.x);
    s_.slots.Set(tid, input);
    __syncthreads();
    if (tid == 0) {  // in-place inclusive prefix, sequential in index order
      T run = s_.slots.Get(0);
      for (int i = 1; i < BLOCK_DIM_X; ++i) s_.slots.Set(i, run = run + s_.slots.Get(i));
    }
    __syncthreads();
    if (inclusive != nullptr) *inclusive = s_.slots.Get(tid);
    if (exclusive != nullptr) *exclusive = tid == 0 ? T{} : s_.slots.Get(tid - 1);
    *aggregate = s_.slots.Get(BLOCK_DIM_X - 1);
  }
  TempStorage& s_;
};

struct DeviceSegmentedRadixSort {
  // Fixed: the emulated sort needs no device scratch, but callers must still ask and pass it.
  static constexpr size_t kTempBytes = 1024;

  template <class KeyT, class ValueT, class BeginOffsetIteratorT, class EndOffsetIteratorT>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes,
                               const KeyT* d_keys_in, KeyT* d_keys_out, const ValueT* d_values_in,
                               ValueT* d_values_out, int64_t num_items, int num_segments,
                               BeginOffsetIteratorT d_begin_offsets,
                               EndOffsetIteratorT d_end_offsets, int begin_bit = 0,
                               int end_bit = sizeof(KeyT) * 8, cudaStream_t stream = 0) {
    return Sort<false>(d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out, d_values_in,
                       d_values_out, num_items, num_segments, d_begin_offsets, d_end_offsets,
                       begin_bit, end_bit, stream);
  }
  template <class KeyT, class ValueT, class BeginOffsetIteratorT, class EndOffsetIteratorT>
  static cudaError_t SortPairsDescending(void* d_temp_storage, size_t& temp_storage_bytes,
                                         const KeyT* d_keys_in, KeyT* d_keys_out,
                                         const ValueT* d_values_in, ValueT* d_values_out,
                                         int64_t num_items, int num_segments,
                                         BeginOffsetIteratorT d_begin_offsets,
                                         EndOffsetIteratorT d_end_offsets, int begin_bit = 0,
                                         int end_bit = sizeof(KeyT) * 8, cudaStream_t stream = 0) {
    return Sort<true>(d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out, d_values_in,
                      d_values_out, num_items, num_segments, d_begin_offsets, d_end_offsets,
                      begin_bit, end_bit, stream);
  }

 private:
  // CUB's radix order: floats flip all bits when negative and the sign bit otherwise, and -0.0
  // is folded onto +0.0 (so they tie); signed integers flip the sign bit.
  template <class KeyT>
  static uint64_t RadixBits(KeyT key) {
    static_assert(std::is_arithmetic_v<KeyT> && !std::is_same_v<KeyT, bool> && sizeof(KeyT) <= 8);
    using U = std::conditional_t<
        sizeof(KeyT) == 8, uint64_t,
        std::conditional_t<sizeof(KeyT) == 4, uint32_t,
                           std::conditional_t<sizeof(KeyT) == 2, uint16_t, uint8_t>>>;
    constexpr U kHigh = static_cast<U>(U{1} << (sizeof(U) * 8 - 1));
    U b;
    std::memcpy(&b, &key, sizeof(b));
    if constexpr (std::is_floating_point_v<KeyT>) {
      b = static_cast<U>(b ^ ((b & kHigh) ? static_cast<U>(~U{0}) : kHigh));
      if (b == static_cast<U>(kHigh - 1)) b = kHigh;  // twiddled -0.0 -> twiddled +0.0
    } else if constexpr (std::is_signed_v<KeyT>) {
      b = static_cast<U>(b ^ kHigh);
    }
    return b;
  }

  template <bool kDescending, class KeyT, class ValueT, class BeginIt, class EndIt>
  static cudaError_t Sort(void* d_temp_storage, size_t& temp_storage_bytes, const KeyT* keys_in,
                          KeyT* keys_out, const ValueT* values_in, ValueT* values_out,
                          int64_t num_items, int num_segments, BeginIt begins, EndIt ends,
                          int begin_bit, int end_bit, cudaStream_t stream) {
    static_assert(std::is_trivially_copyable_v<ValueT>);
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = kTempBytes;
      return cudaSuccess;
    }
    if (temp_storage_bytes < kTempBytes || num_items < 0 || num_segments < 0 || begin_bit < 0 ||
        end_bit > static_cast<int>(sizeof(KeyT) * 8) || begin_bit > end_bit) {
      return cudaErrorInvalidValue;
    }
    if (num_items == 0 || num_segments == 0) return cudaSuccess;
    // The GPU would fault on host pointers; the emulator's op could read them, so check here.
    auto check = [](const void* p, size_t bytes, const char* what) {
      if (!::tpserve_emu::IsDevice(p, bytes)) {
        ::tpserve_emu::Fatal(
            "cub::DeviceSegmentedRadixSort: %s (%p, %zu bytes) is not device memory", what, p,
            bytes);
      }
    };
    const size_t n = static_cast<size_t>(num_items);
    check(keys_in, n * sizeof(KeyT), "d_keys_in");
    check(keys_out, n * sizeof(KeyT), "d_keys_out");
    check(values_in, n * sizeof(ValueT), "d_values_in");
    check(values_out, n * sizeof(ValueT), "d_values_out");
    if constexpr (std::is_pointer_v<BeginIt>) {
      check(begins, num_segments * sizeof(*begins), "d_begin_offsets");
    }
    if constexpr (std::is_pointer_v<EndIt>) {
      check(ends, num_segments * sizeof(*ends), "d_end_offsets");
    }
    const int nbits = end_bit - begin_bit;  // 0 bits: every key ties, a stable copy
    const uint64_t mask = nbits >= 64 ? ~uint64_t{0} : (uint64_t{1} << nbits) - 1;
    ::tpserve_emu::Enqueue(stream, [=] {
      std::vector<std::pair<uint64_t, int64_t>> order;  // (digit, input index)
      std::vector<ValueT> values;
      std::vector<KeyT> keys;
      for (int s = 0; s < num_segments; ++s) {
        const int64_t b = static_cast<int64_t>(begins[s]), e = static_cast<int64_t>(ends[s]);
        if (e <= b) continue;  // empty segment
        if (b < 0 || e > num_items) {
          ::tpserve_emu::Fatal(
              "cub::DeviceSegmentedRadixSort: segment %d [%lld, %lld) is outside [0, %lld)", s,
              static_cast<long long>(b), static_cast<long long>(e),
              static_cast<long long>(num_items));
        }
        order.clear();
        for (int64_t i = b; i < e; ++i) {
          order.emplace_back(nbits == 0 ? 0 : (RadixBits(keys_in[i]) >> begin_bit) & mask, i);
        }
        // Index breaks ties: the stable order a radix sort gives, in either direction.
        std::sort(order.begin(), order.end(), [](const auto& x, const auto& y) {
          if (x.first != y.first) return kDescending ? x.first > y.first : x.first < y.first;
          return x.second < y.second;
        });
        keys.clear();
        values.clear();
        for (const auto& o : order) {
          keys.push_back(keys_in[o.second]);
          values.push_back(values_in[o.second]);
        }
        std::copy(keys.begin(), keys.end(), keys_out + b);
        std::copy(values.begin(), values.end(), values_out + b);
      }
    });
    return cudaSuccess;
  }
};

}  // namespace cub
