#include "worker/service/memory_budget.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "worker/backend/backend.h"

namespace tpserve {
namespace {

// This rank's share of a dimension of `full` elements split as `part`.
int64_t Share(int64_t bytes, const Range& part, int64_t full) {
  return full > 0 ? bytes * part.size() / full : bytes;
}

int64_t MeminfoBytes(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::istringstream fields(line.substr(key.size() + 1));
      int64_t kib = 0;
      fields >> kib;
      return kib * 1024;
    }
  }
  return 0;
}

}  // namespace

int64_t ShardWeightBytes(const TensorSource& source, const ModelConfig& c, const RankShard& shard) {
  const int64_t H = c.hidden_size, hd = c.head_dim;
  const int64_t q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd;
  int64_t total = 0;
  for (const std::string& name : source.Names()) {
    const TensorInfo* t = source.Find(name);
    if (t == nullptr) continue;
    const int64_t bytes = static_cast<int64_t>(t->nbytes);
    if (t->shape.size() < 2) {
      total += bytes;
      continue;
    }
    const int64_t rows = t->shape[0];
    int64_t cols = 1;
    for (size_t i = 1; i < t->shape.size(); ++i) cols *= t->shape[i];
    // Query heads are split in whole KV groups, so q rows and kv rows shrink by the same
    // head ranges (kv replicated when the group is larger than n_kv).
    const Range q_rows{shard.q_heads.begin * hd, shard.q_heads.end * hd};
    const Range kv_rows{shard.kv_heads.begin * hd, shard.kv_heads.end * hd};
    if (rows == c.vocab_size && cols == H) {
      total += Share(bytes, shard.vocab, c.vocab_size);
    } else if (cols == H && rows == q_dim) {
      total += Share(bytes, q_rows, q_dim);
    } else if (cols == H && rows == kv_dim) {
      total += Share(bytes, kv_rows, kv_dim);
    } else if (cols == H && rows == c.intermediate_size) {
      total += Share(bytes, shard.ffn_columns, c.intermediate_size);
    } else if (rows == H && cols == q_dim) {
      total += Share(bytes, q_rows, q_dim);
    } else if (rows == H && cols == c.intermediate_size) {
      total += Share(bytes, shard.ffn_columns, c.intermediate_size);
    } else {
      total += bytes;
    }
  }
  return total;
}

namespace {
// What an allocation of `bytes` may hold: the CUDA backend's pool rounds a request up to a size
// class (a multiple of a quarter of the next power of two: less than 25% more; 256 bytes under
// 4 KiB: cuda/device_pool.h), the host allocator to 64 bytes.
int64_t Allocated(int64_t bytes) { return bytes + bytes / 4 + 256; }
}  // namespace

int64_t StepActivationBytes(const ModelConfig& c, const RankShard& shard, int64_t max_tokens,
                            int64_t max_sequences, DType activation_dtype, bool samples_on_device) {
  const int64_t T = std::max<int64_t>(max_tokens, 1);
  const int64_t R = std::max<int64_t>(max_sequences, 1);
  const int64_t H = c.hidden_size, hd = c.head_dim;
  const int64_t nq = shard.q_heads.size(), nkv = shard.kv_heads.size();
  const int64_t Fl = shard.ffn_columns.size();
  const int64_t f32 = sizeof(float), act = activation_dtype == DType::kBF16 ? 2 : 4;
  // fp32: x, proj [T, H]; the RoPE table [T, hd]; the gathered rows of x [R, H]; decode
  // attention's chunk results [R, nq, kMaxAttentionChunks, hd + 2] at most; the local logits
  // [R, Vl], and on rank 0 the gathered, the assembled and the host copy [R, V].
  std::vector<int64_t> tensors = {T * H * f32,
                                  T * H * f32,
                                  T * hd * f32,
                                  R * H * f32,
                                  R * nq * kMaxAttentionChunks * (hd + 2) * f32,
                                  R * shard.vocab.size() * f32};
  if (shard.rank == 0) tensors.insert(tensors.end(), 3, R * c.vocab_size * f32);
  if (samples_on_device && shard.rank == 0) {
    // The listed rows gathered [R, V], and one buffer for the sort (cuda/sampling_kernels.cu):
    // sorted keys, token ids in and out, and CUB's alternate keys and values (the emulator's CUB
    // needs 1 KiB there, a GPU's two more copies of the rows).
    tensors.push_back(R * c.vocab_size * f32);
    tensors.push_back(5 * R * c.vocab_size * f32 + (R + 1) * 4 + (int64_t{1} << 20));
  }
  // In the activation dtype: h [T, H]; q, attn [T, nq*hd]; k, v [T, nkv*hd]; gate, up [T, Fl];
  // the final norm's output [R, H] (every GEMM input is one of them: none is rounded on the way).
  for (int64_t n :
       {T * H, T * nq * hd, T * nq * hd, T * nkv * hd, T * nkv * hd, T * Fl, T * Fl, R * H}) {
    tensors.push_back(n * act);
  }
  int64_t bytes = 0;
  for (int64_t t : tensors) bytes += Allocated(t);
  return bytes;
}

int64_t RecordedStepBytes(const ModelConfig& c, const RankShard& shard, int64_t max_rows,
                          int64_t max_blocks_per_seq, DType activation_dtype) {
  int64_t bytes = 0;
  if (max_rows <= 0) return 0;
  for (int64_t rows = 1; rows <= RecordedRows(max_rows); rows = RecordedRows(rows + 1)) {
    bytes += StepActivationBytes(c, shard, rows, rows, activation_dtype);
    // A decode step's uploads: per row its token, position, slot, logits row and attention
    // metadata (under 64 bytes) and its block table; the RoPE frequencies; 16-byte alignment of
    // each. The recorder gives each upload room to the next power of two and doubles an arena
    // it outgrew (cuda/step_recorder.cc): at most 4 times the uploads, 64 KiB at least.
    const int64_t uploads =
        rows * (64 + 4 * std::max<int64_t>(max_blocks_per_seq, 1)) + 4 * c.head_dim + 1024;
    bytes += Allocated(std::max<int64_t>(int64_t{64} << 10, 4 * uploads));
  }
  return bytes;
}

int64_t HostAvailableBytes() { return MeminfoBytes("MemAvailable"); }
int64_t HostTotalBytes() { return MeminfoBytes("MemTotal"); }

absl::StatusOr<int64_t> KvBlocksThatFit(const KvSizing& s) {
  const int64_t left = s.budget_bytes - s.weight_bytes - s.activation_bytes;
  const int64_t blocks = s.bytes_per_block > 0 && left > 0 ? left / s.bytes_per_block : 0;
  if (blocks < 1) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "memory budget of ", s.budget_bytes, " bytes is too small: weights take ", s.weight_bytes,
        ", activations ", s.activation_bytes, ", and one KV block needs ", s.bytes_per_block,
        "; raise --memory-budget (or the coordinator's budget)"));
  }
  return s.max_useful_blocks > 0 ? std::min(blocks, s.max_useful_blocks) : blocks;
}

}  // namespace tpserve
