#include "tools/bench_report.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tpserve::bench {
namespace {

using ::testing::HasSubstr;

RequestRecord Ok(double ttft, double e2e, std::vector<double> itl, int64_t prompt, int64_t output) {
  RequestRecord r;
  r.ttft_ms = ttft;
  r.e2e_ms = e2e;
  r.itl = std::move(itl);
  r.prompt_tokens = prompt;
  r.output_tokens = output;
  return r;
}

RequestRecord Failed(int code) {
  RequestRecord r;
  r.code = code;
  r.e2e_ms = 1;
  return r;
}

TEST(BenchReportTest, CountsThroughputsAndLatencies) {
  // Two OK requests (10 + 30 output tokens, 5 + 15 prompt tokens) in 4 s; three failures.
  const std::vector<RequestRecord> records = {Ok(100, 1000, {10, 20}, 5, 10),
                                              Ok(300, 3000, {30}, 15, 30), Failed(14), Failed(14),
                                              Failed(8)};
  ServerTotals before, after;
  before.preemptions = 3;
  after.preemptions = 7;
  before.prefix_cache_hit_tokens = 100;
  after.prefix_cache_hit_tokens = 164;
  before.steps = 10;
  after.steps = 30;
  before.generation_tokens = 50;
  after.generation_tokens = 130;
  before.step_ms_sum = 100;  // 10 steps of 10 ms
  after.step_ms_sum = 500;   // then 20 steps of 20 ms
  before.compute_ms_sum = 50;
  after.compute_ms_sum = 350;  // 15 ms per step in the interval
  const std::vector<LoadSample> samples = {{2, 0, 0.25}, {4, 1, 0.75}};

  Report r;
  FillReport(records, samples, before, after, 4.0, &r);
  EXPECT_EQ(r.ok, 2);
  EXPECT_EQ(r.failed, 3);
  EXPECT_EQ(r.failed_by_code.at("UNAVAILABLE"), 2);
  EXPECT_EQ(r.failed_by_code.at("RESOURCE_EXHAUSTED"), 1);
  EXPECT_EQ(r.output_tokens, 40);
  EXPECT_EQ(r.prompt_tokens, 20);
  EXPECT_DOUBLE_EQ(r.request_throughput, 0.5);
  EXPECT_DOUBLE_EQ(r.output_throughput, 10.0);
  EXPECT_DOUBLE_EQ(r.total_throughput, 15.0);
  EXPECT_EQ(r.ttft_ms.count, 2);
  EXPECT_DOUBLE_EQ(r.ttft_ms.mean, 200);
  EXPECT_DOUBLE_EQ(r.ttft_ms.p50, 200);
  EXPECT_EQ(r.itl_ms.count, 3);
  EXPECT_DOUBLE_EQ(r.itl_ms.p50, 20);
  EXPECT_DOUBLE_EQ(r.e2e_ms.max, 3000);
  EXPECT_EQ(r.stats_samples, 2);
  EXPECT_DOUBLE_EQ(r.kv_usage_mean, 0.5);
  EXPECT_DOUBLE_EQ(r.kv_usage_max, 0.75);
  EXPECT_EQ(r.running_max, 4);
  EXPECT_DOUBLE_EQ(r.running_mean, 3);
  EXPECT_EQ(r.preemptions, 4);
  EXPECT_EQ(r.prefix_cache_hit_tokens, 64);
  EXPECT_EQ(r.steps, 20);
  EXPECT_DOUBLE_EQ(r.mean_step_ms, 20);
  EXPECT_DOUBLE_EQ(r.mean_compute_ms, 15);
  EXPECT_DOUBLE_EQ(r.generated_per_step, 4);

  const std::string table = FormatReport(r);
  EXPECT_THAT(table, HasSubstr("2 / 3  RESOURCE_EXHAUSTED=1  UNAVAILABLE=2"));
  EXPECT_THAT(table, HasSubstr("output throughput (tok/s)          10.0"));
  EXPECT_THAT(table, HasSubstr("preemptions                        4"));
  const nlohmann::json j = ReportToJson(r);
  EXPECT_EQ(j["requests_ok"], 2);
  EXPECT_EQ(j["failed_by_code"]["UNAVAILABLE"], 2);
  EXPECT_DOUBLE_EQ(j["ttft_ms"]["p50"].get<double>(), 200);
  EXPECT_DOUBLE_EQ(j["mean_step_ms"].get<double>(), 20);
}

TEST(BenchReportTest, NothingRanGivesZerosNotNans) {
  Report r;
  FillReport({}, {}, {}, {}, 0, &r);
  EXPECT_EQ(r.ok, 0);
  EXPECT_EQ(r.output_throughput, 0);
  EXPECT_EQ(r.mean_step_ms, 0);
  EXPECT_EQ(r.kv_usage_mean, 0);
  EXPECT_THAT(FormatReport(r), HasSubstr("time to first token (ms)           -"));
}

TEST(BenchReportTest, StatusCodeNames) {
  EXPECT_EQ(StatusCodeName(0), "OK");
  EXPECT_EQ(StatusCodeName(3), "INVALID_ARGUMENT");
  EXPECT_EQ(StatusCodeName(4), "DEADLINE_EXCEEDED");
  EXPECT_EQ(StatusCodeName(42), "CODE_42");
}

}  // namespace
}  // namespace tpserve::bench
