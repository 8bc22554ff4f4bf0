#include "worker/service/registration.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "spdlog/spdlog.h"
#include "tpserve/v1/worker.grpc.pb.h"
#include "worker/service/memory_budget.h"

namespace tpserve {
namespace {

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(colon + 1);
        name.erase(0, name.find_first_not_of(' '));
        return name;
      }
    }
  }
  return "cpu";
}

bool Retryable(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
         code == grpc::StatusCode::ALREADY_EXISTS;
}

}  // namespace

v1::DeviceInfo CpuDeviceInfo(int threads) {
  v1::DeviceInfo d;
  d.set_kind("cpu");
  d.set_index(0);
  d.set_name(CpuModelName());
  d.set_memory_total_bytes(HostTotalBytes());
  d.set_memory_free_bytes(HostAvailableBytes());
  d.set_compute_units(threads);
  d.set_compute_capability(0);
  return d;
}

std::string MakeIncarnation() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return absl::StrCat(host, ":", getpid(), ":", absl::ToUnixNanos(absl::Now()));
}

absl::StatusOr<v1::RegisterResponse> RegisterWithCoordinator(const std::string& coordinator,
                                                             const v1::RegisterRequest& request,
                                                             const std::function<bool()>& stopped,
                                                             const RegisterRetry& retry) {
  auto channel = grpc::CreateChannel(coordinator, grpc::InsecureChannelCredentials());
  auto stub = v1::Cluster::NewStub(channel);
  absl::Duration backoff = retry.first_backoff;
  for (int attempt = 1;; ++attempt) {
    if (stopped()) return absl::CancelledError("registration stopped");
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(absl::ToInt64Milliseconds(retry.rpc_timeout)));
    v1::RegisterResponse resp;
    const grpc::Status st = stub->Register(&ctx, request, &resp);
    if (st.ok()) return resp;
    if (!Retryable(st.error_code())) {
      return absl::Status(
          static_cast<absl::StatusCode>(st.error_code()),
          absl::StrCat("coordinator ", coordinator, " refused registration: ", st.error_message()));
    }
    // The first failures are expected while the coordinator starts; say so once, then rarely.
    if (attempt == 1 || attempt % 10 == 0) {
      spdlog::warn("register with {} (attempt {}): {}; retrying", coordinator, attempt,
                   st.error_message());
    }
    const absl::Time wake = absl::Now() + backoff;
    while (absl::Now() < wake && !stopped()) absl::SleepFor(absl::Milliseconds(50));
    backoff = std::min(backoff * 2, retry.max_backoff);
  }
}

}  // namespace tpserve
