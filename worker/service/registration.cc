#include "worker/service/registration.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "spdlog/spdlog.h"
#include "tpserve/v1/worker.grpc.pb.h"

namespace tpserve {
namespace {

// Sleeps `d` in short slices so that a stop request is noticed promptly.
void SleepUnlessStopped(absl::Duration d, const std::function<bool()>& stopped) {
  const absl::Time wake = absl::Now() + d;
  while (absl::Now() < wake && !stopped()) {
    absl::SleepFor(std::min(absl::Milliseconds(50), wake - absl::Now()));
  }
}

}  // namespace

v1::DeviceInfo DeviceInfoOf(const DeviceDescription& d) {
  v1::DeviceInfo info;
  info.set_kind(d.kind);
  info.set_index(d.index);
  info.set_name(d.name);
  info.set_memory_total_bytes(d.memory_total_bytes);
  info.set_memory_free_bytes(d.memory_free_bytes);
  info.set_compute_units(d.compute_units);
  info.set_compute_capability(d.compute_capability);
  info.set_compute_dtype(d.compute_dtype);
  info.set_kv_cache_dtype(d.kv_cache_dtype);
  return info;
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
  absl::Mutex mu;
  grpc::ClientContext* in_flight ABSL_GUARDED_BY(mu) = nullptr;
  bool cancelled ABSL_GUARDED_BY(mu) = false;
};

Registrar::Registrar(const std::string& coordinator, v1::RegisterRequest request)
    : impl_(std::make_unique<Impl>()) {
  impl_->coordinator = coordinator;
  impl_->request = std::move(request);
  impl_->stub =
      v1::Cluster::NewStub(grpc::CreateChannel(coordinator, grpc::InsecureChannelCredentials()));
}

Registrar::~Registrar() = default;

void Registrar::Cancel() {
  absl::MutexLock lock(&impl_->mu);
  impl_->cancelled = true;
  if (impl_->in_flight != nullptr) impl_->in_flight->TryCancel();
}

absl::StatusOr<v1::RegisterResponse> Registrar::RegisterOnce(absl::Duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout)));
  v1::RegisterResponse resp;
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->cancelled) return absl::CancelledError("registration cancelled");
    impl_->in_flight = &ctx;
  }
  const grpc::Status st = impl_->stub->Register(&ctx, impl_->request, &resp);
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->in_flight = nullptr;
  }
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
