// The operations a model is written in (DESIGN.md §6). One implementation per device; the CPU
// backend (fp32 compute) is the oracle the others are tested against.
//
// Shapes: T = tokens of this step over all sequences, H = hidden size, heads/kv_heads = this
// rank's heads, hd = head dim, V = this rank's vocabulary rows. Activations are Tensors of this
// backend's device: fp32, except that a backend may keep those around the matmuls in bf16
// (activation_dtype: the normed inputs, q/k/v, the attention output, the feed-forward's
// intermediates), which its ops then take and write; the residual stream, the values that cross
// ranks and the logits stay fp32. Token ids, positions and block tables are host arrays.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/format/tensor_source.h"
#include "worker/backend/tensor.h"
#include "worker/backend/weight.h"

namespace tpserve {

// The element type of a KV cache pool.
enum class KvDType {
  kFp32,
  kFp16,  // IEEE binary16, values saturated to +-65504 when written
  // int8 with one fp32 scale per (position, KV head) and pool: max|x| / 127 over the head's
  // head_dim values, each rounded to the nearest step (llama.cpp's q8_0 KV cache does the same
  // over 32 values). Half the bytes of fp16. CPU only.
  kInt8,
};
// "fp32" / "fp16" / "int8".
const char* KvDTypeName(KvDType t);
// Bytes of one KV head's part of one block in one pool (K or V): block_size * head_dim elements,
// and for kInt8 a scale per position.
inline int64_t KvTileBytes(KvDType t, int64_t block_size, int64_t head_dim) {
  switch (t) {
    case KvDType::kFp32:
      return block_size * head_dim * 4;
    case KvDType::kFp16:
      return block_size * head_dim * 2;
    case KvDType::kInt8:
      return block_size * (head_dim + 4);
  }
  return 0;
}

// One layer of a paged KV pool: K and V each hold num_blocks * kv_heads tiles of KvTileBytes
// (block_size * head_dim elements of `dtype`, and kInt8's scales). Token position p of a sequence
// lives in block block_table[p / block_size], row p % block_size. How a block's elements are laid
// out is the backend's: only its WriteKv and Attention read or write a pool (CUDA: [block, row,
// kv_head, d] fp32; CPU: see cpu_backend.h).
struct KvLayerView {
  void* k = nullptr;
  void* v = nullptr;
  KvDType dtype = KvDType::kFp32;
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
};

// A WriteKv slot that stores nothing: the row of a step padded to a recorded shape.
inline constexpr int64_t kNoKvSlot = -1;

// Attention may keep, for each decode row (a one-token sequence) and query head, up to this many
// partial results of head_dim + 2 floats (a long context cut into chunks that run in parallel);
// StepActivationBytes counts them.
inline constexpr int64_t kMaxAttentionChunks = 16;

// One sequence's part of a step: rows [token_begin, token_begin + num_tokens) of q/k/v are its
// positions start_pos .. start_pos + num_tokens - 1; earlier positions are already in the cache.
struct AttentionSeq {
  int64_t token_begin = 0;
  int64_t num_tokens = 0;
  int64_t start_pos = 0;
  std::span<const int32_t> block_table;
};

struct AttentionParams {
  float scale = 1.0f;  // usually 1 / sqrt(hd)
  // GQA: global query head g reads global KV head g / group_size. This rank's first query head
  // and first KV head are global heads q_head_begin and kv_head_begin.
  int64_t group_size = 1;
  int64_t q_head_begin = 0;
  int64_t kv_head_begin = 0;
  // Mistral-style sliding window: a query at position p sees keys p - window + 1 .. p
  // (0 = the whole prefix).
  int64_t sliding_window = 0;
};

// An fp32 [R, C] tensor's rows as a weight (not owned): Embedding with it gathers rows of the
// tensor wherever it lives (the rows of the final hidden state that need logits).
Weight RowsAsWeight(const Tensor& x);
// The padded size of a T-row step for RunRecorded: 1, 2, 4, 8, then multiples of 8.
int64_t RecordedRows(int64_t T);

// Aborts with the shapes unless src [R, C] fits columns [col_begin, col_begin + C) of dst [R, V].
void CheckCopyColumns(const Tensor& src, int64_t col_begin, const Tensor& dst);
// The argument checks every backend's Attention makes (aborting with the problem, like the other
// shape checks): q and out [T, heads, head_dim] with the cache's head_dim; each sequence's rows
// inside [0, T) and a block table that covers all its positions.
void CheckAttentionArgs(const Tensor& q, const KvLayerView& cache,
                        std::span<const AttentionSeq> seqs, const Tensor& out);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;

  // ---- memory ----
  virtual Tensor Alloc(std::vector<int64_t> shape) = 0;  // zero-filled
  // A tensor whose every element the caller writes before reading it (a step's activations):
  // a backend may skip the clearing.
  virtual Tensor AllocUninitialized(std::vector<int64_t> shape) { return Alloc(std::move(shape)); }
  virtual Tensor FromHost(std::span<const float> values, std::vector<int64_t> shape) = 0;
  // Any dtype, widened to fp32.
  virtual std::vector<float> ToHost(const Tensor& t) = 0;
  // The dtype of the activations around the matmuls (see the top of this file): kF32, or kBF16
  // where the backend computes in bf16. Ops that take such an activation also take fp32.
  virtual DType activation_dtype() const { return DType::kF32; }
  // AllocUninitialized in activation_dtype().
  virtual Tensor AllocActivation(std::vector<int64_t> shape) {
    return AllocUninitialized(std::move(shape));
  }
  // FromHost in activation_dtype() (each value rounded to it): test inputs.
  virtual Tensor ActivationFromHost(std::span<const float> values, std::vector<int64_t> shape) {
    return FromHost(values, std::move(shape));
  }
  // A weight matrix ([out, in] window of a file tensor). Kept in its dtype where the matmul
  // kernels read it, converted to fp32 otherwise. INVALID_ARGUMENT for unusable views.
  virtual absl::StatusOr<Weight> LoadWeight(const TensorView& view) = 0;
  // A 1-D parameter (norm weight, bias) as an fp32 tensor [rows * cols].
  virtual absl::StatusOr<Tensor> LoadVector(const TensorView& view) = 0;

  // ---- dense math ----
  // y[n, out] = x[n, in] · wᵀ with w = [out, in].
  virtual void MatMul(const Tensor& x, const Weight& w, Tensor* y) = 0;
  // ys[i] = x · ws[i]ᵀ for several weights that read the same x (q/k/v, gate/up): a backend
  // may prepare x once and run the products as one job. Same results as MatMul one by one.
  virtual void MatMulShared(const Tensor& x, std::span<const Weight* const> ws,
                            std::span<Tensor* const> ys) {
    for (size_t i = 0; i < ws.size(); ++i) MatMul(x, *ws[i], ys[i]);
  }
  // y += x · wᵀ (a residual connection): the same values as MatMul into a temporary and Add,
  // which is what this default does; a backend may add in the matmul's epilogue instead.
  virtual void MatMulAdd(const Tensor& x, const Weight& w, Tensor* y) {
    Tensor t = AllocUninitialized(y->shape());
    MatMul(x, w, &t);
    Add(t, y);
  }
  // dst[r, col_begin + c] = src[r, c] for every row r and column c of src ([R, C] into [R, V]):
  // a rank's vocabulary slice of the logits. The default copies host memory.
  virtual void CopyColumns(const Tensor& src, int64_t col_begin, Tensor* dst);
  // y[r, :] += bias for every row r.
  virtual void AddBias(const Tensor& bias, Tensor* y) = 0;
  // y += x, elementwise, same shape.
  virtual void Add(const Tensor& x, Tensor* y) = 0;
  // y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight. y may alias x.
  virtual void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor* y) = 0;
  // out = silu(gate) * up, elementwise. out may alias gate.
  virtual void SiluMul(const Tensor& gate, const Tensor& up, Tensor* out) = 0;

  // ---- positions ----
  // cos_sin[t, i] = cos(positions[t] * inv_freq[i]) and cos_sin[t, hd/2 + i] = sin(...):
  // a [T, hd] table shared by every layer of a step.
  virtual void RopeTable(std::span<const int32_t> positions, std::span<const float> inv_freq,
                         Tensor* cos_sin) = 0;
  // Rotates x [T, heads, hd] in place by the table (see rope.h for the two pairings).
  virtual void Rope(const Tensor& cos_sin, bool interleaved, Tensor* x) = 0;
  // Rope of q and of k (same table): a backend may do both in one pass.
  virtual void RopeQK(const Tensor& cos_sin, bool interleaved, Tensor* q, Tensor* k) {
    Rope(cos_sin, interleaved, q);
    Rope(cos_sin, interleaved, k);
  }

  // ---- vocabulary ----
  // out[t, :] = table[tokens[t] - vocab_begin, :] when the token is in this rank's rows
  // [vocab_begin, vocab_begin + table.rows), else zeros (summed across ranks afterwards).
  virtual void Embedding(std::span<const int32_t> tokens, const Weight& table, int64_t vocab_begin,
                         Tensor* out) = 0;

  // ---- attention over the paged cache ----
  // The element type this backend's KV pools hold (KvCache allocates them in it).
  virtual KvDType kv_dtype() const { return KvDType::kFp32; }
  // Stores k/v [T, kv_heads, hd] rows at cache slots (block * block_size + offset), one per token;
  // a row whose slot is kNoKvSlot is not stored.
  virtual void WriteKv(const Tensor& k, const Tensor& v, std::span<const int64_t> slots,
                       const KvLayerView& cache) = 0;
  // Causal attention: out[t, h, :] = softmax(q[t, h] · K[0..pos(t)]ᵀ * scale) · V for each
  // sequence, reading K/V through its block table (the new tokens must already be written).
  // q, out: [T, heads, hd]. Rows of no sequence (padding) are zeros.
  virtual void Attention(const Tensor& q, const KvLayerView& cache,
                         std::span<const AttentionSeq> seqs, const AttentionParams& params,
                         Tensor* out) = 0;

  // ---- sampling on the device ----
  // Whether SampleOnDevice works: then the caller can leave the logits where they are (a 64-row
  // step's logits are 33 MB at a 128k vocabulary) and get back only tokens and log-probs.
  virtual bool samples_on_device() const { return false; }
  // One draw from a row of `logits` [R, V] on this backend's device, by the host's rules
  // (worker/service/logits_processing.h, worker/sampling/sampler.h): the row is adjusted in
  // order (penalties over distinct tokens, logit bias in list order, suppressed ids to -inf),
  // then the token is the arg-max when greedy, else the filtered inverse-CDF draw at
  // CounterUniform(seed, step); log-probs are log_softmax of the adjusted row.
  struct DeviceDraw {
    float temperature = 0.0f;
    int32_t top_k = 0;
    float top_p = 1.0f;
    float min_p = 0.0f;
    uint64_t seed = 0;
    uint64_t step = 0;
    // HF repetition penalty (1: off), OpenAI presence / frequency penalties (0: off), applied to
    // each (token, count) of `penalty_counts` (distinct tokens).
    float repetition_penalty = 1.0f;
    float presence_penalty = 0.0f;
    float frequency_penalty = 0.0f;
    std::vector<std::pair<int32_t, int32_t>> penalty_counts;
    std::vector<std::pair<int32_t, float>> logit_bias;
    std::vector<int32_t> suppressed;
    // -1: no log-probs; n >= 0: the token's log-prob and the n most likely (ties: lower id).
    int top_logprobs = -1;
  };
  struct DeviceDrawn {
    int32_t token = 0;
    float logprob = 0.0f;  // when asked
    std::vector<int32_t> top_ids;
    std::vector<float> top_logprobs;
  };
  // Draws for rows `rows` of `logits` (which it may modify). Token ids in the draws must be in
  // [0, V): INVALID_ARGUMENT otherwise, as for a row outside [0, R).
  virtual absl::StatusOr<std::vector<DeviceDrawn>> SampleOnDevice(
      const Tensor& logits, std::span<const int64_t> rows, std::span<const DeviceDraw> draws) {
    (void)logits;
    (void)rows;
    (void)draws;
    return absl::UnimplementedError(name() + " samples on the host");
  }

  // ---- recorded steps ----
  // The most token rows of a step RunRecorded records (0: this backend never records). Callers
  // pad a step to RecordedRows(T) rows so that few distinct shapes occur.
  virtual int64_t max_recorded_rows() const { return 0; }
  // Runs `step`, a function that issues this backend's ops for one forward pass. A backend may
  // record what the step issues the first time `key` comes and replay the recording at later
  // steps of that key (CUDA graphs, cuda/step_recorder.h): `step` then runs again on the host,
  // its ops checked against the recording instead of issuing device work, and the recording
  // runs as one launch; a step whose ops differ from the recording is recorded again. Results
  // are the same either way. So `step` may run more than once (its effects must be only through
  // this backend's ops and its outputs), must not read device memory on the host, and the caller
  // must be done with its output tensors before the next step of the same key (they may live
  // in the recording's memory).
  // `with_peers`: the step's collectives pair with other ranks' recorded steps (NCCL), which
  // record and replay the same steps (their inputs are the same), so a rank must not fall back
  // to running the step op by op on its own: a recording that fails there (out of memory, a
  // device error) fails the step instead.
  virtual absl::Status RunRecorded(const std::string& key, bool with_peers,
                                   const std::function<absl::Status()>& step) {
    (void)key;
    (void)with_peers;
    return step();
  }

  // Forgets the recordings whose keys start with `key_prefix` (a model going away), and the
  // device memory they hold.
  virtual void DropRecorded(const std::string& key_prefix) { (void)key_prefix; }

  // ---- host work ----
  // Calls fn(i) for every i in [0, n), on host threads this backend owns where it has idle ones
  // (the CPU backend's pool), else in order on the caller. The calls must be independent: per-row
  // host work between device ops (sampling, log-probs).
  virtual void ForEachOnHost(int64_t n, const std::function<void(int64_t)>& fn) {
    for (int64_t i = 0; i < n; ++i) fn(i);
  }
};

}  // namespace tpserve
