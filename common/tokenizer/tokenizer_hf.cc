// Loading from tokenizer.json and from a Hugging Face model folder.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/base/status_macros.h"
#include "common/tokenizer/str_util.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/tokenizer_builder.h"

namespace tpserve {
namespace {

using tok::Json;

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(tok::Cat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<Json> ParseJson(std::string_view text, std::string_view origin) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(tok::Cat(origin, ": not valid JSON"));
  return j;
}

// A special token in tokenizer_config.json / special_tokens_map.json: "<s>" or {"content": "<s>"}.
std::string TokenString(const Json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string()) {
    return j["content"].get<std::string>();
  }
  return std::string();
}

void ReadTokenizerConfig(const Json& cfg, SpecialTokenInfo* info) {
  if (!cfg.is_object()) return;
  if (cfg.contains("bos_token")) info->bos_token = TokenString(cfg["bos_token"]);
  if (cfg.contains("eos_token")) info->eos_token = TokenString(cfg["eos_token"]);
  if (cfg.contains("chat_template")) {
    const Json& ct = cfg["chat_template"];
    if (ct.is_string()) {
      info->chat_template = ct.get<std::string>();
    } else if (ct.is_array()) {  // [{"name": "default", "template": "..."}, ...]
      for (const Json& e : ct) {
        if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
            e["template"].is_string()) {
          info->chat_template = e["template"].get<std::string>();
        }
      }
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromTokenizerJsonText(
    std::string_view json, std::string_view origin) {
  ASSIGN_OR_RETURN(Json j, ParseJson(json, origin));
  auto pipeline = tok::PipelineFromJson(j);
  if (!pipeline.ok()) {
    return absl::Status(pipeline.status().code(),
                        tok::Cat(origin, ": ", pipeline.status().message()));
  }
  return TokenizerBuilder::Make(std::move(*pipeline), SpecialTokenInfo{});
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromTokenizerJson(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return FromTokenizerJsonText(text, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromHfFolder(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path root(dir);
  ASSIGN_OR_RETURN(std::string text, ReadFile((root / "tokenizer.json").string()));
  ASSIGN_OR_RETURN(Json j, ParseJson(text, (root / "tokenizer.json").string()));
  auto pipeline = tok::PipelineFromJson(j);
  if (!pipeline.ok()) {
    return absl::Status(pipeline.status().code(), tok::Cat((root / "tokenizer.json").string(), ": ",
                                                           pipeline.status().message()));
  }
  SpecialTokenInfo info;
  // special_tokens_map.json first; tokenizer_config.json overrides it.
  for (const char* name : {"special_tokens_map.json", "tokenizer_config.json"}) {
    fs::path path = root / name;
    if (!fs::exists(path)) continue;
    ASSIGN_OR_RETURN(std::string cfg_text, ReadFile(path.string()));
    ASSIGN_OR_RETURN(Json cfg, ParseJson(cfg_text, path.string()));
    ReadTokenizerConfig(cfg, &info);
  }
  if (fs::path path = root / "chat_template.jinja"; fs::exists(path)) {
    ASSIGN_OR_RETURN(info.chat_template, ReadFile(path.string()));
  }
  if (fs::path path = root / "generation_config.json"; fs::exists(path)) {
    ASSIGN_OR_RETURN(std::string gen_text, ReadFile(path.string()));
    ASSIGN_OR_RETURN(Json gen, ParseJson(gen_text, path.string()));
    if (gen.is_object() && gen.contains("eos_token_id")) {
      const Json& e = gen["eos_token_id"];
      if (e.is_number_integer()) info.eos_ids.push_back(e.get<int32_t>());
      if (e.is_array()) {
        for (const Json& x : e)
          if (x.is_number_integer()) info.eos_ids.push_back(x.get<int32_t>());
      }
    }
    if (gen.is_object() && gen.contains("bos_token_id") &&
        gen["bos_token_id"].is_number_integer() && info.bos_token.empty()) {
      info.bos_id = gen["bos_token_id"].get<int32_t>();
    }
  }
  return TokenizerBuilder::Make(std::move(*pipeline), info);
}

}  // namespace tpserve
