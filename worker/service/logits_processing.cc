#include "worker/service/logits_processing.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "absl/strings/str_cat.h"

namespace tpserve {
namespace {

absl::Status CheckId(int32_t id, int64_t vocab_size, const char* field) {
  if (id < 0 || id >= vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": token ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateAdjustments(const LogitsAdjustments& adj, int64_t vocab_size) {
  if (!std::isfinite(adj.repetition_penalty) || adj.repetition_penalty <= 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition_penalty must be > 0 (1 = off), got ", adj.repetition_penalty));
  }
  if (!std::isfinite(adj.presence_penalty) || !std::isfinite(adj.frequency_penalty)) {
    return absl::InvalidArgumentError("presence_penalty and frequency_penalty must be finite");
  }
  for (int32_t t : adj.penalty_tokens) {
    if (auto st = CheckId(t, vocab_size, "penalty_tokens"); !st.ok()) return st;
  }
  for (const auto& [t, bias] : adj.logit_bias) {
    if (auto st = CheckId(t, vocab_size, "logit_bias"); !st.ok()) return st;
    if (std::isnan(bias)) {
      return absl::InvalidArgumentError(absl::StrCat("logit_bias: token ", t, " has a NaN bias"));
    }
  }
  for (int32_t t : adj.suppressed_token_ids) {
    if (auto st = CheckId(t, vocab_size, "suppressed_token_ids"); !st.ok()) return st;
  }
  return absl::OkStatus();
}

void ApplyAdjustments(const LogitsAdjustments& adj, std::span<float> logits) {
  if (!adj.penalty_tokens.empty() &&
      (adj.repetition_penalty != 1.0f || adj.presence_penalty != 0.0f ||
       adj.frequency_penalty != 0.0f)) {
    std::unordered_map<int32_t, int> counts;
    for (int32_t t : adj.penalty_tokens) ++counts[t];
    for (const auto& [t, n] : counts) {
      float& l = logits[t];
      if (adj.repetition_penalty != 1.0f) {
        l = l > 0.0f ? l / adj.repetition_penalty : l * adj.repetition_penalty;
      }
      l -= adj.presence_penalty + adj.frequency_penalty * static_cast<float>(n);
    }
  }
  for (const auto& [t, bias] : adj.logit_bias) logits[t] += bias;
  for (int32_t t : adj.suppressed_token_ids) {
    logits[t] = -std::numeric_limits<float>::infinity();
  }
}

TokenLogprobs ComputeLogprobs(std::span<const float> logits, int32_t token, int top_n) {
  double max = -std::numeric_limits<double>::infinity();
  for (float l : logits) max = std::max(max, static_cast<double>(l));
  double sum = 0.0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - max);
  const double log_z = max + std::log(sum);
  TokenLogprobs out;
  out.logprob = static_cast<float>(logits[token] - log_z);
  const int64_t V = static_cast<int64_t>(logits.size());
  const int64_t n = std::clamp<int64_t>(top_n, 0, V);
  if (n > 0) {
    std::vector<int32_t> ids(V);
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
    });
    for (int64_t i = 0; i < n; ++i) {
      out.top_ids.push_back(ids[i]);
      out.top_logprobs.push_back(static_cast<float>(logits[ids[i]] - log_z));
    }
  }
  return out;
}

}  // namespace tpserve
