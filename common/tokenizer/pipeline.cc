#include "common/tokenizer/pipeline.h"

#include "common/base/status_macros.h"

namespace tpserve::tok {

absl::StatusOr<std::unique_ptr<Pipeline>> PipelineFromJson(const Json& j) {
  if (!j.is_object()) return JsonFieldError("(root)", "expected an object");
  auto p = std::make_unique<Pipeline>();
  auto present = [&](const char* key) { return j.contains(key) && !j[key].is_null(); };
  if (present("normalizer")) {
    ASSIGN_OR_RETURN(p->normalizer, NormalizerFromJson(j["normalizer"], "normalizer"));
  }
  if (present("pre_tokenizer")) {
    ASSIGN_OR_RETURN(p->pre_tokenizer, PreTokenizerFromJson(j["pre_tokenizer"], "pre_tokenizer"));
  }
  ASSIGN_OR_RETURN(const Json* model, JsonMember(j, "model", ""));
  ASSIGN_OR_RETURN(p->model, ModelFromJson(*model, "model"));
  if (present("post_processor")) {
    ASSIGN_OR_RETURN(p->post_processor,
                     PostProcessorFromJson(j["post_processor"], "post_processor"));
  }
  if (present("decoder")) {
    ASSIGN_OR_RETURN(p->decoder, DecoderFromJson(j["decoder"], "decoder"));
  }
  if (present("added_tokens")) {
    const Json& list = j["added_tokens"];
    if (!list.is_array()) return JsonFieldError("added_tokens", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) {
      std::string path = Cat("added_tokens[", i, "]");
      const Json& t = list[i];
      AddedToken token;
      ASSIGN_OR_RETURN(token.content, JsonString(t, "content", path));
      ASSIGN_OR_RETURN(int64_t id, JsonIntOr(t, "id", path, -1));
      if (id < 0 || id > INT32_MAX)
        return JsonFieldError(JsonPath(path, "id"), "missing or negative");
      token.id = static_cast<int32_t>(id);
      ASSIGN_OR_RETURN(token.single_word, JsonBoolOr(t, "single_word", path, false));
      ASSIGN_OR_RETURN(token.lstrip, JsonBoolOr(t, "lstrip", path, false));
      ASSIGN_OR_RETURN(token.rstrip, JsonBoolOr(t, "rstrip", path, false));
      ASSIGN_OR_RETURN(token.special, JsonBoolOr(t, "special", path, false));
      ASSIGN_OR_RETURN(token.normalized, JsonBoolOr(t, "normalized", path, !token.special));
      if (token.content.empty()) return JsonFieldError(JsonPath(path, "content"), "empty");
      p->added.Add(std::move(token));
    }
  }
  p->added.Build(p->normalizer.get());
  return p;
}

}  // namespace tpserve::tok
