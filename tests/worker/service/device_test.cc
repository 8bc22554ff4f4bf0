// The worker's --device / --dtype / --collectives handling (worker/service/device.h) and the
// load-progress reporting rules (worker/service/load_progress.h), without processes.
#include "worker/service/device.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "worker/backend/cpu/int8_gemm.h"
#include "worker/service/load_progress.h"

namespace tpserve {
namespace {

using ::testing::HasSubstr;

DeviceOptions Options(std::string device, std::string dtype = "", std::string collectives = "gloo",
                      int threads = 1) {
  DeviceOptions o;
  o.device = std::move(device);
  o.dtype = std::move(dtype);
  o.collectives = std::move(collectives);
  o.threads = threads;
  return o;
}

absl::Status OpenStatus(const DeviceOptions& o) { return OpenDevice(o).status(); }

ConnectRequest GroupOf(int world_size, bool nccl) {
  ConnectRequest r;
  r.world_size = world_size;
  r.nccl_requested = nccl;
  return r;
}

TEST(OpenDeviceTest, CpuIsTheDefaultAndComputesInInt8OrFp32) {
  absl::StatusOr<std::unique_ptr<WorkerDevice>> d = OpenDevice(Options("cpu", "", "gloo", 2));
  ASSERT_TRUE(d.ok()) << d.status();
  const DeviceDescription desc = (*d)->Describe();
  EXPECT_EQ(desc.kind, "cpu");
  EXPECT_EQ(desc.compute_units, 2);
  EXPECT_GT(desc.memory_total_bytes, 0);
  EXPECT_EQ((*d)->backend().device(), Device::kCpu);
  EXPECT_FALSE((*d)->FreeDeviceBytes().has_value());
  EXPECT_TRUE((*d)->CheckDtype("").ok());
  EXPECT_TRUE((*d)->CheckDtype("f32").ok());
  EXPECT_TRUE((*d)->CheckDtype("int8").ok());
  EXPECT_TRUE((*d)->CheckDtype("int8x2").ok());
  EXPECT_EQ((*d)->CheckDtype("bf16").code(), absl::StatusCode::kInvalidArgument);
  // The default precision: int8x2 where this build has the VNNI kernel.
  const auto& cpu = static_cast<const CpuBackend&>((*d)->backend());
  EXPECT_EQ(cpu.precision(), Int8GemmAvailable() ? CpuPrecision::kInt8x2 : CpuPrecision::kFp32);
  EXPECT_THAT((*d)->Summary(), HasSubstr(Int8GemmAvailable() ? "cpu int8x2" : "cpu fp32"));
  // LoadModel asking for NCCL on a CPU rank.
  absl::StatusOr<std::unique_ptr<Communicator>> c = (*d)->Connect(GroupOf(2, /*nccl=*/true));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented);
  c = (*d)->Connect(GroupOf(1, /*nccl=*/false));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->world_size(), 1);
}

TEST(OpenDeviceTest, BadFlagsSayWhatIsAccepted) {
  absl::Status st = OpenStatus(Options("gpu0"));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("expected cpu, cuda or cuda:K"));
  EXPECT_EQ(OpenStatus(Options("cuda:x")).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenStatus(Options("cuda:-1")).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenStatus(Options("cuda:")).code(), absl::StatusCode::kInvalidArgument);
  st = OpenStatus(Options("cpu", "bf16"));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("CPU backend computes in int8x2, int8 or fp32"));
  st = OpenStatus(Options("cpu", "", "nccl"));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("CPU ranks use gloo"));
  EXPECT_EQ(OpenStatus(Options("cpu", "", "mpi")).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenStatus(Options("cpu", "fp16")).code(), absl::StatusCode::kInvalidArgument);
}

TEST(OpenDeviceTest, CpuDtypeChoosesTheMatmulPrecision) {
  absl::StatusOr<std::unique_ptr<WorkerDevice>> fp32 = OpenDevice(Options("cpu", "fp32"));
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_EQ(static_cast<const CpuBackend&>((*fp32)->backend()).precision(), CpuPrecision::kFp32);
  EXPECT_EQ(OpenStatus(Options("cpu", "int4")).code(), absl::StatusCode::kInvalidArgument);
  for (auto [name, want] :
       {std::pair{"int8", CpuPrecision::kInt8}, std::pair{"int8x2", CpuPrecision::kInt8x2}}) {
    absl::StatusOr<std::unique_ptr<WorkerDevice>> d = OpenDevice(Options("cpu", name));
    if (!Int8GemmAvailable()) {
      EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_THAT(d.status().message(), HasSubstr("AVX-512 VNNI"));
      continue;
    }
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(static_cast<const CpuBackend&>((*d)->backend()).precision(), want);
  }
}

TEST(OpenDeviceTest, KvCacheDtypeFollowsThePrecisionUnlessAskedFor) {
  const auto kv_of = [](const DeviceOptions& o) -> std::string {
    absl::StatusOr<std::unique_ptr<WorkerDevice>> d = OpenDevice(o);
    if (!d.ok()) return d.status().ToString();
    EXPECT_THAT((*d)->Summary(),
                HasSubstr(absl::StrCat("KV cache ", (*d)->Describe().kv_cache_dtype)));
    return (*d)->Describe().kv_cache_dtype;
  };
  DeviceOptions o = Options("cpu", "fp32");
  EXPECT_EQ(kv_of(o), "fp32");  // the oracle keeps everything fp32
  o.kv_cache_dtype = "fp16";
  EXPECT_EQ(kv_of(o), "fp16");
  o = Options("cpu", "");
  EXPECT_EQ(kv_of(o), Int8GemmAvailable() ? "fp16" : "fp32");
  o.kv_cache_dtype = "auto";
  EXPECT_EQ(kv_of(o), Int8GemmAvailable() ? "fp16" : "fp32");
  o.kv_cache_dtype = "fp32";
  EXPECT_EQ(kv_of(o), "fp32");
  o.kv_cache_dtype = "int8";
  EXPECT_EQ(kv_of(o), "int8");
  o.kv_cache_dtype = "bf16";
  absl::Status st = OpenStatus(o);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("expected auto, fp16, fp32 or int8"));
  // CUDA keeps fp16 or fp32 pools: int8 is refused before any GPU is looked for.
  o = Options("cuda:0");
  o.kv_cache_dtype = "int8";
  st = OpenStatus(o);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("fp16 or fp32 (int8 is --device cpu only)"));
  o.kv_cache_dtype = "bf16";
  st = OpenStatus(o);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("expected auto, fp16, fp32 or int8"));
}

// No GPU in CI: a CUDA build explains the missing driver, a CPU build that it has no CUDA. On a
// machine with a GPU the device opens (checked by the GPU tests instead).
TEST(OpenDeviceTest, CudaWithoutAGpuFailsWithTheReason) {
  absl::StatusOr<std::unique_ptr<WorkerDevice>> d = OpenDevice(Options("cuda:0"));
  if (d.ok()) GTEST_SKIP() << "a usable GPU is present: " << (*d)->Summary();
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(d.status().message(), HasSubstr("use --device cpu"));
  if (BuiltWithCuda()) {
    EXPECT_THAT(d.status().message(), HasSubstr("cudaGetDeviceCount returned"));
  } else {
    EXPECT_THAT(d.status().message(), HasSubstr("built without CUDA"));
  }
}

// Reports of LoadProgress for a 1000-byte slice read in 70-byte pieces, with a 1 h interval so
// that only the 10 % steps report: one report per step crossed, then Finish's 100 %.
TEST(LoadProgressTest, ReportsEachTenPercentStepOnceAndFinishesAtTheTotal) {
  std::vector<std::pair<int64_t, int64_t>> got;
  LoadProgress p(
      1000, [&](int64_t d, int64_t t) { got.emplace_back(d, t); }, absl::Hours(1));
  for (int i = 0; i < 14; ++i) p.Add(70);  // 70, 140, ..., 980
  p.Finish();
  // A report at the first Add past each multiple of 100 (140 crosses 100, 210 crosses 200, ...).
  const std::vector<std::pair<int64_t, int64_t>> want = {
      {140, 1000}, {210, 1000}, {350, 1000}, {420, 1000}, {560, 1000},
      {630, 1000}, {700, 1000}, {840, 1000}, {910, 1000}, {1000, 1000}};
  EXPECT_EQ(got, want);
}

TEST(LoadProgressTest, CountsNeverPassTheTotalAndTheTimerReportsBetweenSteps) {
  std::vector<int64_t> got;
  LoadProgress p(
      100, [&](int64_t d, int64_t) { got.push_back(d); }, absl::ZeroDuration());
  p.Add(1);    // the timer is due at every call: reported
  p.Add(2);    // reported
  p.Add(500);  // clamped to 100: the 100 % report is Finish's alone
  p.Finish();
  EXPECT_EQ(got, (std::vector<int64_t>{1, 3, 100}));
}

TEST(LoadProgressTest, LogTextRoundTrips) {
  const std::string text = FormatLoadProgress(48 << 20, 96 << 20);
  EXPECT_EQ(text, "load progress 50331648/100663296 bytes (50%, 48.0/96.0 MiB)");
  int64_t done = 0, total = 0;
  // As `tpserve up` sees it: inside a text or a JSON log line.
  ASSERT_TRUE(ParseLoadProgress("[rank 1] 10:00:00.000 info " + text, &done, &total));
  EXPECT_EQ(done, 48 << 20);
  EXPECT_EQ(total, 96 << 20);
  ASSERT_TRUE(ParseLoadProgress("{\"level\":\"info\",\"msg\":\"" + text + "\"}", &done, &total));
  EXPECT_EQ(done, 48 << 20);
  EXPECT_FALSE(ParseLoadProgress("loaded llama (30 layers)", &done, &total));
}

}  // namespace
}  // namespace tpserve
