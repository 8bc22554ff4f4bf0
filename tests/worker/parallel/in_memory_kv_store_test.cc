#include "worker/parallel/in_memory_kv_store.h"

#include <thread>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tpserve {
namespace {

using ::testing::HasSubstr;

TEST(InMemoryKvStoreTest, SetGetCheck) {
  InMemoryKvStore store;
  ASSERT_TRUE(store.Set("a", "1").ok());
  ASSERT_TRUE(store.Set("a", std::string("x\0y", 3)).ok());  // binary values, replaced
  absl::StatusOr<std::string> a = store.Get("a", absl::ZeroDuration());
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(*a, std::string("x\0y", 3));
  EXPECT_EQ(*store.Check({"a"}), true);
  EXPECT_EQ(*store.Check({"a", "b"}), false);
  EXPECT_EQ(store.Set("", "v").code(), absl::StatusCode::kInvalidArgument);
}

TEST(InMemoryKvStoreTest, GetWaitsForALaterSet) {
  InMemoryKvStore store;
  std::thread setter([&]() {
    absl::SleepFor(absl::Milliseconds(50));
    ASSERT_TRUE(store.Set("late", "v").ok());
  });
  absl::StatusOr<std::string> v = store.Get("late", absl::Seconds(10));
  setter.join();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, "v");
}

TEST(InMemoryKvStoreTest, WaitTimesOutNamingMissingKeys) {
  InMemoryKvStore store;
  ASSERT_TRUE(store.Set("here", "").ok());
  absl::Status st = store.Wait({"here", "gone1", "gone2"}, absl::Milliseconds(20));
  EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(st.message(), HasSubstr("gone1, gone2"));
  EXPECT_THAT(std::string(st.message()), ::testing::Not(HasSubstr("here")));
}

TEST(InMemoryKvStoreTest, DeletePrefixRemovesOneGeneration) {
  InMemoryKvStore store;
  for (const char* k : {"g1/0", "g1/1", "g10/0", "g2/0"}) ASSERT_TRUE(store.Set(k, "").ok());
  EXPECT_EQ(store.DeletePrefix("g1/"), 2);
  EXPECT_EQ(store.size(), 2);
  EXPECT_EQ(*store.Check({"g10/0", "g2/0"}), true);
}

}  // namespace
}  // namespace tpserve
