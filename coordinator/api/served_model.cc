#include "coordinator/api/served_model.h"

#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/status_macros.h"
#include "common/format/dtype.h"

namespace tpserve {

int ServedModel::context_length() const {
  return files.config.max_position > 0 ? static_cast<int>(files.config.max_position) : 2048;
}

absl::StatusOr<std::unique_ptr<ServedModel>> LoadServedModel(const std::string& path) {
  namespace fs = std::filesystem;
  auto m = std::make_unique<ServedModel>();
  m->path = path;
  ASSIGN_OR_RETURN(m->files, OpenModelFiles(path));
  fs::path p(path);
  m->name = (p.has_filename() ? p.filename() : p.parent_path().filename()).string();
  std::set<std::string> dtypes;
  for (const std::string& name : m->files.source->Names()) {
    if (const TensorInfo* t = m->files.source->Find(name)) dtypes.insert(DTypeName(t->dtype));
  }
  m->weight_dtype = absl::StrJoin(dtypes, "+");
  std::error_code ec;
  if (m->files.gguf != nullptr) {
    m->format = "gguf";
    ASSIGN_OR_RETURN(m->tokenizer, Tokenizer::FromGguf(*m->files.gguf));
  } else {
    m->format = "safetensors";
    if (fs::exists(p / "tokenizer.json", ec)) {
      ASSIGN_OR_RETURN(m->tokenizer, Tokenizer::FromHfFolder(path));
    }
  }
  if (m->tokenizer != nullptr && !m->tokenizer->chat_template().empty()) {
    absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(m->tokenizer->chat_template());
    if (!t.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": chat template: ", t.status().message()));
    }
    m->chat_template = std::move(*t);
  }
  return m;
}

absl::StatusOr<std::vector<int32_t>> EncodeChat(const ServedModel& model,
                                                const nlohmann::json& messages,
                                                bool add_generation_prompt, std::string* rendered) {
  if (model.tokenizer == nullptr || !model.chat_template.has_value()) {
    return absl::FailedPreconditionError(
        "prompt.chat: this model has no chat template; send prompt.text or prompt.tokens");
  }
  ASSIGN_OR_RETURN(std::string text,
                   RenderChat(*model.chat_template, messages, add_generation_prompt,
                              model.tokenizer->bos_token(), model.tokenizer->eos_token()));
  ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                   model.tokenizer->Encode(text, /*add_special_tokens=*/false));
  if (rendered != nullptr) *rendered = std::move(text);
  return ids;
}

}  // namespace tpserve
