// KV cache writes and causal attention over the paged cache on the GPU.
//
// The host flattens the step's sequences into per-row metadata (each token row's block-table
// offset and visible context length; for prefill also tiles of up to kPrefillTileRows rows of one
// sequence) and uploads it in one copy; the kernels do the rest (attention_kernels.cu).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "worker/backend/check.h"
#include "worker/backend/cuda/cuda_backend.h"
#include "worker/backend/cuda/cuda_kernels.h"
#include "worker/backend/cuda/cuda_status.h"

namespace tpserve {

using cuda::Pack;

static_assert(cuda::kMaxDecodeChunks == kMaxAttentionChunks, "the scratch the budget counts");

void CudaBackend::WriteKv(const Tensor& k, const Tensor& v, std::span<const int64_t> slots,
                          const KvLayerView& cache) {
  Bind();
  TPSERVE_CHECK(cache.dtype == kv_dtype_, "WriteKv: a %s pool, this backend keeps %s",
                KvDTypeName(cache.dtype), KvDTypeName(kv_dtype_));
  const int64_t row = cache.kv_heads * cache.head_dim;
  TPSERVE_CHECK(k.shape() == v.shape() && k.numel() == static_cast<int64_t>(slots.size()) * row,
                "WriteKv: k %s, v %s, %zu slots, cache row %lld", k.ShapeString().c_str(),
                v.ShapeString().c_str(), slots.size(), static_cast<long long>(row));
  const int64_t capacity = cache.num_blocks * cache.block_size;
  for (size_t t = 0; t < slots.size(); ++t) {
    TPSERVE_CHECK((slots[t] >= 0 && slots[t] < capacity) || slots[t] == kNoKvSlot,
                  "WriteKv: slot %lld of %lld", static_cast<long long>(slots[t]),
                  static_cast<long long>(capacity));
  }
  TPSERVE_CHECK(k.dtype() == v.dtype(), "WriteKv: k %s, v %s", DTypeName(k.dtype()),
                DTypeName(v.dtype()));
  CheckDevice(k, "WriteKv");
  CheckDevice(v, "WriteKv");
  std::shared_ptr<void> keep;
  const int64_t* dev_slots = Upload(slots, &keep);
  cuda::LaunchWriteKv(k.raw(), v.raw(), k.dtype() == DType::kBF16, dev_slots,
                      static_cast<int64_t>(slots.size()), row, cache.k, cache.v,
                      cache.dtype == KvDType::kFp16, stream_);
  CheckLaunch("WriteKv");
}

void CudaBackend::Attention(const Tensor& q, const KvLayerView& cache,
                            std::span<const AttentionSeq> seqs, const AttentionParams& params,
                            Tensor* out) {
  Bind();
  CheckAttentionArgs(q, cache, seqs, *out);
  TPSERVE_CHECK(cache.dtype == kv_dtype_, "Attention: a %s pool, this backend keeps %s",
                KvDTypeName(cache.dtype), KvDTypeName(kv_dtype_));
  TPSERVE_CHECK(q.dtype() == out->dtype(), "Attention: q %s, out %s", DTypeName(q.dtype()),
                DTypeName(out->dtype()));
  CheckDevice(q, "Attention");
  CheckDevice(*out, "Attention");
  TPSERVE_CHECK(cache.head_dim <= 256, "Attention: head_dim %lld > 256 is not supported on CUDA",
                static_cast<long long>(cache.head_dim));
  const int64_t T = q.dim(0), bs = cache.block_size;
  // Prefill rows on the tensor cores in bf16 mode (fp16 Q·K and P·V), fp32 on the CUDA cores in
  // the exact fp32 mode. The choice depends on the backend and the pool, never on the batch.
  const bool tensor_cores =
      options_.precision == CudaPrecision::kBf16 && options_.tensor_core_prefill &&
      cuda::TensorCorePrefillApplies(cache.head_dim, cache.dtype == KvDType::kFp16);
  const int64_t tile = tensor_cores ? cuda::kTensorCoreTileRows : cuda::kPrefillTileRows;

  // A row's kernel depends only on its own sequence: one-token sequences (decode) always take
  // the decode kernel, longer ones the prefill kernel, whatever else shares the step, so a
  // request's numbers do not change with the batch it lands in (batch invariance). Beyond the
  // decode grid's row limit everything takes the prefill kernel.
  const bool split = T <= cuda::kMaxDecodeRows;
  std::vector<int32_t> tables;
  std::vector<int64_t> table_offset(T, 0);
  std::vector<int32_t> ctx_len(T, 0);       // 0: row of no sequence (padding) -> zeros
  std::vector<int32_t> decode_ctx(T, 0);    // the decode kernel's rows; 0 elsewhere (zeros)
  std::vector<int32_t> decode_slot(T, -1);  // a decode row's place among them (its partials)
  int64_t decode_rows = 0;
  int32_t longest_decode = 0;
  std::vector<int32_t> tile_first, tile_rows;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const AttentionSeq& seq = seqs[s];
    const int64_t offset = static_cast<int64_t>(tables.size());
    tables.insert(tables.end(), seq.block_table.begin(), seq.block_table.end());
    for (int64_t t = 0; t < seq.num_tokens; ++t) {
      table_offset[seq.token_begin + t] = offset;
      ctx_len[seq.token_begin + t] = static_cast<int32_t>(seq.start_pos + t + 1);
    }
    if (split && seq.num_tokens == 1) {
      decode_ctx[seq.token_begin] = ctx_len[seq.token_begin];
      decode_slot[seq.token_begin] = static_cast<int32_t>(decode_rows++);
      longest_decode = std::max(longest_decode, ctx_len[seq.token_begin]);
      continue;
    }
    for (int64_t t0 = 0; t0 < seq.num_tokens; t0 += tile) {
      tile_first.push_back(static_cast<int32_t>(seq.token_begin + t0));
      tile_rows.push_back(static_cast<int32_t>(std::min<int64_t>(tile, seq.num_tokens - t0)));
    }
  }
  if (T == 0) return;

  // The block tables last: they grow with the sequences, and the arrays before them keep their
  // offsets (a recorded decode step's pointers stay the same as its sequences grow).
  std::vector<uint8_t> meta;
  const size_t off_offset = Pack(&meta, table_offset), off_ctx = Pack(&meta, ctx_len),
               off_decode = Pack(&meta, decode_ctx), off_slot = Pack(&meta, decode_slot),
               off_first = Pack(&meta, tile_first), off_rows = Pack(&meta, tile_rows),
               off_tables = Pack(&meta, tables);
  std::shared_ptr<void> keep;
  const uint8_t* dev = Upload(std::span<const uint8_t>(meta), &keep);

  cuda::AttentionArgs a;
  a.q = q.raw();
  a.out = out->raw();
  a.act_bf16 = q.dtype() == DType::kBF16;
  a.k_cache = cache.k;
  a.v_cache = cache.v;
  a.kv_half = cache.dtype == KvDType::kFp16;
  a.num_tokens = T;
  a.heads = q.dim(1);
  a.hd = q.dim(2);
  a.kv_heads = cache.kv_heads;
  a.block_size = bs;
  a.scale = params.scale;
  a.group_size = params.group_size;
  a.q_head_begin = params.q_head_begin;
  a.kv_head_begin = params.kv_head_begin;
  a.block_tables = reinterpret_cast<const int32_t*>(dev + off_tables);
  a.table_offset = reinterpret_cast<const int64_t*>(dev + off_offset);

  if (split) {
    // Every row: the decode rows' attention, zeros for the others (padding, and the prefill
    // rows the prefill kernel writes next on the same stream). Rows longer than a chunk keep
    // their chunks' states in `partials`, and a small batch spreads them over more blocks (about
    // 256 in all): how many depends on the step's rows, never a row's numbers.
    a.ctx_len = reinterpret_cast<const int32_t*>(dev + off_decode);
    cuda::DecodeSplit ds;
    std::shared_ptr<void> partials;
    if (longest_decode > cuda::kDecodeChunk) {
      partials =
          Scratch(static_cast<size_t>(decode_rows * a.heads * cuda::kMaxDecodeChunks * (a.hd + 2)) *
                  sizeof(float));
      ds.partials = static_cast<float*>(partials.get());
      ds.slot = reinterpret_cast<const int32_t*>(dev + off_slot);
      ds.splits =
          std::clamp<int64_t>(256 / std::max<int64_t>(T * a.heads, 1), 1, cuda::kMaxDecodeChunks);
    }
    cuda::LaunchPagedDecodeAttention(a, ds, stream_);
  } else {
    Zero(out->raw(), static_cast<size_t>(out->bytes()));  // bf16 zero is all zero bits too
  }
  if (!tile_first.empty()) {
    a.ctx_len = reinterpret_cast<const int32_t*>(dev + off_ctx);
    const auto* first = reinterpret_cast<const int32_t*>(dev + off_first);
    const auto* rows = reinterpret_cast<const int32_t*>(dev + off_rows);
    const int64_t tiles = static_cast<int64_t>(tile_first.size());
    TPSERVE_CHECK(
        tensor_cores ? cuda::LaunchTensorCorePrefillAttention(a, first, rows, tiles, stream_)
                     : cuda::LaunchFlashPrefillAttention(a, first, rows, tiles, stream_),
        "Attention: prefill kernel cannot run head_dim %lld", static_cast<long long>(a.hd));
  }
  CheckLaunch("Attention");
}

}  // namespace tpserve
