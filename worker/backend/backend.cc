#include "worker/backend/backend.h"

#include <cstring>

#include "worker/backend/check.h"

namespace tpserve {

const char* KvDTypeName(KvDType t) {
  switch (t) {
    case KvDType::kFp16:
      return "fp16";
    case KvDType::kInt8:
      return "int8";
    case KvDType::kFp32:
      break;
  }
  return "fp32";
}

void CheckCopyColumns(const Tensor& src, int64_t col_begin, const Tensor& dst) {
  TPSERVE_CHECK(src.rows() == dst.rows() && col_begin >= 0 && col_begin + src.cols() <= dst.cols(),
                "CopyColumns: %s into columns [%lld, %lld) of %s", src.ShapeString().c_str(),
                static_cast<long long>(col_begin), static_cast<long long>(col_begin + src.cols()),
                dst.ShapeString().c_str());
}

void Backend::CopyColumns(const Tensor& src, int64_t col_begin, Tensor* dst) {
  CheckCopyColumns(src, col_begin, *dst);
  TPSERVE_CHECK(src.device() == Device::kCpu && dst->device() == Device::kCpu,
                "CopyColumns: %s has no device copy", name().c_str());
  for (int64_t r = 0; r < src.rows(); ++r) {
    std::memcpy(dst->row(r) + col_begin, src.row(r),
                static_cast<size_t>(src.cols()) * sizeof(float));
  }
}

Weight RowsAsWeight(const Tensor& x) {
  return Weight{.dtype = DType::kF32,
                .rows = x.rows(),
                .cols = x.cols(),
                .data = reinterpret_cast<const uint8_t*>(x.data()),
                .row_stride_bytes = static_cast<size_t>(x.cols()) * sizeof(float),
                .owned = nullptr,
                .int8 = nullptr};
}

int64_t RecordedRows(int64_t T) {
  if (T <= 1) return 1;
  if (T <= 2) return 2;
  if (T <= 4) return 4;
  return (T + 7) / 8 * 8;
}

void CheckAttentionArgs(const Tensor& q, const KvLayerView& cache,
                        std::span<const AttentionSeq> seqs, const Tensor& out) {
  TPSERVE_CHECK(q.ndim() == 3 && q.shape() == out.shape() && q.dim(2) == cache.head_dim,
                "Attention: q %s, out %s, head_dim %lld", q.ShapeString().c_str(),
                out.ShapeString().c_str(), static_cast<long long>(cache.head_dim));
  const int64_t num_tokens = q.dim(0);
  for (size_t s = 0; s < seqs.size(); ++s) {
    const AttentionSeq& seq = seqs[s];
    TPSERVE_CHECK(seq.token_begin >= 0 && seq.token_begin + seq.num_tokens <= num_tokens,
                  "Attention: sequence %zu rows out of range", s);
    const int64_t ctx = seq.start_pos + seq.num_tokens;
    TPSERVE_CHECK(static_cast<int64_t>(seq.block_table.size()) * cache.block_size >= ctx,
                  "Attention: sequence %zu has %zu blocks for %lld positions", s,
                  seq.block_table.size(), static_cast<long long>(ctx));
  }
}

}  // namespace tpserve
