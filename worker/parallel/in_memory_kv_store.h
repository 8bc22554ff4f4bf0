// A KvStore in this process's memory: the store the coordinator serves to its workers, and the
// store of tests that run ranks as threads. Thread-safe.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "worker/parallel/kv_store.h"

namespace tpserve {

class InMemoryKvStore final : public KvStore {
 public:
  absl::Status Set(const std::string& key, std::string value) override;
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override;
  absl::StatusOr<bool> Check(const std::vector<std::string>& keys) override;
  absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout) override;

  // Removes every key that starts with `prefix` (an old group generation's rendezvous data);
  // returns how many were removed.
  int DeletePrefix(const std::string& prefix);

  // Number of keys held.
  int size() const;

 private:
  absl::Status WaitLocked(const std::vector<std::string>& keys, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AllSetLocked(const std::vector<std::string>& keys) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, std::string> data_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tpserve
