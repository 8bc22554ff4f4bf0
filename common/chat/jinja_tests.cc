// Jinja tests (`x is defined`, `x is divisibleby 3`, ...): the builtin set of jinja2 3.1.

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "common/base/status_macros.h"
#include "common/chat/builtins.h"
#include "common/chat/text_util.h"

namespace tpserve::chat {
namespace {

using Test = absl::StatusOr<bool> (*)(const Value&, const CallArgs&);

absl::Status Error(std::string_view message) {
  return absl::InvalidArgumentError(std::string(message));
}

absl::StatusOr<bool> TDefined(const Value& v, const CallArgs&) { return !v.is_undefined(); }
absl::StatusOr<bool> TUndefined(const Value& v, const CallArgs&) { return v.is_undefined(); }
absl::StatusOr<bool> TNone(const Value& v, const CallArgs&) { return v.is_none(); }
absl::StatusOr<bool> TBoolean(const Value& v, const CallArgs&) { return v.is_bool(); }
absl::StatusOr<bool> TTrue(const Value& v, const CallArgs&) { return v.is_bool() && v.as_bool(); }
absl::StatusOr<bool> TFalse(const Value& v, const CallArgs&) { return v.is_bool() && !v.as_bool(); }
absl::StatusOr<bool> TInteger(const Value& v, const CallArgs&) { return v.is_int(); }
absl::StatusOr<bool> TFloat(const Value& v, const CallArgs&) { return v.is_float(); }
absl::StatusOr<bool> TNumber(const Value& v, const CallArgs&) { return v.is_number(); }
absl::StatusOr<bool> TString(const Value& v, const CallArgs&) { return v.is_string(); }
absl::StatusOr<bool> TMapping(const Value& v, const CallArgs&) { return v.is_dict(); }
absl::StatusOr<bool> TCallable(const Value& v, const CallArgs&) { return v.is_callable(); }
// Undefined iterates (as empty) and has a len(), so jinja2 calls it iterable and a sequence.
absl::StatusOr<bool> TIterable(const Value& v, const CallArgs&) {
  return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
}
absl::StatusOr<bool> TSequence(const Value& v, const CallArgs& a) { return TIterable(v, a); }
absl::StatusOr<bool> TLower(const Value& v, const CallArgs&) {
  const std::string s = ToStr(v);
  return PyLower(s) == s && PyUpper(s) != s;
}
absl::StatusOr<bool> TUpper(const Value& v, const CallArgs&) {
  const std::string s = ToStr(v);
  return PyUpper(s) == s && PyLower(s) != s;
}

absl::StatusOr<const Value*> Other(const CallArgs& a, std::string_view test) {
  const Value* other = FindArg(a, 0, "b");
  if (other == nullptr) return Error(Cat("test '", test, "' needs an argument"));
  return other;
}

absl::StatusOr<bool> TEq(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(const Value* o, Other(a, "eq"));
  return Equal(v, *o);
}
absl::StatusOr<bool> TNe(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(const Value* o, Other(a, "ne"));
  return !Equal(v, *o);
}
absl::StatusOr<bool> TLt(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(const Value* o, Other(a, "lt"));
  return Less(v, *o);
}
absl::StatusOr<bool> TGt(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(const Value* o, Other(a, "gt"));
  return Less(*o, v);
}
absl::StatusOr<bool> TLe(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(bool gt, TGt(v, a));
  return !gt;
}
absl::StatusOr<bool> TGe(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(bool lt, TLt(v, a));
  return !lt;
}
absl::StatusOr<bool> TIn(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(const Value* o, Other(a, "in"));
  return Contains(*o, v);
}
absl::StatusOr<bool> TSameAs(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(const Value* o, Other(a, "sameas"));
  if (v.is_none() || o->is_none()) return v.is_none() && o->is_none();
  if (v.is_bool() || o->is_bool())
    return v.is_bool() && o->is_bool() && v.as_bool() == o->as_bool();
  return false;
}

absl::StatusOr<int64_t> IntOf(const Value& v, std::string_view test) {
  if (v.is_undefined()) return Error(v.undefined_message());
  if (!v.is_int() && !v.is_bool()) {
    return Error(Cat("test '", test, "' needs an integer, got ", v.TypeName()));
  }
  return v.as_int();
}
absl::StatusOr<bool> TEven(const Value& v, const CallArgs&) {
  ASSIGN_OR_RETURN(int64_t i, IntOf(v, "even"));
  return i % 2 == 0;
}
absl::StatusOr<bool> TOdd(const Value& v, const CallArgs&) {
  ASSIGN_OR_RETURN(int64_t i, IntOf(v, "odd"));
  return i % 2 != 0;
}
absl::StatusOr<bool> TDivisibleBy(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(int64_t i, IntOf(v, "divisibleby"));
  ASSIGN_OR_RETURN(const Value* o, Other(a, "divisibleby"));
  ASSIGN_OR_RETURN(int64_t n, IntOf(*o, "divisibleby"));
  if (n == 0) return Error("integer modulo by zero");
  return i % n == 0;
}

const absl::flat_hash_map<std::string_view, Test>& Tests() {
  static const auto* tests = new absl::flat_hash_map<std::string_view, Test>{
      {"defined", TDefined},
      {"undefined", TUndefined},
      {"none", TNone},
      {"boolean", TBoolean},
      {"true", TTrue},
      {"false", TFalse},
      {"integer", TInteger},
      {"float", TFloat},
      {"number", TNumber},
      {"string", TString},
      {"mapping", TMapping},
      {"callable", TCallable},
      {"iterable", TIterable},
      {"sequence", TSequence},
      {"lower", TLower},
      {"upper", TUpper},
      {"eq", TEq},
      {"equalto", TEq},
      {"==", TEq},
      {"ne", TNe},
      {"!=", TNe},
      {"lt", TLt},
      {"lessthan", TLt},
      {"<", TLt},
      {"gt", TGt},
      {"greaterthan", TGt},
      {">", TGt},
      {"le", TLe},
      {"<=", TLe},
      {"ge", TGe},
      {">=", TGe},
      {"in", TIn},
      {"sameas", TSameAs},
      {"even", TEven},
      {"odd", TOdd},
      {"divisibleby", TDivisibleBy},
  };
  return *tests;
}

}  // namespace

bool IsKnownTest(std::string_view name) { return Tests().contains(name); }

absl::StatusOr<bool> ApplyTest(std::string_view name, const Value& input, const CallArgs& args) {
  auto it = Tests().find(name);
  if (it == Tests().end()) return Error(Cat("unknown test '", name, "'"));
  return it->second(input, args);
}

}  // namespace tpserve::chat
