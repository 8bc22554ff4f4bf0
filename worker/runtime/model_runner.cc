#include "worker/runtime/model_runner.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"

namespace tpserve {

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(CausalLm& model, Backend& backend,
                                                                 bool is_rank0, int64_t num_blocks,
                                                                 int64_t block_size) {
  const ModelConfig& c = model.config();
  ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(backend, KvCacheConfig{
                                                               .num_layers = c.num_layers,
                                                               .num_blocks = num_blocks,
                                                               .block_size = block_size,
                                                               .kv_heads = model.local_kv_heads(),
                                                               .head_dim = c.head_dim,
                                                               .dtype = backend.kv_dtype(),
                                                           }));
  return std::unique_ptr<ModelRunner>(new ModelRunner(model, backend, is_rank0, std::move(cache)));
}

absl::Status ModelRunner::Validate(const Step& step) const {
  const ModelConfig& c = model_.config();
  const KvCacheConfig& kv = cache_.config();
  if (step.sequences.empty()) return absl::InvalidArgumentError("step has no sequences");
  for (const StepSequence& s : step.sequences) {
    const std::string who = absl::StrCat("sequence ", s.seq_id, ": ");
    if (s.tokens.empty()) return absl::InvalidArgumentError(who + "no tokens to feed");
    if (s.start_pos < 0) return absl::InvalidArgumentError(who + "negative start position");
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat(who, "token ", t, " outside the vocabulary [0, ", c.vocab_size, ")"));
      }
    }
    const int64_t end = s.start_pos + static_cast<int64_t>(s.tokens.size());
    if (c.max_position > 0 && end > c.max_position) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, end, " positions exceed the model's ", c.max_position));
    }
    if (static_cast<int64_t>(s.block_table.size()) * kv.block_size < end) {
      return absl::InvalidArgumentError(absl::StrCat(who, s.block_table.size(), " blocks of ",
                                                     kv.block_size, " cannot hold ", end,
                                                     " positions"));
    }
    for (int32_t b : s.block_table) {
      if (b < 0 || b >= kv.num_blocks) {
        return absl::InvalidArgumentError(
            absl::StrCat(who, "block ", b, " outside the pool [0, ", kv.num_blocks, ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StepResult> ModelRunner::Execute(const Step& step) {
  RETURN_IF_ERROR(Validate(step));
  std::vector<ForwardSeq> seqs;
  for (const StepSequence& s : step.sequences) {
    seqs.push_back(ForwardSeq{.tokens = s.tokens,
                              .start_pos = s.start_pos,
                              .block_table = s.block_table,
                              .all_logits = s.all_logits});
  }
  Tensor logits;
  RETURN_IF_ERROR(model_.Forward(seqs, cache_, &logits));
  StepResult result;
  if (!is_rank0_) return result;

  const int64_t V = model_.config().vocab_size;
  const bool any = std::any_of(step.sequences.begin(), step.sequences.end(),
                               [](const StepSequence& s) { return s.sample; });
  // Left where they are for a caller that samples on the device: no host copy unless something
  // here needs one.
  if (step.keep_device_logits) result.logits_device = logits;
  const bool need_host = step.return_logits || step.keep_logits || any;
  // [rows, V] in host memory: the model's own tensor where the backend's live on the host.
  Tensor host = logits;
  if (logits.device() != Device::kCpu && need_host) {
    auto values = std::make_shared<std::vector<float>>(backend_.ToHost(logits));
    host = Tensor(values, values->data(), logits.shape(), Device::kCpu);
  }
  int64_t row = 0;
  for (const StepSequence& s : step.sequences) {
    result.logits_row.push_back(row);
    row += s.all_logits ? static_cast<int64_t>(s.tokens.size()) : 1;
  }
  // Each sequence's draw reads only its own row: they run side by side on the host threads (none
  // when the caller samples itself, as the worker engine does).
  result.tokens.assign(step.sequences.size(), -1);
  if (any) {
    backend_.ForEachOnHost(static_cast<int64_t>(step.sequences.size()), [&](int64_t i) {
      const StepSequence& s = step.sequences[i];
      if (!s.sample) return;
      const int64_t rows = s.all_logits ? static_cast<int64_t>(s.tokens.size()) : 1;
      const int64_t last = result.logits_row[i] + rows - 1;
      result.tokens[i] =
          SampleToken(std::span<const float>(host.row(last), V), s.sampling, s.sample_step);
    });
  }
  result.vocab_size = V;
  if (step.return_logits) result.logits.assign(host.data(), host.data() + host.numel());
  if (step.keep_logits) result.logits_host = std::move(host);
  return result;
}

}  // namespace tpserve
