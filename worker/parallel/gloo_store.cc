#include "worker/parallel/gloo_store.h"

#include <string>

#include "gloo/common/error.h"

namespace tpserve {
namespace {

[[noreturn]] void Throw(const absl::Status& status) {
  throw gloo::IoException(std::string(status.message()));
}

}  // namespace

void GlooKvStoreAdapter::set(const std::string& key, const std::vector<char>& data) {
  absl::Status st = store_.Set(prefix_ + key, std::string(data.begin(), data.end()));
  if (!st.ok()) Throw(st);
}

std::vector<char> GlooKvStoreAdapter::get(const std::string& key) {
  absl::StatusOr<std::string> value = store_.Get(prefix_ + key, timeout_);
  if (!value.ok()) Throw(value.status());
  return std::vector<char>(value->begin(), value->end());
}

void GlooKvStoreAdapter::wait(const std::vector<std::string>& keys) {
  absl::Status st = store_.Wait(Prefixed(keys), timeout_);
  if (!st.ok()) Throw(st);
}

void GlooKvStoreAdapter::wait(const std::vector<std::string>& keys,
                              const std::chrono::milliseconds& timeout) {
  absl::Status st = store_.Wait(Prefixed(keys), absl::FromChrono(timeout));
  if (!st.ok()) Throw(st);
}

std::vector<std::string> GlooKvStoreAdapter::Prefixed(const std::vector<std::string>& keys) const {
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const std::string& k : keys) out.push_back(prefix_ + k);
  return out;
}

}  // namespace tpserve
