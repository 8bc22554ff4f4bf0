// Launchers of the CUDA backend's own kernels (the .cu files). Plain pointers and sizes only:
// this header is included by C++17 (nvcc) and C++20 (the backend) translation units alike.
//
// Every launcher enqueues on `stream` and returns at once; errors surface at the next
// synchronising call (the backend checks cudaGetLastError after each launch in debug paths).
// Activations are row-major, fp32 or bf16 (Backend::activation_dtype): a `void*` activation
// comes with a flag saying which (bf16: __nv_bfloat16 bit patterns); the math is fp32 throughout
// and a bf16 result is rounded to nearest even once, when stored.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <type_traits>

#include "worker/backend/cuda/cuda_launch.h"

namespace tpserve::cuda {

// ---- conversions and elementwise ----
// dst[i] = bf16(src[i]) (round to nearest even), n elements.
void LaunchF32ToBf16(const float* src, uint16_t* dst, int64_t n, cudaStream_t stream);
// y[i] += x[i].
void LaunchAdd(const void* x, bool x_bf16, void* y, bool y_bf16, int64_t n, cudaStream_t stream);
// y[r, c] += bias[c] for rows x cols.
void LaunchAddBias(const float* bias, void* y, bool y_bf16, int64_t rows, int64_t cols,
                   cudaStream_t stream);
// out = silu(gate) * up (all three of one dtype); out may alias gate.
void LaunchSiluMul(const void* gate, const void* up, void* out, bool bf16, int64_t n,
                   cudaStream_t stream);
// y[r, :] = x[r, :] * rsqrt(mean(x[r, :]^2) + eps) * weight; y may alias x when of its dtype.
// One block a row.
void LaunchRmsNorm(const void* x, bool x_bf16, const float* weight, float eps, void* y, bool y_bf16,
                   int64_t rows, int64_t cols, cudaStream_t stream);
// Fills n values of `dst` (fp32 or bf16 per `bf16`) with uniform(-scale, scale) from a hash of
// (seed, index): random weights for benchmarks without host traffic.
void LaunchRandomFill(void* dst, bool bf16, int64_t n, float scale, uint64_t seed,
                      cudaStream_t stream);

// ---- positions ----
// cos_sin[t, i] = cos(pos[t] * inv_freq[i]), cos_sin[t, half + i] = sin(...); [T, 2*half].
void LaunchRopeTable(const int32_t* positions, const float* inv_freq, float* cos_sin, int64_t T,
                     int64_t half, cudaStream_t stream);
// Rotates q [T, heads, hd] in place, and k [T, k_heads, hd] when not null, in one launch;
// interleaved pairs (2i, 2i+1) or rotate-half (i, i+hd/2). q and k of one dtype.
void LaunchRope(const float* cos_sin, bool interleaved, void* q, int64_t T, int64_t heads, void* k,
                int64_t k_heads, int64_t hd, bool bf16, cudaStream_t stream);

// ---- vocabulary ----
// out[t, :] = table[tokens[t] - vocab_begin, :] (rows `row_stride` elements apart) when in
// [0, table_rows), else zeros. Table is fp32 or bf16.
void LaunchEmbedding(const int32_t* tokens, int64_t T, const void* table, bool table_bf16,
                     int64_t table_rows, int64_t cols, int64_t row_stride, int64_t vocab_begin,
                     void* out, bool out_bf16, cudaStream_t stream);

// ---- KV cache and attention ----
// cache_k/v[slots[t] * row + i] = k/v[t * row + i], row = kv_heads * hd elements: fp32 pools,
// or fp16 (`half`) with the value saturated to +-65504 and rounded to nearest even (NaN kept).
// Rows with a negative slot (padding) are not written. k and v of one dtype (kv_bf16).
void LaunchWriteKv(const void* k, const void* v, bool kv_bf16, const int64_t* slots, int64_t T,
                   int64_t row, void* cache_k, void* cache_v, bool half, cudaStream_t stream);

struct AttentionArgs {
  const void* q = nullptr;        // [T, heads, hd], fp32 or bf16 (act_bf16)
  void* out = nullptr;            // [T, heads, hd], q's dtype
  const void* k_cache = nullptr;  // [num_blocks, block_size, kv_heads, hd], fp32 or fp16
  const void* v_cache = nullptr;
  // Per token row: its sequence's block table (offset into `block_tables`, int32 block ids) and
  // the number of positions it sees (causal: its own position + 1); ctx 0 = padding row (zeros).
  const int32_t* block_tables = nullptr;
  const int64_t* table_offset = nullptr;  // [T]
  const int32_t* ctx_len = nullptr;       // [T]
  int64_t num_tokens = 0, heads = 0, hd = 0, kv_heads = 0, block_size = 0;
  int64_t group_size = 1, q_head_begin = 0, kv_head_begin = 0;
  float scale = 1.0f;
  int32_t kv_half = 0;   // the pools hold fp16
  int32_t act_bf16 = 0;  // q and out hold bf16
  int32_t pad = 0;
};
// No padding bytes (launches are compared as bytes when steps are recorded: cuda_launch.h).
static_assert(sizeof(AttentionArgs) == 7 * sizeof(void*) + 8 * sizeof(int64_t) + 16);
template <>
struct IsPaddingFree<AttentionArgs> : std::true_type {};

// Decode: blocks (head, row, split), 8 warps over a chunk of the row's positions, online softmax,
// warps merged through shared memory. A row's positions are cut into chunks of DecodeChunkLen
// (a function of its context alone, so a row's arithmetic does not depend on the batch): at most
// kMaxDecodeChunks of them, kDecodeChunk positions each until the context is longer than
// kDecodeChunk * kMaxDecodeChunks. Block z takes chunks z, z + splits, ...; a row of one chunk is
// written directly, a longer one's chunks go to `partials` ([decode rows, heads,
// kMaxDecodeChunks, hd + 2] floats: max, sum, unnormalised output; row t at slot[t]) and a second
// kernel merges them in order. `partials` may be null only when no row has more than kDecodeChunk
// positions. At most kMaxDecodeRows rows (the grid's y); hd <= 256.
inline constexpr int64_t kMaxDecodeRows = 65535;
inline constexpr int32_t kDecodeChunk = 512;
inline constexpr int32_t kMaxDecodeChunks = 16;  // = kMaxAttentionChunks (backend.h)
struct DecodeSplit {
  float* partials = nullptr;
  const int32_t* slot = nullptr;  // [T]: a decode row's index into partials
  int64_t splits = 1;             // the grid's z: blocks a row's chunks are spread over
};
static_assert(sizeof(DecodeSplit) == 24);
#if defined(__CUDACC__)
#define TPSERVE_HOST_DEVICE __host__ __device__
#else
#define TPSERVE_HOST_DEVICE
#endif
TPSERVE_HOST_DEVICE inline int32_t DecodeChunkLen(int32_t ctx) {
  const int32_t span = kDecodeChunk * kMaxDecodeChunks;
  return kDecodeChunk * ((ctx + span - 1) / span);
}
void LaunchPagedDecodeAttention(const AttentionArgs& a, const DecodeSplit& split,
                                cudaStream_t stream);

// Prefill: tiles of up to kPrefillTileRows query rows of one sequence (`tile_first_row`,
// `tile_rows` per tile, `num_tiles`) against K/V tiles staged in shared memory, online softmax
// (flash-attention style, fp32). Returns false when hd is beyond what the kernel supports.
inline constexpr int kPrefillTileRows = 16;
bool LaunchFlashPrefillAttention(const AttentionArgs& a, const int32_t* tile_first_row,
                                 const int32_t* tile_rows, int64_t num_tiles, cudaStream_t stream);

// Prefill on the tensor cores (bf16 mode; fp16 pools; hd a multiple of 16, at most 256): tiles of
// up to kTensorCoreTileRows rows; Q (times the scale) and the probabilities rounded to fp16 for the
// WMMA products, scores, softmax state and output accumulated in fp32. Returns false when it does
// not apply.
inline constexpr int kTensorCoreTileRows = 64;
bool TensorCorePrefillApplies(int64_t hd, bool kv_half);
bool LaunchTensorCorePrefillAttention(const AttentionArgs& a, const int32_t* tile_first_row,
                                      const int32_t* tile_rows, int64_t num_tiles,
                                      cudaStream_t stream);

// ---- sampling ----
// tokens[r] = argmax of logits[r, 0..V) (lowest index on ties).
void LaunchArgmax(const float* logits, int64_t rows, int64_t V, int32_t* tokens,
                  cudaStream_t stream);

struct SampleRowParams {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  double u = 0.0;  // CounterUniform(seed, step), drawn on the host (same RNG as the CPU)
};
// Bytes of temporary storage LaunchSampleSorted needs for rows x V.
size_t SampleTempBytes(int64_t rows, int64_t V);
// Non-greedy draw per row: sorts each row (logit descending, token ascending on ties), then
// softmax / top-k / top-p / min-p in double over the survivors and the inverse CDF at u, exactly
// the CPU sampler's procedure. `temp` holds SampleTempBytes bytes of device memory.
void LaunchSampleSorted(const float* logits, int64_t rows, int64_t V,
                        const SampleRowParams* params_dev, void* temp, size_t temp_bytes,
                        int32_t* tokens, cudaStream_t stream);

// ---- the host's logits processing and log-probs, on the device ----
// Per row, ranges into the flat arrays of LaunchAdjustLogits.
struct RowAdjust {
  float repetition = 1.0f, presence = 0.0f, frequency = 0.0f;
  int32_t penalty_begin = 0, penalty_end = 0;  // penalty_tokens / penalty_counts
  int32_t bias_begin = 0, bias_end = 0;        // bias_tokens / bias_values
  int32_t suppress_begin = 0, suppress_end = 0;
};
// logits[r, :] adjusted in place as ApplyAdjustments does (worker/service/logits_processing.cc):
// penalties on the distinct penalty tokens, then the biases in order, then suppressed -> -inf.
void LaunchAdjustLogits(float* logits, int64_t rows, int64_t V, const RowAdjust* adjust,
                        const int32_t* penalty_tokens, const int32_t* penalty_counts,
                        const int32_t* bias_tokens, const float* bias_values,
                        const int32_t* suppressed, cudaStream_t stream);

// Each row sorted (logit descending, token ascending on ties): keys and token ids in `temp`
// (SampleTempBytes bytes).
struct SortedRows {
  const float* keys = nullptr;
  const int32_t* ids = nullptr;
};
SortedRows LaunchSortRows(const float* logits, int64_t rows, int64_t V, void* temp,
                          size_t temp_bytes, cudaStream_t stream);
// The filtered draw of LaunchSampleSorted over rows sorted by LaunchSortRows.
void LaunchDrawSorted(const SortedRows& sorted, int64_t rows, int64_t V,
                      const SampleRowParams* params_dev, int32_t* tokens, cudaStream_t stream);

// Per row r: the token is drawn[r] where params[r] draws (temperature > 0, top_k != 1), else
// greedy[r]; logprob[r] = logits[r, token] - log sum exp(logits[r, :]); top_ids / top_logprobs
// [rows, max_n] get the top_n[r] <= max_n most likely from `sorted` (unused when max_n is 0).
void LaunchLogprobs(const float* logits, int64_t rows, int64_t V, const int32_t* greedy,
                    const int32_t* drawn, const SampleRowParams* params_dev,
                    const SortedRows& sorted, const int32_t* top_n, int max_n, float* logprob,
                    int32_t* top_ids, float* top_logprobs, cudaStream_t stream);

}  // namespace tpserve::cuda
