// The value model of the chat-template interpreter: the Python objects a Jinja template sees.
//
// Templates compare, print and serialise values the way Python does (`str(x)`, `repr(x)`,
// `json.dumps(x)`), so this type carries the Python distinctions that JSON lacks: int vs float,
// tuples, Undefined (a missing variable or key), callables (macros, bound methods, globals) and
// Jinja's mutable `namespace()` objects. Lists and dicts are immutable once built (transformers
// renders in an ImmutableSandboxedEnvironment), so they are shared, not copied.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace tpserve::chat {

class Value;

// Positional and keyword arguments of a call, in source order.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

using NativeFunction = std::function<absl::StatusOr<Value>(const CallArgs&)>;

// An insertion-ordered dict with string keys (Python dicts keep insertion order; chat templates
// only ever key by string).
class Dict {
 public:
  const Value* Find(std::string_view key) const;
  Value* Find(std::string_view key);
  void Set(std::string key, Value value);
  const std::vector<std::pair<std::string, Value>>& items() const { return items_; }
  size_t size() const { return items_.size(); }

 private:
  std::vector<std::pair<std::string, Value>> items_;
};

class Value {
 public:
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kCallable
  };

  Value() = default;  // Undefined.
  static Value Undefined(std::string hint = "") {
    Value v;
    v.str_ = std::make_shared<const std::string>(std::move(hint));
    return v;
  }
  static Value None() { return Value(Kind::kNone); }
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double d);
  static Value String(std::string s);
  static Value List(std::vector<Value> items, bool tuple = false);
  static Value MakeDict(Dict d);
  static Value Namespace(Dict d);
  static Value Callable(std::string name, NativeFunction fn);

  static Value FromJson(const nlohmann::json& j);
  static Value FromJson(const nlohmann::ordered_json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  // Python numbers: bool is an int subclass.
  bool is_number() const { return is_bool() || is_int() || is_float(); }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return kind_ == Kind::kList && tuple_; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return kind_ == Kind::kNamespace; }
  bool is_callable() const { return kind_ == Kind::kCallable; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return kind_ == Kind::kBool ? (b_ ? 1 : 0) : i_; }
  double as_double() const { return kind_ == Kind::kFloat ? d_ : static_cast<double>(as_int()); }
  const std::string& as_string() const { return *str_; }
  // Why an Undefined is undefined, e.g. "'x' is undefined"; used in error messages.
  std::string undefined_message() const;
  const std::vector<Value>& as_list() const { return *list_; }
  const Dict& as_dict() const { return *dict_; }
  // The namespace's attributes; mutable through every copy of this value.
  Dict& namespace_attrs() const { return *ns_; }
  const std::string& callable_name() const { return *str_; }
  absl::StatusOr<Value> Call(const CallArgs& args) const { return (*fn_)(args); }

  // Python truthiness; Undefined is falsy.
  bool Truthy() const;
  // Python type name as in error messages: 'int', 'str', 'list', 'dict', ...
  std::string TypeName() const;

 private:
  explicit Value(Kind k) : kind_(k) {}

  Kind kind_ = Kind::kUndefined;
  bool tuple_ = false;
  bool b_ = false;
  int64_t i_ = 0;
  double d_ = 0;
  std::shared_ptr<const std::string> str_;
  std::shared_ptr<const std::vector<Value>> list_;
  std::shared_ptr<const Dict> dict_;
  std::shared_ptr<Dict> ns_;
  std::shared_ptr<const NativeFunction> fn_;
};

// Python `str(v)`: what `{{ v }}` prints. Undefined prints as "".
std::string ToStr(const Value& v);
// Python `repr(v)`: how items print inside a printed list or dict.
std::string Repr(const Value& v);
// Python `repr(float)`: shortest round-trip digits, scientific outside [1e-4, 1e16).
std::string FloatRepr(double d);

struct JsonDumpOptions {
  std::string indent;  // Used only when has_indent.
  bool has_indent = false;
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;  // Escape every non-ASCII code point as \uXXXX (surrogate pairs).
};
// Python `json.dumps(v, ensure_ascii=False, ...)`, as transformers' `tojson` filter calls it.
absl::StatusOr<std::string> JsonDumps(const Value& v, const JsonDumpOptions& options);

// Python `==` (1 == 1.0 == True; Undefined equals only Undefined).
bool Equal(const Value& a, const Value& b);
// Python `<`: numbers, strings, lists; anything else is a TypeError.
absl::StatusOr<bool> Less(const Value& a, const Value& b);

}  // namespace tpserve::chat
