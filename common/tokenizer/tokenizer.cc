#include "common/tokenizer/tokenizer.h"

#include <algorithm>

#include "common/base/status_macros.h"
#include "common/tokenizer/str_util.h"
#include "common/tokenizer/tokenizer_builder.h"
#include "common/tokenizer/unicode.h"

namespace tpserve {

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> TokenizerBuilder::Make(std::unique_ptr<tok::Pipeline> pipeline,
                                                  const SpecialTokenInfo& info) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->pipeline_ = std::move(pipeline);
  t->chat_template_ = info.chat_template;
  t->bos_token_ = info.bos_token;
  t->eos_token_ = info.eos_token;
  if (info.bos_id) {
    t->bos_id_ = *info.bos_id;
    if (t->bos_token_.empty()) {
      if (auto s = t->IdToToken(*info.bos_id); s.ok()) t->bos_token_ = *s;
    }
  } else if (!info.bos_token.empty()) {
    t->bos_id_ = t->TokenToId(info.bos_token).value_or(-1);
  }
  auto add_eos = [&](int32_t id) {
    if (id >= 0 && std::find(t->eos_ids_.begin(), t->eos_ids_.end(), id) == t->eos_ids_.end()) {
      t->eos_ids_.push_back(id);
    }
  };
  if (!info.eos_token.empty()) add_eos(t->TokenToId(info.eos_token).value_or(-1));
  for (int32_t id : info.eos_ids) add_eos(id);
  if (t->eos_token_.empty() && !t->eos_ids_.empty()) {
    if (auto s = t->IdToToken(t->eos_ids_[0]); s.ok()) t->eos_token_ = *s;
  }
  return t;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::EncodeOne(std::string_view raw) const {
  const tok::Pipeline& p = *pipeline_;
  std::string sanitized;
  std::string_view text = raw;
  if (!tok::IsValidUtf8(raw)) {
    sanitized = tok::SanitizeUtf8(raw);
    text = sanitized;
  }
  std::vector<int32_t> ids;
  std::vector<tok::Segment> raw_segments, norm_segments;
  std::vector<tok::Piece> pieces;
  p.added.Split(text, /*normalized_pass=*/false, &raw_segments);
  for (const tok::Segment& seg : raw_segments) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    std::string normalized(seg.text);
    if (p.normalizer) p.normalizer->Normalize(&normalized);
    norm_segments.clear();
    p.added.Split(normalized, /*normalized_pass=*/true, &norm_segments);
    for (const tok::Segment& ns : norm_segments) {
      if (ns.id >= 0) {
        ids.push_back(ns.id);
        continue;
      }
      pieces.clear();
      pieces.push_back(tok::Piece{std::string(ns.text), seg.offset + ns.offset});
      if (p.pre_tokenizer) p.pre_tokenizer->PreTokenize(&pieces);
      for (const tok::Piece& piece : pieces) {
        if (!piece.text.empty()) p.model->Tokenize(piece.text, &ids);
      }
    }
  }
  return ids;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       bool add_special_tokens) const {
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, EncodeOne(text));
  if (add_special_tokens && pipeline_->post_processor) {
    return pipeline_->post_processor->Process(std::move(ids), nullptr);
  }
  return ids;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::EncodePair(std::string_view a, std::string_view b,
                                                           bool add_special_tokens) const {
  ASSIGN_OR_RETURN(std::vector<int32_t> ia, EncodeOne(a));
  ASSIGN_OR_RETURN(std::vector<int32_t> ib, EncodeOne(b));
  if (add_special_tokens && pipeline_->post_processor) {
    return pipeline_->post_processor->Process(std::move(ia), &ib);
  }
  ia.insert(ia.end(), ib.begin(), ib.end());
  return ia;
}

absl::StatusOr<std::string> Tokenizer::Decode(std::span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  const tok::Pipeline& p = *pipeline_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    int32_t id = ids[i];
    if (const tok::AddedToken* added = p.added.FindById(id)) {
      if (!(skip_special_tokens && added->special)) tokens.push_back(added->content);
      continue;
    }
    const std::string* token = p.model->IdToToken(id);
    if (token == nullptr) {
      return absl::InvalidArgumentError(tok::Cat("cannot decode token id ", id, " at position ", i,
                                                 ": not in the vocabulary (ids are 0..",
                                                 vocab_size() - 1, ")"));
    }
    tokens.push_back(*token);
  }
  if (p.decoder) p.decoder->DecodeChain(&tokens);
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0 && !p.decoder) out.push_back(' ');
    out += tokens[i];
  }
  return out;
}

int32_t Tokenizer::vocab_size() const {
  return std::max(pipeline_->model->vocab_size(), pipeline_->added.max_id() + 1);
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (const tok::AddedToken* added = pipeline_->added.FindByContent(token)) return added->id;
  return pipeline_->model->TokenToId(token);
}

absl::StatusOr<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (const tok::AddedToken* added = pipeline_->added.FindById(id)) return added->content;
  if (const std::string* token = pipeline_->model->IdToToken(id)) return *token;
  return absl::InvalidArgumentError(
      tok::Cat("token id ", id, " is not in the vocabulary (ids are 0..", vocab_size() - 1, ")"));
}

bool Tokenizer::IsSpecial(int32_t id) const {
  const tok::AddedToken* added = pipeline_->added.FindById(id);
  return added != nullptr && added->special;
}

}  // namespace tpserve
