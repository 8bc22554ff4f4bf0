// On-device sampling: arg-max, and the CPU sampler's filtered inverse-CDF draw (sort, softmax in
// double over the top-k survivors, nucleus, min-p, renormalise, first cumulative mass above u).
#include <cmath>
#include <cub/cub.cuh>
#include <cuda/functional>

#include "worker/backend/cuda/cuda_kernels.h"
#include "worker/backend/cuda/cuda_launch.h"

namespace tpserve::cuda {
namespace {

constexpr int kThreads = 256;

size_t AlignUp(size_t n) { return (n + 255) / 256 * 256; }

// Lowest index wins ties, like std::max_element.
__device__ __forceinline__ void Better(float& v, int32_t& i, float ov, int32_t oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

__global__ void ArgmaxKernel(const float* logits, int64_t V, int32_t* tokens) {
  const float* row = logits + blockIdx.x * V;
  float best = -INFINITY;
  int32_t idx = 0x7fffffff;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) Better(best, idx, row[i], int32_t(i));
  for (int off = 16; off > 0; off >>= 1) {
    Better(best, idx, __shfl_xor_sync(0xffffffffu, best, off),
           __shfl_xor_sync(0xffffffffu, idx, off));
  }
  __shared__ float sv[kThreads / 32];
  __shared__ int32_t si[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = idx;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) Better(best, idx, sv[w], si[w]);
    tokens[blockIdx.x] = idx == 0x7fffffff ? 0 : idx;
  }
}

__global__ void IotaKernel(int32_t* ids, int64_t rows, int64_t V, int32_t* offsets) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows * V;
       i += int64_t{gridDim.x} * blockDim.x) {
    ids[i] = static_cast<int32_t>(i % V);
  }
  if (blockIdx.x == 0) {
    for (int64_t r = threadIdx.x; r <= rows; r += blockDim.x)
      offsets[r] = static_cast<int32_t>(r * V);
  }
}

using BlockReduceD = cub::BlockReduce<double, kThreads>;
using BlockScanD = cub::BlockScan<double, kThreads>;
using BlockReduceI = cub::BlockReduce<int, kThreads>;

// One block per row of sorted logits `keys` and their token ids.
__global__ void DrawSortedKernel(const float* keys, const int32_t* ids, int64_t V,
                                 const SampleRowParams* params, int32_t* tokens) {
  __shared__ union {
    typename BlockReduceD::TempStorage reduce;
    typename BlockScanD::TempStorage scan;
    typename BlockReduceI::TempStorage reduce_i;
  } tmp;
  __shared__ double shared_d;
  __shared__ int shared_i;
  const SampleRowParams p = params[blockIdx.x];
  const float* l = keys + blockIdx.x * V;
  const int32_t* id = ids + blockIdx.x * V;
  const int64_t n = (p.top_k > 0 && p.top_k < V) ? p.top_k : V;
  const double temp = p.temperature > 0.0f ? p.temperature : 1.0;
  const double max_logit = l[0];
  auto prob = [&](int64_t i) { return i < n ? exp((double(l[i]) - max_logit) / temp) : 0.0; };

  double part = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) part += prob(i);
  double total = BlockReduceD(tmp.reduce).Sum(part);
  if (threadIdx.x == 0) shared_d = total;
  __syncthreads();
  total = shared_d;

  // Nucleus: shortest prefix whose normalised mass reaches top_p.
  int64_t keep = n;
  if (p.top_p < 1.0f) {
    double running = 0.0;
    for (int64_t c0 = 0; c0 < n; c0 += blockDim.x) {
      const int64_t i = c0 + threadIdx.x;
      double incl, chunk;
      __syncthreads();
      BlockScanD(tmp.scan).InclusiveSum(prob(i) / total, incl, chunk);
      __syncthreads();
      const int hit = (i < n && running + incl >= p.top_p) ? static_cast<int>(i - c0) : kThreads;
      const int first = BlockReduceI(tmp.reduce_i).Reduce(hit, ::cuda::minimum<>());
      if (threadIdx.x == 0) shared_i = first;
      __syncthreads();
      if (shared_i < kThreads) {
        keep = c0 + shared_i + 1;
        break;
      }
      running += chunk;
    }
  }
  // min-p: probabilities are non-increasing, so the kept prefix is those >= min_p * p[0] (= min_p).
  if (p.min_p > 0.0f) {
    int count = 0;
    for (int64_t i = threadIdx.x; i < keep; i += blockDim.x) count += (prob(i) >= p.min_p) ? 1 : 0;
    __syncthreads();
    count = BlockReduceI(tmp.reduce_i).Sum(count);
    if (threadIdx.x == 0) shared_i = count < 1 ? 1 : count;
    __syncthreads();
    keep = shared_i;
  }
  part = 0.0;
  for (int64_t i = threadIdx.x; i < keep; i += blockDim.x) part += prob(i);
  __syncthreads();
  double kept = BlockReduceD(tmp.reduce).Sum(part);
  if (threadIdx.x == 0) shared_d = kept;
  __syncthreads();
  kept = shared_d;

  // Inverse CDF: the first token whose cumulative (float-rounded, like the CPU) mass exceeds u.
  double running = 0.0;
  for (int64_t c0 = 0; c0 < keep; c0 += blockDim.x) {
    const int64_t i = c0 + threadIdx.x;
    const double pi = i < keep ? double(static_cast<float>(prob(i) / kept)) : 0.0;
    double incl, chunk;
    __syncthreads();
    BlockScanD(tmp.scan).InclusiveSum(pi, incl, chunk);
    __syncthreads();
    const int hit = (i < keep && p.u < running + incl) ? static_cast<int>(i - c0) : kThreads;
    const int first = BlockReduceI(tmp.reduce_i).Reduce(hit, ::cuda::minimum<>());
    if (threadIdx.x == 0) shared_i = first;
    __syncthreads();
    if (shared_i < kThreads) {
      if (threadIdx.x == 0) tokens[blockIdx.x] = id[c0 + shared_i];
      return;
    }
    running += chunk;
  }
  if (threadIdx.x == 0) tokens[blockIdx.x] = id[keep - 1];  // u within rounding of 1
}

// One block per row. Penalty tokens are distinct (threads in parallel); biases in list order
// (one thread: a token may be biased twice); suppressions last.
__global__ void AdjustKernel(float* logits, int64_t V, const RowAdjust* adjust,
                             const int32_t* penalty_tokens, const int32_t* penalty_counts,
                             const int32_t* bias_tokens, const float* bias_values,
                             const int32_t* suppressed) {
  const RowAdjust a = adjust[blockIdx.x];
  float* row = logits + blockIdx.x * V;
  for (int32_t i = a.penalty_begin + threadIdx.x; i < a.penalty_end; i += blockDim.x) {
    float l = row[penalty_tokens[i]];
    if (a.repetition != 1.0f)
      l = l > 0.0f ? __fdiv_rn(l, a.repetition) : __fmul_rn(l, a.repetition);
    l = __fsub_rn(l, __fadd_rn(a.presence, __fmul_rn(a.frequency, float(penalty_counts[i]))));
    row[penalty_tokens[i]] = l;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int32_t i = a.bias_begin; i < a.bias_end; ++i) {
      row[bias_tokens[i]] = __fadd_rn(row[bias_tokens[i]], bias_values[i]);
    }
  }
  __syncthreads();
  for (int32_t i = a.suppress_begin + threadIdx.x; i < a.suppress_end; i += blockDim.x) {
    row[suppressed[i]] = -INFINITY;
  }
}

using BlockReduceF = cub::BlockReduce<float, kThreads>;

// One block per row: log Z = max + log(sum exp(l - max)) in double, then the token's log-prob
// and the top n from the sorted row.
__global__ void LogprobsKernel(const float* logits, int64_t V, const int32_t* greedy,
                               const int32_t* drawn, const SampleRowParams* params,
                               const float* sorted_keys, const int32_t* sorted_ids,
                               const int32_t* top_n, int max_n, float* logprob, int32_t* top_ids,
                               float* top_logprobs) {
  __shared__ union {
    typename BlockReduceF::TempStorage reduce_f;
    typename BlockReduceD::TempStorage reduce_d;
  } tmp;
  __shared__ float shared_max;
  __shared__ double shared_sum;
  const int64_t r = blockIdx.x;
  const float* row = logits + r * V;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, row[i]);  // NaN never wins
  m = BlockReduceF(tmp.reduce_f).Reduce(m, ::cuda::maximum<>());
  if (threadIdx.x == 0) shared_max = m;
  __syncthreads();
  m = shared_max;
  double part = 0.0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    if (row[i] != -INFINITY) part += exp(double(row[i]) - double(m));
  }
  const double sum = BlockReduceD(tmp.reduce_d).Sum(part);
  if (threadIdx.x == 0) shared_sum = sum;
  __syncthreads();
  const double log_z = double(m) + log(shared_sum);
  const SampleRowParams p = params[r];
  const bool draw = p.temperature > 0.0f && p.top_k != 1;
  if (threadIdx.x == 0) {
    const int32_t token = draw ? drawn[r] : greedy[r];
    logprob[r] = static_cast<float>(double(row[token]) - log_z);
  }
  if (max_n > 0) {
    for (int j = threadIdx.x; j < max_n; j += blockDim.x) {
      const bool kept = j < top_n[r] && j < V;
      top_ids[r * max_n + j] = kept ? sorted_ids[r * V + j] : -1;
      top_logprobs[r * max_n + j] =
          kept ? static_cast<float>(double(sorted_keys[r * V + j]) - log_z) : 0.0f;
    }
  }
}

struct TempLayout {
  size_t keys_out, ids_in, ids_out, offsets, cub, total;
};

TempLayout Layout(int64_t rows, int64_t V) {
  size_t cub_bytes = 0;
  cub::DeviceSegmentedRadixSort::SortPairsDescending<float, int32_t>(
      nullptr, cub_bytes, nullptr, nullptr, nullptr, nullptr, rows * V, static_cast<int>(rows),
      static_cast<const int32_t*>(nullptr), static_cast<const int32_t*>(nullptr));
  TempLayout t{};
  const size_t n = static_cast<size_t>(rows * V);
  t.keys_out = 0;
  t.ids_in = t.keys_out + AlignUp(n * sizeof(float));
  t.ids_out = t.ids_in + AlignUp(n * sizeof(int32_t));
  t.offsets = t.ids_out + AlignUp(n * sizeof(int32_t));
  t.cub = t.offsets + AlignUp((rows + 1) * sizeof(int32_t));
  t.total = t.cub + AlignUp(cub_bytes);
  return t;
}

}  // namespace

void LaunchArgmax(const float* logits, int64_t rows, int64_t V, int32_t* tokens,
                  cudaStream_t stream) {
  if (rows == 0) return;
  TPSERVE_LAUNCH(ArgmaxKernel, (static_cast<unsigned>(rows), kThreads, 0, stream), logits, V,
                 tokens);
}

size_t SampleTempBytes(int64_t rows, int64_t V) { return Layout(rows, V).total; }

SortedRows LaunchSortRows(const float* logits, int64_t rows, int64_t V, void* temp,
                          size_t temp_bytes, cudaStream_t stream) {
  const TempLayout t = Layout(rows, V);
  char* base = static_cast<char*>(temp);
  auto* keys_out = reinterpret_cast<float*>(base + t.keys_out);
  auto* ids_in = reinterpret_cast<int32_t*>(base + t.ids_in);
  auto* ids_out = reinterpret_cast<int32_t*>(base + t.ids_out);
  auto* offsets = reinterpret_cast<int32_t*>(base + t.offsets);
  if (rows == 0) return SortedRows{keys_out, ids_out};
  int64_t blocks = (rows * V + kThreads - 1) / kThreads;
  if (blocks > 65535) blocks = 65535;
  TPSERVE_LAUNCH(IotaKernel, (static_cast<unsigned>(blocks), kThreads, 0, stream), ids_in, rows, V,
                 offsets);
  size_t cub_bytes = temp_bytes - t.cub;
  // Radix sort is stable: equal logits keep ascending token ids, the CPU's tie order.
  cub::DeviceSegmentedRadixSort::SortPairsDescending(
      base + t.cub, cub_bytes, logits, keys_out, ids_in, ids_out, rows * V, static_cast<int>(rows),
      offsets, offsets + 1, 0, 32, stream);
  return SortedRows{keys_out, ids_out};
}

void LaunchDrawSorted(const SortedRows& sorted, int64_t rows, int64_t V,
                      const SampleRowParams* params_dev, int32_t* tokens, cudaStream_t stream) {
  if (rows == 0) return;
  TPSERVE_LAUNCH(DrawSortedKernel, (static_cast<unsigned>(rows), kThreads, 0, stream), sorted.keys,
                 sorted.ids, V, params_dev, tokens);
}

void LaunchSampleSorted(const float* logits, int64_t rows, int64_t V,
                        const SampleRowParams* params_dev, void* temp, size_t temp_bytes,
                        int32_t* tokens, cudaStream_t stream) {
  if (rows == 0) return;
  LaunchDrawSorted(LaunchSortRows(logits, rows, V, temp, temp_bytes, stream), rows, V, params_dev,
                   tokens, stream);
}

void LaunchAdjustLogits(float* logits, int64_t rows, int64_t V, const RowAdjust* adjust,
                        const int32_t* penalty_tokens, const int32_t* penalty_counts,
                        const int32_t* bias_tokens, const float* bias_values,
                        const int32_t* suppressed, cudaStream_t stream) {
  if (rows == 0) return;
  TPSERVE_LAUNCH(AdjustKernel, (static_cast<unsigned>(rows), kThreads, 0, stream), logits, V,
                 adjust, penalty_tokens, penalty_counts, bias_tokens, bias_values, suppressed);
}

void LaunchLogprobs(const float* logits, int64_t rows, int64_t V, const int32_t* greedy,
                    const int32_t* drawn, const SampleRowParams* params_dev,
                    const SortedRows& sorted, const int32_t* top_n, int max_n, float* logprob,
                    int32_t* top_ids, float* top_logprobs, cudaStream_t stream) {
  if (rows == 0) return;
  TPSERVE_LAUNCH(LogprobsKernel, (static_cast<unsigned>(rows), kThreads, 0, stream), logits, V,
                 greedy, drawn, params_dev, sorted.keys, sorted.ids, top_n, max_n, logprob, top_ids,
                 top_logprobs);
}

}  // namespace tpserve::cuda
