// Property-style test: random arrivals, prompt lengths (many sharing prefixes), n > 1 forks,
// aborts and tiny KV pools, over many seeds. After every step the block manager and scheduler
// invariants hold (FakeEngine checks them: no block owned twice unless shared by ref count,
// free + used == total, every running sequence holds blocks for its tokens, written blocks are
// not shared). At the end every sequence's output equals unpaged reference generation, however
// often it was preempted, and every block is free.
#include <cstdio>
#include <random>

#include "gtest/gtest.h"
#include "tests/coordinator/scheduler/fake_engine.h"

namespace tpserve::scheduler {
namespace {

using testing::FakeEngine;
using testing::ReferenceGenerate;

struct Request {
  SequenceSpec spec;
  std::vector<SeqId> children;
};

struct Totals {
  int64_t preemptions = 0;
  int64_t prefix_hit_tokens = 0;
  int64_t evictions = 0;
  int64_t forked_sequences = 0;
};

void RunRandom(uint32_t seed, Totals& totals) {
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  auto uniform = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };

  SchedulerConfig c;
  c.block_size = uniform(0, 1) ? 4 : 3;
  c.num_blocks = uniform(12, 40);
  c.max_num_seqs = uniform(2, 8);
  c.max_num_batched_tokens = uniform(c.max_num_seqs, 40);
  c.enable_chunked_prefill = uniform(0, 3) != 0;
  c.enable_prefix_caching = uniform(0, 3) != 0;
  c.max_prefill_chunk = uniform(0, 1) ? 0 : uniform(1, 12);
  c.max_model_len = uniform(24, 64);
  c.max_waiting = 64;
  c.eos_token_ids = {uniform(0, testing::kVocab - 1)};
  auto created = Scheduler::Create(c);
  ASSERT_TRUE(created.ok()) << created.status();
  Scheduler& s = **created;
  FakeEngine engine(s);

  // A few shared system prompts so that prefix hits and evictions happen.
  std::vector<std::vector<TokenId>> prefixes(3);
  for (auto& p : prefixes) {
    p.resize(uniform(4, 14));
    for (auto& t : p) t = uniform(0, testing::kVocab - 1);
  }
  std::vector<Request> requests;
  std::vector<SeqId> aborted;
  const int num_requests = uniform(10, 30);
  SeqId next_id = 1;
  int step = 0;
  while ((static_cast<int>(requests.size()) < num_requests || s.HasUnfinished()) && step < 3000) {
    // Arrivals.
    while (static_cast<int>(requests.size()) < num_requests && uniform(0, 2) == 0) {
      Request r;
      r.spec.id = next_id;
      next_id += 10;  // room for child ids id+1..id+3
      if (uniform(0, 1)) r.spec.prompt = prefixes[uniform(0, 2)];
      const int extra = uniform(r.spec.prompt.empty() ? 1 : 0, 12);
      for (int i = 0; i < extra; ++i) r.spec.prompt.push_back(uniform(0, testing::kVocab - 1));
      r.spec.prompt.resize(std::min<size_t>(r.spec.prompt.size(), s.max_seq_len()));
      r.spec.stop.max_tokens = uniform(1, 20);
      r.spec.stop.min_tokens = uniform(0, 1) ? 0 : uniform(0, r.spec.stop.max_tokens);
      r.spec.stop.ignore_eos = uniform(0, 3) == 0;
      if (uniform(0, 4) == 0) r.spec.stop.stop_token_ids = {uniform(0, testing::kVocab - 1)};
      const int n = uniform(0, 4) == 0 ? uniform(2, std::min(4, c.max_num_seqs)) : 1;
      r.spec.fan_out = n;
      for (int k = 1; k < n; ++k) r.children.push_back(r.spec.id + k);
      ASSERT_TRUE(s.Add(r.spec).ok());
      if (!r.children.empty()) engine.RequestForks(r.spec.id, r.children);
      requests.push_back(r);
    }
    // Occasional aborts of a live sequence, before the step or while it runs.
    if (uniform(0, 25) == 0) {
      const QueueSnapshot q = s.Queues();
      std::vector<SeqId> live = q.running;
      live.insert(live.end(), q.waiting.begin(), q.waiting.end());
      live.insert(live.end(), q.preempted.begin(), q.preempted.end());
      std::erase_if(live, [&aborted](SeqId id) {  // still queued until the next step reaps it
        return std::find(aborted.begin(), aborted.end(), id) != aborted.end();
      });
      if (!live.empty()) {
        const SeqId victim = live[uniform(0, static_cast<int>(live.size()) - 1)];
        if (uniform(0, 1)) {
          engine.Abort(victim);
        } else {
          engine.AbortAfterSchedule(victim);
        }
        aborted.push_back(victim);
      }
    }
    const SchedulerOutput out = engine.Step();
    ASSERT_LE(out.num_batched_tokens, c.max_num_batched_tokens);
    // A parent holds its children's places from admission: forks never pass max_num_seqs.
    ASSERT_LE(static_cast<int>(out.scheduled.size()), c.max_num_seqs);
    ASSERT_LE(s.running_demand(), c.max_num_seqs);
    ASSERT_FALSE(::testing::Test::HasFailure()) << "at step " << step;
    ++step;
  }
  ASSERT_LT(step, 3000) << "no progress";
  engine.Step();  // collect the last finished reports
  totals.preemptions += s.counters().preemptions;
  totals.prefix_hit_tokens += s.block_manager().Usage().prefix_hit_tokens;
  totals.evictions += s.block_manager().Usage().evictions;
  EXPECT_EQ(s.block_manager().Usage().used, 0);
  EXPECT_EQ(s.block_manager().Usage().free, c.num_blocks);

  const std::vector<TokenId> eos = c.eos_token_ids;
  auto was_aborted = [&aborted](SeqId id) {
    return std::find(aborted.begin(), aborted.end(), id) != aborted.end();
  };
  for (const Request& r : requests) {
    std::vector<std::pair<SeqId, int>> members = {{r.spec.id, 0}};
    for (size_t k = 0; k < r.children.size(); ++k) members.push_back({r.children[k], int(k) + 1});
    for (const auto& [id, index] : members) {
      auto it = engine.finished().find(id);
      if (it == engine.finished().end()) {
        // A child whose parent was aborted before its first sample is never created.
        EXPECT_NE(index, 0) << "sequence " << id << " never finished";
        continue;
      }
      if (index > 0) ++totals.forked_sequences;
      const auto ref = ReferenceGenerate(r.spec.prompt, r.spec.stop, s.max_seq_len(), eos, index);
      const std::vector<TokenId>& got = engine.output(id);
      if (was_aborted(id)) {
        ASSERT_LE(got.size(), ref.tokens.size());
        EXPECT_TRUE(std::equal(got.begin(), got.end(), ref.tokens.begin())) << "sequence " << id;
      } else {
        EXPECT_EQ(got, ref.tokens) << "sequence " << id;
        EXPECT_EQ(it->second, ref.reason) << "sequence " << id;
      }
    }
  }
}

TEST(SchedulerRandomTest, InvariantsAndExactOutputsOverManySeeds) {
  Totals totals;
  for (uint32_t seed = 1; seed <= 300; ++seed) {
    RunRandom(seed, totals);
    if (::testing::Test::HasFailure()) return;
  }
  // The runs must actually exercise the hard paths.
  EXPECT_GT(totals.preemptions, 100);
  EXPECT_GT(totals.prefix_hit_tokens, 1000);
  EXPECT_GT(totals.evictions, 100);
  EXPECT_GT(totals.forked_sequences, 50);
  std::printf(
      "preemptions %lld, prefix-hit tokens %lld, evictions %lld, forked %lld\n",
      static_cast<long long>(totals.preemptions), static_cast<long long>(totals.prefix_hit_tokens),
      static_cast<long long>(totals.evictions), static_cast<long long>(totals.forked_sequences));
}

}  // namespace
}  // namespace tpserve::scheduler
