#include "common/tokenizer/post_processor.h"

#include <map>
#include <string>

#include "common/base/status_macros.h"

namespace tpserve::tok {
namespace {

// One template item: a special token's ids, or the ids of sequence A (0) / B (1).
struct Item {
  int sequence = -1;  // 0 = A, 1 = B, -1 = special
  std::vector<int32_t> ids;
};

class TemplateProcessor : public PostProcessor {
 public:
  TemplateProcessor(std::vector<Item> single, std::vector<Item> pair)
      : single_(std::move(single)), pair_(std::move(pair)) {}
  std::vector<int32_t> Process(std::vector<int32_t> a,
                               const std::vector<int32_t>* b) const override {
    std::vector<int32_t> out;
    out.reserve(a.size() + (b ? b->size() : 0) + 4);
    for (const Item& item : b == nullptr ? single_ : pair_) {
      if (item.sequence == 0) {
        out.insert(out.end(), a.begin(), a.end());
      } else if (item.sequence == 1) {
        if (b != nullptr) out.insert(out.end(), b->begin(), b->end());
      } else {
        out.insert(out.end(), item.ids.begin(), item.ids.end());
      }
    }
    return out;
  }

 private:
  std::vector<Item> single_, pair_;
};

class IdentityProcessor : public PostProcessor {
 public:
  std::vector<int32_t> Process(std::vector<int32_t> a,
                               const std::vector<int32_t>* b) const override {
    if (b != nullptr) a.insert(a.end(), b->begin(), b->end());
    return a;
  }
};

class SequenceProcessor : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> parts)
      : parts_(std::move(parts)) {}
  std::vector<int32_t> Process(std::vector<int32_t> a,
                               const std::vector<int32_t>* b) const override {
    // Only one processor of a sequence adds tokens in practice (ByteLevel + Template); a pair is
    // merged by the first and the result passed on as a single sequence.
    bool first = true;
    for (const auto& p : parts_) {
      a = p->Process(std::move(a), first ? b : nullptr);
      first = false;
    }
    return a;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

absl::StatusOr<std::vector<Item>> TemplateFromJson(const Json& list, const Json& specials,
                                                   std::string_view path) {
  if (!list.is_array()) return JsonFieldError(path, "expected an array");
  std::vector<Item> items;
  for (size_t i = 0; i < list.size(); ++i) {
    std::string item_path = Cat(path, "[", i, "]");
    const Json& e = list[i];
    if (e.is_object() && e.contains("Sequence")) {
      ASSIGN_OR_RETURN(std::string id, JsonString(e["Sequence"], "id", item_path + ".Sequence"));
      if (id != "A" && id != "B")
        return JsonFieldError(item_path + ".Sequence.id", "expected A or B");
      items.push_back(Item{id == "A" ? 0 : 1, {}});
    } else if (e.is_object() && e.contains("SpecialToken")) {
      ASSIGN_OR_RETURN(std::string id,
                       JsonString(e["SpecialToken"], "id", item_path + ".SpecialToken"));
      if (!specials.is_object() || !specials.contains(id)) {
        return JsonFieldError(item_path,
                              Cat("special token \"", id, "\" is not listed in special_tokens"));
      }
      const Json& ids = specials[id]["ids"];
      if (!ids.is_array())
        return JsonFieldError(Cat("special_tokens.", id, ".ids"), "expected an array");
      Item item;
      for (const Json& x : ids) {
        if (!x.is_number_integer()) {
          return JsonFieldError(Cat("special_tokens.", id, ".ids"), "expected integers");
        }
        item.ids.push_back(x.get<int32_t>());
      }
      items.push_back(std::move(item));
    } else {
      return JsonFieldError(item_path, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  return items;
}

// BertProcessing / RobertaProcessing: {"cls": ["[CLS]", 101], "sep": ["[SEP]", 102]}.
absl::StatusOr<int32_t> TokenPairId(const Json& j, std::string_view key, std::string_view path) {
  ASSIGN_OR_RETURN(const Json* m, JsonMember(j, key, path));
  if (!m->is_array() || m->size() != 2 || !(*m)[1].is_number_integer()) {
    return JsonFieldError(JsonPath(path, key), "expected [token, id]");
  }
  return (*m)[1].get<int32_t>();
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostProcessor>> PostProcessorFromJson(const Json& j,
                                                                     std::string_view path) {
  ASSIGN_OR_RETURN(std::string type, JsonString(j, "type", path));
  if (type == "ByteLevel") return std::make_unique<IdentityProcessor>();
  if (type == "TemplateProcessing") {
    const Json specials = j.contains("special_tokens") ? j["special_tokens"] : Json::object();
    ASSIGN_OR_RETURN(const Json* single, JsonMember(j, "single", path));
    ASSIGN_OR_RETURN(auto single_items,
                     TemplateFromJson(*single, specials, JsonPath(path, "single")));
    std::vector<Item> pair_items;
    if (j.contains("pair") && !j["pair"].is_null()) {
      ASSIGN_OR_RETURN(pair_items, TemplateFromJson(j["pair"], specials, JsonPath(path, "pair")));
    } else {
      pair_items = single_items;
      pair_items.push_back(Item{1, {}});
    }
    return std::make_unique<TemplateProcessor>(std::move(single_items), std::move(pair_items));
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    ASSIGN_OR_RETURN(int32_t cls, TokenPairId(j, "cls", path));
    ASSIGN_OR_RETURN(int32_t sep, TokenPairId(j, "sep", path));
    std::vector<Item> single = {Item{-1, {cls}}, Item{0, {}}, Item{-1, {sep}}};
    std::vector<Item> pair = single;
    if (type == "RobertaProcessing") pair.push_back(Item{-1, {sep}});  // <s> A </s></s> B </s>
    pair.push_back(Item{1, {}});
    pair.push_back(Item{-1, {sep}});
    return std::make_unique<TemplateProcessor>(std::move(single), std::move(pair));
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const Json* list, JsonMember(j, "processors", path));
    if (!list->is_array()) return JsonFieldError(JsonPath(path, "processors"), "expected an array");
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(auto part,
                       PostProcessorFromJson((*list)[i], Cat(path, ".processors[", i, "]")));
      // ByteLevel only adjusts offsets; dropping it lets a pair reach the template intact.
      if (dynamic_cast<IdentityProcessor*>(part.get()) == nullptr) parts.push_back(std::move(part));
    }
    return std::make_unique<SequenceProcessor>(std::move(parts));
  }
  return JsonFieldError(JsonPath(path, "type"),
                        Cat("post-processor type \"", type,
                            "\" is not supported (supported: TemplateProcessing, "
                            "BertProcessing, RobertaProcessing, ByteLevel, Sequence)"));
}

}  // namespace tpserve::tok
