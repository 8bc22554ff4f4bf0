// How a rank splits its memory budget (worker.proto LoadModelRequest.memory_budget_bytes; on a
// GPU, by default, what the device has free): its weight slices, the activations of the largest
// step (and of the recorded steps), and KV blocks with the rest.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "common/format/model_config.h"
#include "common/format/tensor_source.h"
#include "worker/parallel/shard_plan.h"

namespace tpserve {

// Bytes of `shard`'s slices of every tensor of `source`, as stored (quantised weights count
// their blocks). A matrix is attributed to a split by its shape against `config` (vocab rows,
// query / KV head rows or columns, FFN rows or columns); anything else (norms, biases) is whole.
int64_t ShardWeightBytes(const TensorSource& source, const ModelConfig& config,
                         const RankShard& shard);

// Upper bound of the activations of one step of `max_tokens` tokens and `max_sequences`
// sequences (one logits row each) on this rank: the fp32 residual stream, partial sums, RoPE
// table, attention chunk results and logits (the gathered ones on rank 0), and the activations
// around the matmuls (normed inputs, q/k/v, attention output, gate/up, the final norm's output)
// in the backend's `activation_dtype` (Backend::activation_dtype: fp32 or bf16). With
// `samples_on_device` (Backend::samples_on_device, rank 0) also what drawing every row there
// takes: the rows gathered, sorted with their token ids, and the sort's own storage.
int64_t StepActivationBytes(const ModelConfig& config, const RankShard& shard, int64_t max_tokens,
                            int64_t max_sequences, DType activation_dtype = DType::kF32,
                            bool samples_on_device = false);
// What the recorded decode steps (CUDA graphs) keep, each padded size up to RecordedRows(max_rows)
// with a pool of its own: StepActivationBytes of each size, and its upload arena (the step's
// token ids, positions, slots and block tables of up to `max_blocks_per_seq` blocks a row, with
// the recorder's room to grow), summed.
int64_t RecordedStepBytes(const ModelConfig& config, const RankShard& shard, int64_t max_rows,
                          int64_t max_blocks_per_seq, DType activation_dtype = DType::kF32);

// MemAvailable / MemTotal of /proc/meminfo in bytes (0 when unreadable).
int64_t HostAvailableBytes();
int64_t HostTotalBytes();

struct KvSizing {
  int64_t budget_bytes = 0;  // total budget
  int64_t weight_bytes = 0;
  int64_t activation_bytes = 0;
  int64_t bytes_per_block = 0;
  // Blocks beyond this are never needed (max_batch_sequences full contexts); 0: no cap.
  int64_t max_useful_blocks = 0;
};

// KV blocks that fit. RESOURCE_EXHAUSTED with the figures when not even one block fits.
absl::StatusOr<int64_t> KvBlocksThatFit(const KvSizing& s);

}  // namespace tpserve
