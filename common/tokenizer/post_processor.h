// Post-processors of tokenizer.json: TemplateProcessing, BertProcessing, RobertaProcessing,
// ByteLevel (offsets only: no change to ids) and Sequence. They add the special tokens around one
// sequence or a pair.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/json_util.h"

namespace tpserve::tok {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // `b` is null for a single sequence. Returns the final ids.
  virtual std::vector<int32_t> Process(std::vector<int32_t> a,
                                       const std::vector<int32_t>* b) const = 0;
};

absl::StatusOr<std::unique_ptr<PostProcessor>> PostProcessorFromJson(const Json& j,
                                                                     std::string_view path);

}  // namespace tpserve::tok
