// A stand-in for the engine loop and the workers, for scheduler tests.
//
// The fake workers keep a paged KV store exactly as the real ones do: each scheduled token is
// written to slot block_table[p / block_size] * block_size + p % block_size. The fake model then
// reads the context of a sampled sequence back *through its block table* and picks the next token
// as a hash of that context. So a wrong block table, a wrong prefix-cache hit, a block overwritten
// while shared, or a lost or duplicated output token all change later tokens, and comparing with
// ReferenceGenerate (which never pages) catches them.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "coordinator/scheduler/scheduler.h"
#include "gtest/gtest.h"

namespace tpserve::scheduler::testing {

inline constexpr TokenId kVocab = 997;

// The fake model: next token from the whole context (and which of n samples it is).
inline TokenId NextToken(std::span<const TokenId> context, int sample_index = 0) {
  uint64_t h = 1469598103934665603ull;
  for (TokenId t : context) h = (h ^ static_cast<uint32_t>(t)) * 1099511628211ull;
  h ^= h >> 29;
  return static_cast<TokenId>((h + static_cast<uint64_t>(sample_index) * 7919) % kVocab);
}

struct ReferenceOutput {
  std::vector<TokenId> tokens;
  FinishReason reason = FinishReason::kNone;
};

// Unpaged generation with the fake model; stop rules written out independently of Sequence.
inline ReferenceOutput ReferenceGenerate(std::vector<TokenId> context, const StopConditions& stop,
                                         int max_seq_len, const std::vector<TokenId>& eos,
                                         int first_sample_index = 0) {
  ReferenceOutput out;
  while (true) {
    const TokenId t = NextToken(context, out.tokens.empty() ? first_sample_index : 0);
    context.push_back(t);
    out.tokens.push_back(t);
    const int n = static_cast<int>(out.tokens.size());
    const auto has = [t](const std::vector<TokenId>& v) {
      for (TokenId x : v) {
        if (x == t) return true;
      }
      return false;
    };
    if (n >= stop.min_tokens && has(stop.stop_token_ids)) {
      out.reason = FinishReason::kStopToken;
    } else if (n >= stop.min_tokens && !stop.ignore_eos && has(eos)) {
      out.reason = FinishReason::kEos;
    } else if (n >= stop.max_tokens) {
      out.reason = FinishReason::kLength;
    } else if (static_cast<int>(context.size()) >= max_seq_len) {
      out.reason = FinishReason::kContextLength;
    }
    if (out.reason != FinishReason::kNone) return out;
  }
}

class FakeEngine {
 public:
  explicit FakeEngine(Scheduler& scheduler)
      : scheduler_(scheduler),
        block_size_(scheduler.config().block_size),
        kv_(static_cast<size_t>(scheduler.config().num_blocks) * block_size_, -1) {}

  // Forks requested for a sequence at its first sample: child ids and their sample index.
  void RequestForks(SeqId parent, std::vector<SeqId> children) {
    forks_[parent] = std::move(children);
  }
  // Marks a sequence aborted by the client, between Schedule and Update of the next Step.
  void AbortAfterSchedule(SeqId id) { abort_after_schedule_.insert(id); }

  // One engine iteration: Schedule, write KV and sample through block tables, Update.
  SchedulerOutput Step() {
    auto out_or = scheduler_.Schedule();
    EXPECT_TRUE(out_or.ok()) << out_or.status();
    SchedulerOutput out = std::move(out_or).value();
    for (const FinishedSequence& f : out.finished) finished_[f.seq_id] = f.reason;
    StepResult result;
    std::vector<std::pair<SeqId, TokenId>> sampled;
    for (const ScheduledSequence& s : out.scheduled) {
      const int end = s.start_position + static_cast<int>(s.tokens.size());
      EXPECT_GE(static_cast<int>(s.block_table.size()) * block_size_, end)
          << "sequence " << s.seq_id << " lacks blocks for its tokens";
      for (size_t i = 0; i < s.tokens.size(); ++i) {
        kv_[Slot(s.block_table, s.start_position + static_cast<int>(i))] = s.tokens[i];
      }
      if (!s.sample) continue;
      // Read the whole context back through the block table, as attention would.
      std::vector<TokenId> context(end);
      for (int p = 0; p < end; ++p) context[p] = kv_[Slot(s.block_table, p)];
      sampled.push_back({s.seq_id, NextToken(context)});
      auto fork = forks_.find(s.seq_id);
      if (fork != forks_.end() && s.num_output_tokens == 0) {
        int k = 1;
        for (SeqId child : fork->second) {
          EXPECT_TRUE(scheduler_.Fork(s.seq_id, child).ok());
          sampled.push_back({child, NextToken(context, k++)});
        }
        forks_.erase(fork);
      }
    }
    for (SeqId id : abort_after_schedule_) {
      EXPECT_TRUE(scheduler_.Abort(id).ok());
      aborted_.insert(id);
    }
    abort_after_schedule_.clear();
    for (const auto& [id, token] : sampled) {
      result.tokens.push_back({id, token});
      if (!aborted_.contains(id)) outputs_[id].push_back(token);
    }
    auto update = scheduler_.Update(result);
    EXPECT_TRUE(update.ok()) << update.status();
    if (update.ok()) {
      for (const FinishedSequence& f : update->finished) finished_[f.seq_id] = f.reason;
    }
    EXPECT_TRUE(scheduler_.CheckInvariants().ok()) << scheduler_.CheckInvariants();
    return out;
  }

  void Abort(SeqId id) {
    EXPECT_TRUE(scheduler_.Abort(id).ok());
    aborted_.insert(id);
  }

  // Tokens streamed to each sequence's client, and how each one ended.
  const std::vector<TokenId>& output(SeqId id) { return outputs_[id]; }
  const std::map<SeqId, FinishReason>& finished() const { return finished_; }

 private:
  size_t Slot(const std::vector<BlockId>& table, int position) const {
    return static_cast<size_t>(table[position / block_size_]) * block_size_ +
           position % block_size_;
  }

  Scheduler& scheduler_;
  int block_size_;
  std::vector<TokenId> kv_;  // (num_blocks * block_size) token ids standing in for K and V
  absl::flat_hash_map<SeqId, std::vector<SeqId>> forks_;
  absl::flat_hash_set<SeqId> abort_after_schedule_;
  absl::flat_hash_set<SeqId> aborted_;
  absl::flat_hash_map<SeqId, std::vector<TokenId>> outputs_;
  std::map<SeqId, FinishReason> finished_;
};

// A prompt of `n` distinct-looking tokens starting from `seed`.
inline std::vector<TokenId> MakePrompt(int n, int seed) {
  std::vector<TokenId> p(n);
  for (int i = 0; i < n; ++i) p[i] = static_cast<TokenId>((seed * 131 + i * 17) % kVocab);
  return p;
}

}  // namespace tpserve::scheduler::testing
