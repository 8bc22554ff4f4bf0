#include "worker/parallel/in_memory_kv_store.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/status_macros.h"

namespace tpserve {

absl::Status InMemoryKvStore::Set(const std::string& key, std::string value) {
  if (key.empty()) return absl::InvalidArgumentError("store: empty key");
  absl::MutexLock lock(&mu_);
  data_[key] = std::move(value);
  return absl::OkStatus();
}

absl::StatusOr<std::string> InMemoryKvStore::Get(const std::string& key, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(WaitLocked({key}, timeout));
  return data_.at(key);
}

absl::StatusOr<bool> InMemoryKvStore::Check(const std::vector<std::string>& keys) {
  absl::ReaderMutexLock lock(&mu_);
  return AllSetLocked(keys);
}

absl::Status InMemoryKvStore::Wait(const std::vector<std::string>& keys, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  return WaitLocked(keys, timeout);
}

absl::Status InMemoryKvStore::WaitLocked(const std::vector<std::string>& keys,
                                         absl::Duration timeout) {
  auto all_set = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return AllSetLocked(keys); };
  if (mu_.AwaitWithTimeout(absl::Condition(&all_set), timeout)) return absl::OkStatus();
  std::vector<std::string> missing;
  for (const std::string& k : keys) {
    if (!data_.contains(k)) missing.push_back(k);
  }
  return absl::DeadlineExceededError(absl::StrCat("store: keys not set within ",
                                                  absl::FormatDuration(timeout), ": ",
                                                  absl::StrJoin(missing, ", ")));
}

int InMemoryKvStore::DeletePrefix(const std::string& prefix) {
  absl::MutexLock lock(&mu_);
  int removed = 0;
  for (auto it = data_.lower_bound(prefix); it != data_.end() && it->first.starts_with(prefix);) {
    it = data_.erase(it);
    ++removed;
  }
  return removed;
}

int InMemoryKvStore::size() const {
  absl::ReaderMutexLock lock(&mu_);
  return static_cast<int>(data_.size());
}

bool InMemoryKvStore::AllSetLocked(const std::vector<std::string>& keys) const {
  for (const std::string& k : keys) {
    if (!data_.contains(k)) return false;
  }
  return true;
}

}  // namespace tpserve
