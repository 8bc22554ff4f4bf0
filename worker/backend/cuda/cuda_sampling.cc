// On-device sampling for rank 0: the host's logits adjustments (penalties, bias, suppressed
// ids), arg-max for greedy rows, the CPU sampler's filtered draw (sampling_kernels.cu) for the
// others, and log-probs with the top alternatives; only those come back to the host. The uniform
// number comes from the same counter-based generator as the CPU (CounterUniform(seed, step)), so
// a seed gives the same draw on both wherever the two agree on the filtered distribution to the
// last rounding.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "worker/backend/check.h"
#include "worker/backend/cuda/cuda_backend.h"
#include "worker/backend/cuda/cuda_kernels.h"
#include "worker/backend/cuda/cuda_status.h"

namespace tpserve {

namespace {

using cuda::Pack;

bool HasPenalties(const Backend::DeviceDraw& d) {
  return d.repetition_penalty != 1.0f || d.presence_penalty != 0.0f || d.frequency_penalty != 0.0f;
}

bool Adjusts(const Backend::DeviceDraw& d) {
  return (HasPenalties(d) && !d.penalty_counts.empty()) || !d.logit_bias.empty() ||
         !d.suppressed.empty();
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> CudaBackend::SampleTokens(
    const Tensor& logits, std::span<const SamplingParams> params, std::span<const uint64_t> steps) {
  const int64_t rows = logits.rows();
  if (static_cast<int64_t>(params.size()) != rows || static_cast<int64_t>(steps.size()) != rows) {
    return absl::InvalidArgumentError("SampleTokens: one SamplingParams and step per logits row");
  }
  std::vector<DeviceDraw> draws(rows);
  for (int64_t r = 0; r < rows; ++r) {
    draws[r] = DeviceDraw{.temperature = params[r].temperature,
                          .top_k = params[r].top_k,
                          .top_p = params[r].top_p,
                          .min_p = params[r].min_p,
                          .seed = params[r].seed,
                          .step = steps[r]};
  }
  ASSIGN_OR_RETURN(std::vector<DeviceDrawn> drawn, DrawRows(logits, draws));
  std::vector<int32_t> tokens(rows);
  for (int64_t r = 0; r < rows; ++r) tokens[r] = drawn[r].token;
  return tokens;
}

absl::StatusOr<std::vector<Backend::DeviceDrawn>> CudaBackend::DrawRows(
    const Tensor& logits, std::span<const DeviceDraw> draws) {
  Bind();
  const int64_t rows = logits.rows(), V = logits.cols();
  if (logits.device() != Device::kCuda) {
    return absl::InvalidArgumentError("sampling: logits must be on the GPU");
  }
  std::vector<DeviceDrawn> out(rows);
  if (rows == 0) return out;

  // The host's adjustments, flattened: one upload for all rows.
  bool any_adjust = false, any_draw = false, any_logprobs = false;
  int max_n = 0;
  for (const DeviceDraw& d : draws) {
    any_adjust |= Adjusts(d);
    any_draw |= d.temperature > 0.0f && d.top_k != 1;
    any_logprobs |= d.top_logprobs >= 0;
    max_n = std::max(max_n, d.top_logprobs);
  }
  max_n = static_cast<int>(std::min<int64_t>(max_n, V));
  const bool sort = any_draw || max_n > 0;

  std::vector<cuda::SampleRowParams> rp(rows);
  std::vector<int32_t> top_n(rows, 0);
  for (int64_t r = 0; r < rows; ++r) {
    const DeviceDraw& d = draws[r];
    rp[r] = cuda::SampleRowParams{.temperature = d.temperature,
                                  .top_k = d.top_k,
                                  .top_p = d.top_p,
                                  .min_p = d.min_p,
                                  .u = CounterUniform(d.seed, d.step)};
    top_n[r] = std::max(0, d.top_logprobs);
  }
  std::vector<uint8_t> meta;
  const size_t off_params = Pack(&meta, rp), off_top_n = Pack(&meta, top_n);
  size_t off_adjust = 0, off_pt = 0, off_pc = 0, off_bt = 0, off_bv = 0, off_sup = 0;
  if (any_adjust) {
    std::vector<cuda::RowAdjust> adjust(rows);
    std::vector<int32_t> pt, pc, bt, sup;
    std::vector<float> bv;
    for (int64_t r = 0; r < rows; ++r) {
      const DeviceDraw& d = draws[r];
      cuda::RowAdjust& a = adjust[r];
      a.repetition = d.repetition_penalty;
      a.presence = d.presence_penalty;
      a.frequency = d.frequency_penalty;
      for (const auto& [t, n] : d.penalty_counts) {
        if (t < 0 || t >= V) return absl::InvalidArgumentError(absl::StrCat("penalty token ", t));
      }
      for (const auto& [t, b] : d.logit_bias) {
        if (t < 0 || t >= V)
          return absl::InvalidArgumentError(absl::StrCat("logit_bias token ", t));
      }
      for (int32_t t : d.suppressed) {
        if (t < 0 || t >= V)
          return absl::InvalidArgumentError(absl::StrCat("suppressed token ", t));
      }
      a.penalty_begin = static_cast<int32_t>(pt.size());
      if (HasPenalties(d)) {
        for (const auto& [t, n] : d.penalty_counts) {
          pt.push_back(t);
          pc.push_back(n);
        }
      }
      a.penalty_end = static_cast<int32_t>(pt.size());
      a.bias_begin = static_cast<int32_t>(bt.size());
      for (const auto& [t, b] : d.logit_bias) {
        bt.push_back(t);
        bv.push_back(b);
      }
      a.bias_end = static_cast<int32_t>(bt.size());
      a.suppress_begin = static_cast<int32_t>(sup.size());
      sup.insert(sup.end(), d.suppressed.begin(), d.suppressed.end());
      a.suppress_end = static_cast<int32_t>(sup.size());
    }
    off_adjust = Pack(&meta, adjust);
    off_pt = Pack(&meta, pt);
    off_pc = Pack(&meta, pc);
    off_bt = Pack(&meta, bt);
    off_bv = Pack(&meta, bv);
    off_sup = Pack(&meta, sup);
  }
  std::shared_ptr<void> keep_meta;
  const uint8_t* dev = Upload(std::span<const uint8_t>(meta), &keep_meta);
  const auto* dev_params = reinterpret_cast<const cuda::SampleRowParams*>(dev + off_params);

  float* row0 = logits.data();
  if (any_adjust) {
    cuda::LaunchAdjustLogits(row0, rows, V,
                             reinterpret_cast<const cuda::RowAdjust*>(dev + off_adjust),
                             reinterpret_cast<const int32_t*>(dev + off_pt),
                             reinterpret_cast<const int32_t*>(dev + off_pc),
                             reinterpret_cast<const int32_t*>(dev + off_bt),
                             reinterpret_cast<const float*>(dev + off_bv),
                             reinterpret_cast<const int32_t*>(dev + off_sup), stream_);
  }
  // Device results, one buffer: greedy [rows], drawn [rows], logprob [rows], top ids and top
  // log-probs [rows, max_n].
  const size_t n_out = static_cast<size_t>(rows) * (3 + 2 * max_n);
  ASSIGN_OR_RETURN(std::shared_ptr<void> dev_out, pool_.Get(n_out * sizeof(int32_t)));
  int32_t* greedy = static_cast<int32_t*>(dev_out.get());
  int32_t* drawn = greedy + rows;
  float* logprob = reinterpret_cast<float*>(drawn + rows);
  int32_t* top_ids = reinterpret_cast<int32_t*>(logprob + rows);
  float* top_lp = reinterpret_cast<float*>(top_ids + rows * max_n);
  cuda::LaunchArgmax(row0, rows, V, greedy, stream_);
  std::shared_ptr<void> temp;
  cuda::SortedRows sorted;
  if (sort) {
    const size_t temp_bytes = cuda::SampleTempBytes(rows, V);
    ASSIGN_OR_RETURN(temp, pool_.Get(temp_bytes));
    sorted = cuda::LaunchSortRows(row0, rows, V, temp.get(), temp_bytes, stream_);
    if (any_draw) cuda::LaunchDrawSorted(sorted, rows, V, dev_params, drawn, stream_);
  }
  if (!any_draw) {  // the log-probs kernel reads `drawn` for drawing rows only: there are none
    RETURN_IF_ERROR(cuda::CudaStatus(cudaMemsetAsync(drawn, 0, rows * sizeof(int32_t), stream_),
                                     "cudaMemsetAsync"));
  }
  if (any_logprobs) {
    cuda::LaunchLogprobs(row0, rows, V, greedy, drawn, dev_params, sorted,
                         reinterpret_cast<const int32_t*>(dev + off_top_n), max_n, logprob, top_ids,
                         top_lp, stream_);
  }
  RETURN_IF_ERROR(cuda::CudaStatus(cudaGetLastError(), "sampling kernels"));
  const size_t bytes = (any_logprobs ? n_out : 2 * static_cast<size_t>(rows)) * sizeof(int32_t);
  RETURN_IF_ERROR(cuda::CudaStatus(download_.Reserve(bytes), "cudaMallocHost for sampled tokens"));
  RETURN_IF_ERROR(cuda::CudaStatus(
      cudaMemcpyAsync(download_.data(), greedy, bytes, cudaMemcpyDeviceToHost, stream_),
      "copying sampled tokens"));
  RETURN_IF_ERROR(Synchronize());
  const auto* h = static_cast<const int32_t*>(download_.data());
  const auto* h_lp = reinterpret_cast<const float*>(h + 2 * rows);
  const int32_t* h_ids = h + 3 * rows;
  const auto* h_top = reinterpret_cast<const float*>(h_ids + rows * max_n);
  for (int64_t r = 0; r < rows; ++r) {
    const DeviceDraw& d = draws[r];
    const bool draw = d.temperature > 0.0f && d.top_k != 1;
    out[r].token = draw ? h[rows + r] : h[r];
    if (d.top_logprobs >= 0) {
      out[r].logprob = h_lp[r];
      for (int j = 0; j < std::min(top_n[r], max_n); ++j) {
        out[r].top_ids.push_back(h_ids[r * max_n + j]);
        out[r].top_logprobs.push_back(h_top[r * max_n + j]);
      }
    }
  }
  return out;
}

absl::StatusOr<std::vector<Backend::DeviceDrawn>> CudaBackend::SampleOnDevice(
    const Tensor& logits, std::span<const int64_t> rows, std::span<const DeviceDraw> draws) {
  if (rows.size() != draws.size()) {
    return absl::InvalidArgumentError("SampleOnDevice: one draw per row");
  }
  if (rows.empty()) return std::vector<DeviceDrawn>{};
  const int64_t R = logits.rows(), V = logits.cols();
  bool identity = static_cast<int64_t>(rows.size()) == R;
  std::vector<int32_t> picked(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] < 0 || rows[i] >= R) {
      return absl::InvalidArgumentError(
          absl::StrCat("SampleOnDevice: row ", rows[i], " of a [", R, ", ", V, "] logits tensor"));
    }
    picked[i] = static_cast<int32_t>(rows[i]);
    identity &= rows[i] == static_cast<int64_t>(i);
  }
  // The rows to draw from, contiguous: the logits themselves (adjusted in place), or a gather of
  // the listed rows (the embedding lookup over the logits as a table).
  Tensor selected = logits;
  if (!identity) {
    selected = AllocUninitialized({static_cast<int64_t>(rows.size()), V});
    const Weight table{.dtype = DType::kF32,
                       .rows = R,
                       .cols = V,
                       .data = reinterpret_cast<const uint8_t*>(logits.data()),
                       .row_stride_bytes = static_cast<size_t>(V) * sizeof(float),
                       .owned = nullptr,
                       .int8 = nullptr};
    Embedding(picked, table, 0, &selected);
  }
  return DrawRows(selected, draws);
}

}  // namespace tpserve
