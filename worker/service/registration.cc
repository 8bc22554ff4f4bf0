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

// Sleeps `d` in short slices so that a stop request is noticed promptly.
void SleepUnlessStopped(absl::Duration d, const std::function<bool()>& stopped) {
  const absl::Time wake = absl::Now() + d;
  while (absl::Now() < wake && !stopped()) {
    absl::SleepFor(std::min(absl::Milliseconds(50), wake - absl::Now()));
  }
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

bool RegistrationRetryable(const absl::Status& st) {
  return absl::IsUnavailable(st) || absl::IsDeadlineExceeded(st) || absl::IsAlreadyExists(st);
}

struct Registrar::Impl {
  std::string coordinator;
  v1::RegisterRequest request;
  std::unique_ptr<v1::Cluster::Stub> stub;
};

Registrar::Registrar(const std::string& coordinator, v1::RegisterRequest request)
    : impl_(new Impl{coordinator, std::move(request),
                     v1::Cluster::NewStub(
                         grpc::CreateChannel(coordinator, grpc::InsecureChannelCredentials()))}) {}

Registrar::~Registrar() = default;

absl::StatusOr<v1::RegisterResponse> Registrar::RegisterOnce(absl::Duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout)));
  v1::RegisterResponse resp;
  const grpc::Status st = impl_->stub->Register(&ctx, impl_->request, &resp);
  if (st.ok()) return resp;
  return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                      absl::StrCat("coordinator ", impl_->coordinator,
                                   " refused registration: ", st.error_message()));
}

absl::StatusOr<v1::RegisterResponse> Registrar::RegisterWithRetry(
    const std::function<bool()>& stopped, const RegisterRetry& retry) {
  absl::Duration backoff = retry.first_backoff;
  for (int attempt = 1;; ++attempt) {
    if (stopped()) return absl::CancelledError("registration stopped");
    absl::StatusOr<v1::RegisterResponse> resp = RegisterOnce(retry.rpc_timeout);
    if (resp.ok() || !RegistrationRetryable(resp.status())) return resp;
    // The first failures are expected while the coordinator starts; say so once, then rarely.
    if (attempt == 1 || attempt % 10 == 0) {
      spdlog::warn("register (attempt {}): {}; retrying", attempt,
                   std::string(resp.status().message()));
    }
    SleepUnlessStopped(backoff, stopped);
    backoff = std::min(backoff * 2, retry.max_backoff);
  }
}

absl::Status Registrar::KeepRegistered(absl::Duration interval,
                                       const std::function<bool()>& stopped) {
  bool reachable = true;
  while (true) {
    SleepUnlessStopped(interval, stopped);
    if (stopped()) return absl::OkStatus();
    absl::StatusOr<v1::RegisterResponse> resp = RegisterOnce(std::max(interval, absl::Seconds(2)));
    if (resp.ok()) {
      if (!reachable) {
        spdlog::info("registered again with {}: {}/{} ranks present", impl_->coordinator,
                     resp->registered(), resp->world_size());
      }
      reachable = true;
    } else if (RegistrationRetryable(resp.status())) {
      if (reachable)
        spdlog::warn("{}; will keep registering", std::string(resp.status().message()));
      reachable = false;
    } else {
      return resp.status();
    }
  }
}

}  // namespace tpserve
