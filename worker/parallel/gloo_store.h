// gloo::rendezvous::Store over a KvStore, so Gloo's rendezvous goes through the coordinator (no
// shared filesystem, no Redis). Gloo expects a store to throw on failure: this adapter throws
// gloo::IoException with the KvStore's message, and GlooCommunicator catches it at its edge.
// Internal to the Gloo communicator and its tests; includes Gloo headers.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gloo/rendezvous/store.h"
#include "worker/parallel/kv_store.h"

namespace tpserve {

class GlooKvStoreAdapter final : public gloo::rendezvous::Store {
 public:
  // Every key is stored as `prefix + key`; `timeout` bounds get() and the untimed wait().
  GlooKvStoreAdapter(KvStore& store, std::string prefix, absl::Duration timeout)
      : store_(store), prefix_(std::move(prefix)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override;

 private:
  std::vector<std::string> Prefixed(const std::vector<std::string>& keys) const;

  KvStore& store_;
  const std::string prefix_;
  const absl::Duration timeout_;
};

}  // namespace tpserve
