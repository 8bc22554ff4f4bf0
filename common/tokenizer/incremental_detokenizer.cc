#include "common/base/status_macros.h"
#include "common/tokenizer/tokenizer.h"

namespace tpserve {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

bool EndsWithReplacement(std::string_view s) {
  return s.size() >= 3 && s.substr(s.size() - 3) == kReplacementChar;
}

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_(skip_special_tokens) {}

absl::StatusOr<std::string> IncrementalDetokenizer::Push(int32_t id) {
  RETURN_IF_ERROR(tok_.IdToToken(id).status());
  ids_.push_back(id);
  return Advance(/*final=*/false);
}

// Decodes the window ids_[prefix_start_, end) and returns what it adds to the context
// ids_[prefix_start_, read_start_). The context must decode to non-empty text, otherwise
// position-dependent decoder steps (strip a leading space, drop the first "▁") would apply to the
// new ids instead of the context; so the window grows to the left until it does.
absl::StatusOr<std::string> IncrementalDetokenizer::Advance(bool final) {
  std::span<const int32_t> all(ids_);
  ASSIGN_OR_RETURN(
      std::string context,
      tok_.Decode(all.subspan(prefix_start_, read_start_ - prefix_start_), skip_special_));
  while (context.empty() && prefix_start_ > 0) {
    --prefix_start_;
    ASSIGN_OR_RETURN(context, tok_.Decode(all.subspan(prefix_start_, read_start_ - prefix_start_),
                                          skip_special_));
  }
  ASSIGN_OR_RETURN(std::string window, tok_.Decode(all.subspan(prefix_start_), skip_special_));
  // A trailing U+FFFD is usually a character whose remaining bytes are still to come.
  if (!final && EndsWithReplacement(window)) return std::string();
  std::string delta;
  if (window.size() >= context.size() && window.compare(0, context.size(), context) == 0) {
    delta = window.substr(context.size());
  } else {
    // The decoder changed earlier text (not seen with the supported decoders): fall back to the
    // full decode and emit whatever extends what was already emitted.
    ASSIGN_OR_RETURN(std::string full, tok_.Decode(all, skip_special_));
    if (full.size() >= emitted_.size() && full.compare(0, emitted_.size(), emitted_) == 0) {
      delta = full.substr(emitted_.size());
    }
  }
  prefix_start_ = read_start_;
  read_start_ = ids_.size();
  emitted_ += delta;
  return delta;
}

std::string IncrementalDetokenizer::Flush() {
  if (read_start_ == ids_.size()) return std::string();
  auto delta = Advance(/*final=*/true);
  return delta.ok() ? *delta : std::string();
}

}  // namespace tpserve
