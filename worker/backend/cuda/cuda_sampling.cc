// On-device sampling for rank 0: arg-max for greedy rows, the CPU sampler's filtered draw
// (sampling_kernels.cu) for the others. The uniform number comes from the same counter-based
// generator as the CPU (CounterUniform(seed, step)), so a seed gives the same draw on both
// wherever the two agree on the filtered distribution to the last rounding.
#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "worker/backend/check.h"
#include "worker/backend/cuda/cuda_backend.h"
#include "worker/backend/cuda/cuda_kernels.h"
#include "worker/backend/cuda/cuda_status.h"

namespace tpserve {

absl::StatusOr<std::vector<int32_t>> CudaBackend::SampleTokens(
    const Tensor& logits, std::span<const SamplingParams> params, std::span<const uint64_t> steps) {
  Bind();
  const int64_t rows = logits.rows(), V = logits.cols();
  if (static_cast<int64_t>(params.size()) != rows || static_cast<int64_t>(steps.size()) != rows) {
    return absl::InvalidArgumentError("SampleTokens: one SamplingParams and step per logits row");
  }
  if (logits.device() != Device::kCuda) {
    return absl::InvalidArgumentError("SampleTokens: logits must be on the GPU");
  }
  std::vector<int32_t> tokens(rows, 0);
  if (rows == 0) return tokens;
  ASSIGN_OR_RETURN(std::shared_ptr<void> dev_tokens, pool_.Get(2 * rows * sizeof(int32_t)));
  int32_t* greedy = static_cast<int32_t*>(dev_tokens.get());
  int32_t* drawn = greedy + rows;
  cuda::LaunchArgmax(logits.data(), rows, V, greedy, stream_);

  std::vector<cuda::SampleRowParams> rp(rows);
  bool any_draw = false;
  for (int64_t r = 0; r < rows; ++r) {
    const SamplingParams& p = params[r];
    rp[r] = cuda::SampleRowParams{.temperature = p.temperature,
                                  .top_k = p.top_k,
                                  .top_p = p.top_p,
                                  .min_p = p.min_p,
                                  .u = CounterUniform(p.seed, steps[r])};
    any_draw |= p.temperature > 0.0f && p.top_k != 1;
  }
  std::shared_ptr<void> keep_params, temp;
  if (any_draw) {
    const cuda::SampleRowParams* dev_params =
        Upload(std::span<const cuda::SampleRowParams>(rp), &keep_params);
    const size_t temp_bytes = cuda::SampleTempBytes(rows, V);
    ASSIGN_OR_RETURN(temp, pool_.Get(temp_bytes));
    cuda::LaunchSampleSorted(logits.data(), rows, V, dev_params, temp.get(), temp_bytes, drawn,
                             stream_);
  }
  RETURN_IF_ERROR(cuda::CudaStatus(cudaGetLastError(), "sampling kernels"));
  const size_t bytes = (any_draw ? 2 : 1) * rows * sizeof(int32_t);
  RETURN_IF_ERROR(cuda::CudaStatus(download_.Reserve(2 * rows * sizeof(int32_t)),
                                   "cudaMallocHost for sampled tokens"));
  const int32_t* host = static_cast<const int32_t*>(download_.data());
  RETURN_IF_ERROR(cuda::CudaStatus(
      cudaMemcpyAsync(download_.data(), greedy, bytes, cudaMemcpyDeviceToHost, stream_),
      "copying sampled tokens"));
  RETURN_IF_ERROR(Synchronize());
  for (int64_t r = 0; r < rows; ++r) {
    const bool draw = params[r].temperature > 0.0f && params[r].top_k != 1;
    tokens[r] = draw ? host[rows + r] : host[r];
  }
  return tokens;
}

absl::StatusOr<std::vector<int32_t>> CudaBackend::SampleOnDevice(
    const Tensor& logits, std::span<const int64_t> rows, std::span<const DeviceDraw> draws) {
  if (rows.size() != draws.size()) {
    return absl::InvalidArgumentError("SampleOnDevice: one draw per row");
  }
  if (rows.empty()) return std::vector<int32_t>{};
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
  // The rows to draw from, contiguous: the logits themselves, or a gather of the listed rows
  // (the embedding lookup over the logits as a table).
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
  std::vector<SamplingParams> params(draws.size());
  std::vector<uint64_t> steps(draws.size());
  for (size_t i = 0; i < draws.size(); ++i) {
    params[i] = SamplingParams{.temperature = draws[i].temperature,
                               .top_k = draws[i].top_k,
                               .top_p = draws[i].top_p,
                               .min_p = draws[i].min_p,
                               .seed = draws[i].seed};
    steps[i] = draws[i].step;
  }
  return SampleTokens(selected, params, steps);
}

}  // namespace tpserve
