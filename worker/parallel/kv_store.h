// The rendezvous key-value store (DESIGN.md §1): ranks publish their data-plane addresses (the
// Gloo pairs, later the NCCL unique id) and wait for each other's. The coordinator hosts it
// (coordinator/cluster/cluster_service.h); workers reach it through MakeRendezvousClient, tests
// use InMemoryKvStore. Keys are plain strings; values are opaque bytes.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tpserve {

class KvStore {
 public:
  virtual ~KvStore() = default;

  // Stores `value` under `key`, replacing any previous value, and wakes its waiters.
  virtual absl::Status Set(const std::string& key, std::string value) = 0;

  // The value of `key`, waiting up to `timeout` for it to be set; DEADLINE_EXCEEDED naming the
  // key when it does not appear in time.
  virtual absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) = 0;

  // Whether every key is set now (no waiting).
  virtual absl::StatusOr<bool> Check(const std::vector<std::string>& keys) = 0;

  // Waits up to `timeout` until every key is set; DEADLINE_EXCEEDED naming the missing keys.
  virtual absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout) = 0;
};

}  // namespace tpserve
