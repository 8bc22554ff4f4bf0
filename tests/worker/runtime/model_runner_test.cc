// ModelRunner on a tiny random-weight checkpoint: a sequence gives the same logits and tokens
// alone or batched with others, whole or in prefill chunks, and bad step plans are rejected
// before anything runs. (Absolute correctness is tests/worker/model/reference_test.cc.)
#include "worker/runtime/model_runner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "tests/worker/model/golden.h"

namespace tpserve {
namespace {

using testing::OpenEngine;
using testing::RelativeDiff;

constexpr const char* kModel = "tests/data/golden/models/llama-gqa-llama3";

std::vector<int32_t> Prompt(int n, int salt) {
  std::vector<int32_t> p(n);
  for (int i = 0; i < n; ++i) p[i] = 3 + (i * 37 + salt * 101) % 300;
  return p;
}

TEST(ModelRunner, KeptLogitsAreTheReturnedOnesInAHostTensor) {
  auto engine = OpenEngine(kModel, 8);
  ASSERT_NE(engine, nullptr);
  const int64_t V = engine->files.config.vocab_size;
  StepSequence a{.seq_id = 0, .tokens = Prompt(6, 1), .block_table = {0}, .all_logits = true};
  StepSequence b{.seq_id = 1, .tokens = Prompt(3, 2), .block_table = {1}};
  auto r = engine->runner->Execute(
      Step{.sequences = {a, b}, .return_logits = true, .keep_logits = true});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->logits_host.device(), Device::kCpu);
  ASSERT_EQ(r->logits_host.shape(), (std::vector<int64_t>{7, V}));  // 6 rows of a, 1 of b
  ASSERT_EQ(r->logits.size(), static_cast<size_t>(7 * V));
  EXPECT_EQ(std::memcmp(r->logits_host.data(), r->logits.data(), r->logits.size() * 4), 0);
  // The sampled tokens are the greedy ones of the rows they were drawn from.
  for (int i = 0; i < 2; ++i) {
    const float* row = r->logits_host.row(r->logits_row[i] + (i == 0 ? 5 : 0));
    EXPECT_EQ(r->tokens[i], std::max_element(row, row + V) - row);
  }
  // Without either flag no logits come back.
  auto t = engine->runner->Execute(Step{.sequences = {b}});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->logits.empty());
  EXPECT_TRUE(t->logits_host.empty());
}

TEST(ModelRunner, BatchedEqualsAloneAndChunkedEqualsWhole) {
  auto alone = OpenEngine(kModel, 32);
  auto batched = OpenEngine(kModel, 32);
  ASSERT_NE(alone, nullptr);
  ASSERT_NE(batched, nullptr);
  const int64_t V = alone->files.config.vocab_size;
  const SamplingParams sampling{.temperature = 0.9f, .top_p = 0.95f, .seed = 11};

  // Alone: each of three sequences prefilled whole, then 4 sampled decode steps.
  const std::vector<std::vector<int32_t>> prompts = {Prompt(5, 1), Prompt(19, 2), Prompt(1, 3)};
  std::vector<std::vector<float>> alone_logits(3);  // all positions of the prompt
  std::vector<std::vector<int32_t>> alone_tokens(3);
  for (int s = 0; s < 3; ++s) {
    StepSequence seq{.seq_id = s,
                     .tokens = prompts[s],
                     .block_table = {int32_t(s * 4), int32_t(s * 4 + 1)},
                     .sampling = sampling,
                     .all_logits = true};
    auto r = alone->runner->Execute(Step{.sequences = {seq}, .return_logits = true});
    ASSERT_TRUE(r.ok()) << r.status();
    alone_logits[s] = r->logits;
    alone_tokens[s].push_back(r->tokens[0]);
    seq.all_logits = false;
    for (int step = 1; step < 5; ++step) {
      seq.start_pos += seq.tokens.size();
      seq.tokens = {alone_tokens[s].back()};
      seq.sample_step = step;
      auto d = alone->runner->Execute(Step{.sequences = {seq}});
      ASSERT_TRUE(d.ok()) << d.status();
      alone_tokens[s].push_back(d->tokens[0]);
    }
  }

  // Batched: sequence 1 is prefilled in chunks of 7, 7, 5 while the others run beside it; the
  // last chunk samples. Different (scattered) block ids than above.
  std::vector<StepSequence> seqs(3);
  for (int s = 0; s < 3; ++s) {
    seqs[s] = StepSequence{.seq_id = s,
                           .block_table = {int32_t(20 - s), int32_t(10 + s)},
                           .sampling = sampling,
                           .all_logits = true};
  }
  std::vector<std::vector<float>> got_logits(3);
  std::vector<std::vector<int32_t>> got_tokens(3);
  int64_t fed1 = 0;
  for (int step = 0; step < 8; ++step) {
    Step plan{.return_logits = true};
    std::vector<int> which;
    for (int s = 0; s < 3; ++s) {
      StepSequence& q = seqs[s];
      if (got_tokens[s].size() == 5) continue;
      if (s == 1 && fed1 < 19) {  // prefill chunk
        const int64_t n = std::min<int64_t>(7, 19 - fed1);
        q.start_pos = fed1;
        q.tokens.assign(prompts[1].begin() + fed1, prompts[1].begin() + fed1 + n);
        q.sample = fed1 + n == 19;
        fed1 += n;
      } else if (got_tokens[s].empty()) {
        q.tokens = prompts[s];
      } else {
        q.start_pos += q.tokens.size();
        q.tokens = {got_tokens[s].back()};
        q.all_logits = false;
      }
      q.sample_step = got_tokens[s].size();
      plan.sequences.push_back(q);
      which.push_back(s);
    }
    if (plan.sequences.empty()) break;
    auto r = batched->runner->Execute(plan);
    ASSERT_TRUE(r.ok()) << r.status();
    for (size_t i = 0; i < which.size(); ++i) {
      const int s = which[i];
      const StepSequence& q = plan.sequences[i];
      if (q.all_logits) {
        got_logits[s].insert(got_logits[s].end(), r->logits.begin() + r->logits_row[i] * V,
                             r->logits.begin() + (r->logits_row[i] + q.tokens.size()) * V);
      }
      if (q.sample) got_tokens[s].push_back(r->tokens[i]);
      if (q.sample && got_tokens[s].size() == 1) seqs[s].all_logits = false;
    }
  }
  for (int s = 0; s < 3; ++s) {
    SCOPED_TRACE("sequence " + std::to_string(s));
    ASSERT_EQ(got_logits[s].size(), alone_logits[s].size());
    EXPECT_LE(RelativeDiff(got_logits[s].data(), alone_logits[s].data(), got_logits[s].size()),
              1e-5);
    EXPECT_EQ(got_tokens[s], alone_tokens[s]);
  }
}

TEST(ModelRunner, RejectsBadPlans) {
  auto e = OpenEngine(kModel, 4);
  ASSERT_NE(e, nullptr);
  auto run = [&](StepSequence s) { return e->runner->Execute(Step{.sequences = {s}}).status(); };
  EXPECT_EQ(e->runner->Execute(Step{}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run({.tokens = {}, .block_table = {0}}).code(), absl::StatusCode::kInvalidArgument);
  absl::Status st = run({.tokens = {5, 384}, .block_table = {0}});  // vocab is 384
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("384"), std::string::npos) << st;
  st = run({.tokens = std::vector<int32_t>(17, 5), .block_table = {0}});  // 17 > 16
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  st = run({.tokens = {5}, .block_table = {4}});  // pool has blocks 0..3
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("block 4"), std::string::npos) << st;
  EXPECT_EQ(run({.tokens = {5}, .start_pos = 300, .block_table = {0, 1, 2, 3}}).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tpserve
