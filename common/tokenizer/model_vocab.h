// The id <-> token table shared by the models.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/tokenizer/json_util.h"
#include "common/tokenizer/str_util.h"

namespace tpserve::tok {

class Vocab {
 public:
  // Reads {"token": id, ...}; ids must be non-negative and unique.
  static absl::StatusOr<Vocab> FromJson(const Json& j, std::string_view path);

  std::optional<int32_t> Find(std::string_view token) const {
    auto it = ids_.find(AbslView(token));
    if (it == ids_.end()) return std::nullopt;
    return it->second;
  }
  const std::string* Token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= tokens_.size() || !present_[id]) return nullptr;
    return &tokens_[id];
  }
  int32_t size() const { return static_cast<int32_t>(tokens_.size()); }

 private:
  absl::flat_hash_map<std::string, int32_t> ids_;
  std::vector<std::string> tokens_;  // by id
  std::vector<bool> present_;        // ids may have gaps
};

}  // namespace tpserve::tok
