// A worker announcing itself to the coordinator (worker.proto Cluster.Register). Workers may
// start before the coordinator listens, and a restarted rank may register before the coordinator
// has noticed its predecessor died, so the first registration retries with backoff. After it, the
// worker registers again periodically (the same incarnation: a no-op for a coordinator that knows
// it), so a restarted coordinator, or one that marked this live rank lost, gets it back.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tpserve/v1/worker.pb.h"
#include "worker/service/device.h"

namespace tpserve {

// Register's DeviceInfo for what this process computes on (device.h).
v1::DeviceInfo DeviceInfoOf(const DeviceDescription& d);

// "host:pid:start-time-ns": unique per process start.
std::string MakeIncarnation();

struct RegisterRetry {
  absl::Duration first_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  absl::Duration rpc_timeout = absl::Seconds(10);
};

// UNAVAILABLE, DEADLINE_EXCEEDED (coordinator not up / slow) and ALREADY_EXISTS (the previous
// incarnation not yet marked lost) may succeed later; anything else (a wrong --tp, model or
// version) will not.
bool RegistrationRetryable(const absl::Status& st);

class Registrar {
 public:
  // `coordinator` is the Cluster service's "host:port".
  Registrar(const std::string& coordinator, v1::RegisterRequest request);
  ~Registrar();

  // Cancels the call in flight and makes every later one return CANCELLED at once (any thread;
  // a stopping worker must not wait out an RPC to a coordinator that is stopping too).
  void Cancel();

  // One Register call.
  absl::StatusOr<v1::RegisterResponse> RegisterOnce(absl::Duration timeout);

  // Calls Register until it is accepted, retrying retryable errors with exponential backoff and
  // returning others at once (naming the coordinator). `stopped()` is polled between attempts;
  // CANCELLED when it returns true.
  absl::StatusOr<v1::RegisterResponse> RegisterWithRetry(const std::function<bool()>& stopped,
                                                         const RegisterRetry& retry = {});

  // After a first success: registers again every `interval` until `stopped()`, logging when the
  // coordinator goes away and comes back. Returns the first non-retryable error, or OK once
  // stopped.
  absl::Status KeepRegistered(absl::Duration interval, const std::function<bool()>& stopped);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tpserve
