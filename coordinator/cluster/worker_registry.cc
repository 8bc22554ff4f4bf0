#include "coordinator/cluster/worker_registry.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace tpserve {

WorkerRegistry::WorkerRegistry(int world_size, std::string model, std::string version)
    : world_size_(world_size),
      model_(std::move(model)),
      version_(std::move(version)),
      slots_(world_size > 0 ? world_size : 0) {}

absl::StatusOr<RegisterOutcome> WorkerRegistry::Register(const WorkerInfo& info) {
  if (info.rank < 0 || info.rank >= world_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("register: rank ", info.rank, " is outside this group of ", world_size_,
                     " ranks (valid ranks are 0..", world_size_ - 1, "); start the worker with ",
                     "--rank below the coordinator's --tp"));
  }
  if (info.incarnation.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("register: rank ", info.rank, " sent no incarnation id"));
  }
  if (info.device_kind != "cpu" && info.device_kind != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("register: rank ", info.rank,
                                                   " announces device kind '", info.device_kind,
                                                   "'; expected 'cpu' or 'cuda'"));
  }
  if (info.world_size != world_size_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "register: rank ", info.rank, " was started for a group of ", info.world_size,
        " ranks but the coordinator runs ", world_size_, "; restart it with the same --tp"));
  }
  if (!info.model.empty() && !model_.empty() && info.model != model_) {
    return absl::FailedPreconditionError(
        absl::StrCat("register: rank ", info.rank, " was started for model '", info.model,
                     "' but the coordinator serves '", model_, "'"));
  }
  if (!info.version.empty() && !version_.empty() && info.version != version_) {
    return absl::FailedPreconditionError(absl::StrCat("register: rank ", info.rank,
                                                      " runs tpserve ", info.version,
                                                      " but the coordinator runs ", version_));
  }

  absl::MutexLock lock(&mu_);
  Slot& slot = slots_[info.rank];
  RegisterOutcome outcome;
  if (slot.info.has_value() && !slot.lost) {
    if (slot.info->incarnation != info.incarnation) {
      return absl::AlreadyExistsError(absl::StrCat(
          "register: rank ", info.rank, " is already held by worker ", slot.info->incarnation,
          " at ", slot.info->control_address, "; stop the duplicate (or wait until the ",
          "coordinator notices the old worker is gone)"));
    }
    slot.info = info;  // a retried registration: refresh, nothing else changes
    outcome.registered = RegisteredLocked();
    outcome.complete = outcome.registered == world_size_;
    return outcome;
  }
  outcome.replaced_lost = slot.lost;
  slot.info = info;
  slot.lost = false;
  outcome.registered = RegisteredLocked();
  outcome.complete = outcome.registered == world_size_;
  if (outcome.complete) ++generation_;
  return outcome;
}

absl::Status WorkerRegistry::MarkLost(int rank) {
  absl::MutexLock lock(&mu_);
  if (rank < 0 || rank >= world_size_ || !slots_[rank].info.has_value() || slots_[rank].lost) {
    return absl::NotFoundError(absl::StrCat("registry: rank ", rank, " holds no live worker"));
  }
  slots_[rank].lost = true;
  return absl::OkStatus();
}

int WorkerRegistry::RegisteredLocked() const {
  int n = 0;
  for (const Slot& s : slots_) n += (s.info.has_value() && !s.lost) ? 1 : 0;
  return n;
}

int WorkerRegistry::registered() const {
  absl::ReaderMutexLock lock(&mu_);
  return RegisteredLocked();
}

bool WorkerRegistry::complete() const {
  absl::ReaderMutexLock lock(&mu_);
  return world_size_ > 0 && RegisteredLocked() == world_size_;
}

int64_t WorkerRegistry::generation() const {
  absl::ReaderMutexLock lock(&mu_);
  return generation_;
}

std::vector<int> WorkerRegistry::missing_ranks() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<int> out;
  for (int r = 0; r < world_size_; ++r) {
    if (!slots_[r].info.has_value() || slots_[r].lost) out.push_back(r);
  }
  return out;
}

std::optional<WorkerInfo> WorkerRegistry::worker(int rank) const {
  absl::ReaderMutexLock lock(&mu_);
  if (rank < 0 || rank >= world_size_ || slots_[rank].lost) return std::nullopt;
  return slots_[rank].info;
}

std::vector<WorkerInfo> WorkerRegistry::workers() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<WorkerInfo> out;
  for (const Slot& s : slots_) {
    if (s.info.has_value() && !s.lost) out.push_back(*s.info);
  }
  return out;
}

}  // namespace tpserve
