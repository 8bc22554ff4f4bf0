#include "coordinator/cluster/worker_registry.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tpserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

WorkerInfo Worker(int rank, const std::string& incarnation, int world = 3) {
  WorkerInfo w;
  w.rank = rank;
  w.world_size = world;
  w.incarnation = incarnation;
  w.device_kind = "cpu";
  w.memory_total_bytes = int64_t{8} << 30;
  w.control_address = "127.0.0.1:" + std::to_string(7000 + rank);
  w.model = "smollm2.gguf";
  w.version = "0.1.0";
  return w;
}

TEST(WorkerRegistryTest, CompleteWhenAllRanksPresentInAnyOrder) {
  WorkerRegistry reg(3, "smollm2.gguf", "0.1.0");
  EXPECT_FALSE(reg.complete());
  EXPECT_THAT(reg.missing_ranks(), ElementsAre(0, 1, 2));

  absl::StatusOr<RegisterOutcome> a = reg.Register(Worker(2, "w2"));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->registered, 1);
  EXPECT_FALSE(a->complete);
  ASSERT_TRUE(reg.Register(Worker(0, "w0")).ok());
  EXPECT_THAT(reg.missing_ranks(), ElementsAre(1));
  EXPECT_EQ(reg.generation(), 0);

  absl::StatusOr<RegisterOutcome> c = reg.Register(Worker(1, "w1"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->registered, 3);
  EXPECT_TRUE(c->complete);
  EXPECT_TRUE(reg.complete());
  EXPECT_EQ(reg.generation(), 1);
  std::vector<WorkerInfo> ws = reg.workers();
  ASSERT_EQ(ws.size(), 3u);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(ws[r].rank, r);
    EXPECT_EQ(ws[r].incarnation, "w" + std::to_string(r));
  }
  EXPECT_EQ(reg.worker(1)->control_address, "127.0.0.1:7001");
}

TEST(WorkerRegistryTest, RetriedRegistrationIsIdempotent) {
  WorkerRegistry reg(2, "", "");
  ASSERT_TRUE(reg.Register(Worker(0, "w0", 2)).ok());
  ASSERT_TRUE(reg.Register(Worker(1, "w1", 2)).ok());
  absl::StatusOr<RegisterOutcome> again = reg.Register(Worker(1, "w1", 2));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->complete);
  EXPECT_EQ(reg.generation(), 1);  // not a new group
}

TEST(WorkerRegistryTest, DuplicateRankIsAlreadyExists) {
  WorkerRegistry reg(3, "", "");
  ASSERT_TRUE(reg.Register(Worker(1, "first")).ok());
  absl::StatusOr<RegisterOutcome> dup = reg.Register(Worker(1, "second"));
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(dup.status().message()),
              HasSubstr("rank 1 is already held by worker first"));
  EXPECT_EQ(reg.worker(1)->incarnation, "first");
}

struct BadCase {
  std::string name;
  WorkerInfo info;
  absl::StatusCode code;
  std::string message;
};

TEST(WorkerRegistryTest, BadRegistrationsAreRejectedWithClearErrors) {
  auto with = [](WorkerInfo w, auto edit) {
    edit(w);
    return w;
  };
  const std::vector<BadCase> cases = {
      {"rank too large", Worker(3, "x"), absl::StatusCode::kInvalidArgument,
       "rank 3 is outside this group of 3 ranks"},
      {"negative rank", Worker(-1, "x"), absl::StatusCode::kInvalidArgument, "rank -1 is outside"},
      {"no incarnation", Worker(0, ""), absl::StatusCode::kInvalidArgument, "no incarnation"},
      {"unknown device", with(Worker(0, "x"), [](WorkerInfo& w) { w.device_kind = "tpu"; }),
       absl::StatusCode::kInvalidArgument, "device kind 'tpu'"},
      {"other group size", Worker(0, "x", 2), absl::StatusCode::kFailedPrecondition,
       "group of 2 ranks but the coordinator runs 3"},
      {"other model", with(Worker(0, "x"), [](WorkerInfo& w) { w.model = "llama.gguf"; }),
       absl::StatusCode::kFailedPrecondition, "model 'llama.gguf' but the coordinator serves"},
      {"other version", with(Worker(0, "x"), [](WorkerInfo& w) { w.version = "9.9"; }),
       absl::StatusCode::kFailedPrecondition, "runs tpserve 9.9"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    WorkerRegistry reg(3, "smollm2.gguf", "0.1.0");
    absl::StatusOr<RegisterOutcome> out = reg.Register(c.info);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), c.code) << out.status();
    EXPECT_THAT(std::string(out.status().message()), HasSubstr(c.message));
    EXPECT_EQ(reg.registered(), 0);
  }
}

TEST(WorkerRegistryTest, LostRankIsReplacedAndStartsANewGeneration) {
  WorkerRegistry reg(2, "", "");
  ASSERT_TRUE(reg.Register(Worker(0, "w0", 2)).ok());
  ASSERT_TRUE(reg.Register(Worker(1, "w1", 2)).ok());
  ASSERT_EQ(reg.generation(), 1);

  ASSERT_TRUE(reg.MarkLost(1).ok());
  EXPECT_FALSE(reg.complete());
  EXPECT_THAT(reg.missing_ranks(), ElementsAre(1));
  EXPECT_FALSE(reg.worker(1).has_value());
  EXPECT_EQ(reg.MarkLost(1).code(), absl::StatusCode::kNotFound);

  absl::StatusOr<RegisterOutcome> back = reg.Register(Worker(1, "w1-restarted", 2));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->replaced_lost);
  EXPECT_TRUE(back->complete);
  EXPECT_EQ(reg.generation(), 2);
  EXPECT_EQ(reg.worker(1)->incarnation, "w1-restarted");
}

}  // namespace
}  // namespace tpserve
