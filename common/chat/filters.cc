// Jinja filters: the subset of jinja2 3.1's builtin filters chat templates use.

#include <algorithm>
#include <cmath>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "common/base/status_macros.h"
#include "common/chat/builtins.h"
#include "common/chat/text_util.h"

namespace tpserve::chat {
namespace {

using Filter = absl::StatusOr<Value> (*)(const Value&, const CallArgs&);

absl::Status Error(std::string_view message) {
  return absl::InvalidArgumentError(std::string(message));
}

bool BoolArg(const CallArgs& args, size_t index, std::string_view name, bool def) {
  const Value* v = FindArg(args, index, name);
  return v == nullptr ? def : v->Truthy();
}

// Filters that read `value.attr` for each item (`map(attribute=...)`, `sort(attribute=...)`).
absl::StatusOr<Value> Attribute(const Value& item, const Value* attr) {
  if (attr == nullptr || attr->is_none()) return item;
  if (attr->is_int()) return GetItem(item, *attr);
  return GetAttr(item, ToStr(*attr));
}

absl::StatusOr<Value> FLength(const Value& v, const CallArgs&) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return Value::Int(0);
    case Value::Kind::kString:
      return Value::Int(static_cast<int64_t>(CodePointCount(v.as_string())));
    case Value::Kind::kList:
      return Value::Int(static_cast<int64_t>(v.as_list().size()));
    case Value::Kind::kDict:
      return Value::Int(static_cast<int64_t>(v.as_dict().size()));
    default:
      return Error(Cat("object of type '", v.TypeName(), "' has no len()"));
  }
}

absl::StatusOr<Value> FDefault(const Value& v, const CallArgs& a) {
  const Value* def = FindArg(a, 0, "default_value");
  if (v.is_undefined() || (BoolArg(a, 1, "boolean", false) && !v.Truthy())) {
    return def != nullptr ? *def : Value::String("");
  }
  return v;
}

absl::StatusOr<Value> FTrim(const Value& v, const CallArgs& a) {
  const Value* chars = FindArg(a, 0, "chars");
  std::string set = chars != nullptr && !chars->is_none() ? ToStr(*chars) : "";
  return Value::String(
      PyStrip(ToStr(v), chars != nullptr && !chars->is_none() ? &set : nullptr, true, true));
}

absl::StatusOr<Value> FUpper(const Value& v, const CallArgs&) {
  return Value::String(PyUpper(ToStr(v)));
}
absl::StatusOr<Value> FLower(const Value& v, const CallArgs&) {
  return Value::String(PyLower(ToStr(v)));
}
absl::StatusOr<Value> FCapitalize(const Value& v, const CallArgs&) {
  return Value::String(PyCapitalize(ToStr(v)));
}
absl::StatusOr<Value> FString(const Value& v, const CallArgs&) { return Value::String(ToStr(v)); }

// Jinja's title: words start after runs of whitespace, '-', '(', '{', '[' or '<'.
absl::StatusOr<Value> FTitle(const Value& v, const CallArgs&) {
  const std::u32string u = DecodeUtf8(ToStr(v));
  std::u32string out;
  bool word_start = true;
  for (char32_t cp : u) {
    const bool sep = IsPySpace(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
    std::string one = EncodeUtf8(std::u32string(1, cp));
    const std::string mapped = sep ? one : word_start ? PyUpper(one) : PyLower(one);
    out += DecodeUtf8(mapped);
    word_start = sep;
  }
  return Value::String(EncodeUtf8(out));
}

absl::StatusOr<Value> FJoin(const Value& v, const CallArgs& a) {
  const Value* sep = FindArg(a, 0, "d");
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0 && sep != nullptr) out += ToStr(*sep);
    ASSIGN_OR_RETURN(Value item, Attribute(items[i], FindArg(a, 1, "attribute")));
    out += ToStr(item);
  }
  return Value::String(std::move(out));
}

absl::StatusOr<Value> FFirst(const Value& v, const CallArgs&) {
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  if (items.empty()) return Value::Undefined("No first item, sequence was empty.");
  return items.front();
}

absl::StatusOr<Value> FLast(const Value& v, const CallArgs&) {
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  if (items.empty()) return Value::Undefined("No last item, sequence was empty.");
  return items.back();
}

absl::StatusOr<Value> FList(const Value& v, const CallArgs&) {
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  return Value::List(std::move(items));
}

absl::StatusOr<Value> FItems(const Value& v, const CallArgs&) {
  if (v.is_undefined()) return Value::List({});
  if (!v.is_dict()) return Error("Can only get item pairs from a mapping.");
  std::vector<Value> out;
  for (const auto& [k, x] : v.as_dict().items()) {
    out.push_back(Value::List({Value::String(k), x}, /*tuple=*/true));
  }
  return Value::List(std::move(out));
}

absl::StatusOr<Value> FReverse(const Value& v, const CallArgs&) {
  if (v.is_string()) {
    std::u32string u = DecodeUtf8(v.as_string());
    std::reverse(u.begin(), u.end());
    return Value::String(EncodeUtf8(u));
  }
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  std::reverse(items.begin(), items.end());
  return Value::List(std::move(items));
}

absl::StatusOr<Value> FSafe(const Value& v, const CallArgs&) { return Value::String(ToStr(v)); }

absl::StatusOr<Value> FReplace(const Value& v, const CallArgs& a) {
  const Value* old_s = FindArg(a, 0, "old");
  const Value* new_s = FindArg(a, 1, "new");
  if (old_s == nullptr || new_s == nullptr) return Error("replace() needs 'old' and 'new'");
  const Value* count = FindArg(a, 2, "count");
  return Value::String(PyReplace(ToStr(v), ToStr(*old_s), ToStr(*new_s),
                                 count != nullptr && count->is_number() ? count->as_int() : -1));
}

// transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
absl::StatusOr<Value> FToJson(const Value& v, const CallArgs& a) {
  JsonDumpOptions o;
  o.ensure_ascii = BoolArg(a, 0, "ensure_ascii", false);
  if (const Value* indent = FindArg(a, 1, "indent"); indent != nullptr && !indent->is_none()) {
    o.has_indent = true;
    if (indent->is_string()) {
      o.indent = indent->as_string();
    } else {
      o.indent.assign(static_cast<size_t>(std::clamp<int64_t>(indent->as_int(), 0, 4096)), ' ');
    }
    o.item_separator.erase(1);  // ", " → ","; as json.dumps does when indenting.
  }
  if (const Value* seps = FindArg(a, 2, "separators"); seps != nullptr && !seps->is_none()) {
    if (!seps->is_list() || seps->as_list().size() != 2) {
      return Error("tojson separators must be an (item_separator, key_separator) pair");
    }
    o.item_separator = ToStr(seps->as_list()[0]);
    o.key_separator = ToStr(seps->as_list()[1]);
  }
  o.sort_keys = BoolArg(a, 3, "sort_keys", false);
  ASSIGN_OR_RETURN(std::string s, JsonDumps(v, o));
  return Value::String(std::move(s));
}

// Python int(float): truncates toward zero; beyond int64 it is an error here (Python has bigints).
absl::StatusOr<Value> TruncToInt(double d) {
  const double t = std::trunc(d);
  if (!std::isfinite(t) || t < -9.223372036854775808e18 || t >= 9.223372036854775808e18) {
    return Error("integer overflow converting float to int");
  }
  return Value::Int(static_cast<int64_t>(t));
}

absl::StatusOr<Value> FInt(const Value& v, const CallArgs& a) {
  const Value* def = FindArg(a, 0, "default");
  const Value fallback = def != nullptr ? *def : Value::Int(0);
  if (v.is_number()) return v.is_float() ? TruncToInt(v.as_double()) : Value::Int(v.as_int());
  if (!v.is_string()) return fallback;
  const std::string s = PyStrip(v.as_string(), nullptr, true, true);
  try {
    size_t used = 0;
    const long long i = std::stoll(
        s, &used, static_cast<int>(FindArg(a, 1, "base") ? FindArg(a, 1, "base")->as_int() : 10));
    if (used == s.size()) return Value::Int(i);
    const double d = std::stod(s, &used);
    if (used == s.size() && std::isfinite(d)) return TruncToInt(d);
  } catch (...) {
  }
  return fallback;
}

absl::StatusOr<Value> FFloat(const Value& v, const CallArgs& a) {
  const Value* def = FindArg(a, 0, "default");
  const Value fallback = def != nullptr ? *def : Value::Float(0.0);
  if (v.is_number()) return Value::Float(v.as_double());
  if (!v.is_string()) return fallback;
  const std::string s = PyStrip(v.as_string(), nullptr, true, true);
  try {
    size_t used = 0;
    const double d = std::stod(s, &used);
    if (used == s.size()) return Value::Float(d);
  } catch (...) {
  }
  return fallback;
}

absl::StatusOr<Value> FAbs(const Value& v, const CallArgs&) {
  if (!v.is_number()) return Error(Cat("bad operand type for abs(): '", v.TypeName(), "'"));
  if (v.is_float()) return Value::Float(std::fabs(v.as_double()));
  if (v.as_int() == INT64_MIN) return Error("integer overflow");
  return Value::Int(std::llabs(v.as_int()));
}

absl::StatusOr<Value> FRound(const Value& v, const CallArgs& a) {
  if (!v.is_number()) return Error("round() needs a number");
  const int64_t precision = FindArg(a, 0, "precision") ? FindArg(a, 0, "precision")->as_int() : 0;
  const Value* method = FindArg(a, 1, "method");
  const std::string m = method != nullptr ? ToStr(*method) : "common";
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double x = v.as_double() * scale;
  double r;
  if (m == "common") {
    r = std::nearbyint(x);  // Python's round(): half to even.
  } else if (m == "ceil") {
    r = std::ceil(x);
  } else if (m == "floor") {
    r = std::floor(x);
  } else {
    return Error("round() method must be 'common', 'ceil' or 'floor'");
  }
  return Value::Float(r / scale);
}

// Sort key: the (optionally attribute-selected, case-folded) value.
absl::StatusOr<std::vector<std::pair<Value, Value>>> Keyed(const std::vector<Value>& items,
                                                           const Value* attr, bool case_sensitive) {
  std::vector<std::pair<Value, Value>> keyed;
  for (const Value& item : items) {
    ASSIGN_OR_RETURN(Value key, Attribute(item, attr));
    if (!case_sensitive && key.is_string()) key = Value::String(PyLower(key.as_string()));
    keyed.emplace_back(std::move(key), item);
  }
  return keyed;
}

absl::Status SortKeyed(std::vector<std::pair<Value, Value>>* keyed, bool reverse) {
  absl::Status st;
  std::stable_sort(keyed->begin(), keyed->end(), [&](const auto& x, const auto& y) {
    auto lt = reverse ? Less(y.first, x.first) : Less(x.first, y.first);
    if (!lt.ok()) {
      st = lt.status();
      return false;
    }
    return *lt;
  });
  return st;
}

absl::StatusOr<Value> FSort(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  ASSIGN_OR_RETURN(
      auto keyed, Keyed(items, FindArg(a, 2, "attribute"), BoolArg(a, 1, "case_sensitive", false)));
  RETURN_IF_ERROR(SortKeyed(&keyed, BoolArg(a, 0, "reverse", false)));
  std::vector<Value> out;
  for (auto& [_, item] : keyed) out.push_back(std::move(item));
  return Value::List(std::move(out));
}

absl::StatusOr<Value> FDictSort(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(Value pairs, FItems(v, {}));
  const Value* by = FindArg(a, 1, "by");
  const bool by_value = by != nullptr && ToStr(*by) == "value";
  const Value index = Value::Int(by_value ? 1 : 0);
  ASSIGN_OR_RETURN(auto keyed,
                   Keyed(pairs.as_list(), &index, BoolArg(a, 0, "case_sensitive", false)));
  RETURN_IF_ERROR(SortKeyed(&keyed, BoolArg(a, 2, "reverse", false)));
  std::vector<Value> out;
  for (auto& [_, item] : keyed) out.push_back(std::move(item));
  return Value::List(std::move(out));
}

absl::StatusOr<Value> FUnique(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  ASSIGN_OR_RETURN(
      auto keyed, Keyed(items, FindArg(a, 1, "attribute"), BoolArg(a, 0, "case_sensitive", false)));
  std::vector<Value> seen, out;
  for (auto& [key, item] : keyed) {
    if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return Equal(s, key); }))
      continue;
    seen.push_back(key);
    out.push_back(item);
  }
  return Value::List(std::move(out));
}

absl::StatusOr<Value> MinMax(const Value& v, const CallArgs& a, bool max) {
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  if (items.empty()) return Value::Undefined(max ? "No largest item" : "No smallest item");
  ASSIGN_OR_RETURN(
      auto keyed, Keyed(items, FindArg(a, 1, "attribute"), BoolArg(a, 0, "case_sensitive", false)));
  size_t best = 0;
  for (size_t i = 1; i < keyed.size(); ++i) {
    ASSIGN_OR_RETURN(bool better, max ? Less(keyed[best].first, keyed[i].first)
                                      : Less(keyed[i].first, keyed[best].first));
    if (better) best = i;
  }
  return keyed[best].second;
}
absl::StatusOr<Value> FMax(const Value& v, const CallArgs& a) { return MinMax(v, a, true); }
absl::StatusOr<Value> FMin(const Value& v, const CallArgs& a) { return MinMax(v, a, false); }

absl::StatusOr<Value> FSum(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  Value total = FindArg(a, 1, "start") ? *FindArg(a, 1, "start") : Value::Int(0);
  for (const Value& item : items) {
    ASSIGN_OR_RETURN(Value x, Attribute(item, FindArg(a, 0, "attribute")));
    ASSIGN_OR_RETURN(total, BinaryOp("+", total, x));
  }
  return total;
}

absl::StatusOr<Value> FAttr(const Value& v, const CallArgs& a) {
  const Value* name = FindArg(a, 0, "name");
  if (name == nullptr) return Error("attr() needs a name");
  return GetAttr(v, ToStr(*name));
}

// The arguments after the first `skip` positional ones, for a nested filter/test call.
CallArgs Rest(const CallArgs& a, size_t skip) {
  CallArgs rest;
  for (size_t i = skip; i < a.positional.size(); ++i) rest.positional.push_back(a.positional[i]);
  for (const auto& kv : a.keyword) {
    if (kv.first != "attribute" && kv.first != "default") rest.keyword.push_back(kv);
  }
  return rest;
}

absl::StatusOr<Value> FMap(const Value& v, const CallArgs& a) {
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  std::vector<Value> out;
  const Value* attr = FindArg(a, 99, "attribute");
  if (a.positional.empty() && attr == nullptr)
    return Error("map() needs a filter name or attribute=");
  for (const Value& item : items) {
    if (attr != nullptr) {
      ASSIGN_OR_RETURN(Value x, Attribute(item, attr));
      const Value* def = FindArg(a, 99, "default");
      out.push_back(x.is_undefined() && def != nullptr ? *def : x);
    } else {
      const std::string name = ToStr(a.positional[0]);
      if (!IsKnownFilter(name)) return Error(Cat("map(): unknown filter '", name, "'"));
      ASSIGN_OR_RETURN(Value x, ApplyFilter(name, item, Rest(a, 1)));
      out.push_back(std::move(x));
    }
  }
  return Value::List(std::move(out));
}

// select/reject (test on the item) and selectattr/rejectattr (test on item.attr).
absl::StatusOr<Value> SelectImpl(const Value& v, const CallArgs& a, bool on_attr, bool keep) {
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  const size_t test_pos = on_attr ? 1 : 0;
  std::vector<Value> out;
  for (const Value& item : items) {
    Value x = item;
    if (on_attr) {
      if (a.positional.empty()) return Error("selectattr/rejectattr need an attribute name");
      ASSIGN_OR_RETURN(x, Attribute(item, &a.positional[0]));
    }
    bool pass;
    if (a.positional.size() <= test_pos) {
      pass = x.Truthy();
    } else {
      const std::string test = ToStr(a.positional[test_pos]);
      if (!IsKnownTest(test)) return Error(Cat("unknown test '", test, "'"));
      ASSIGN_OR_RETURN(pass, ApplyTest(test, x, Rest(a, test_pos + 1)));
    }
    if (pass == keep) out.push_back(item);
  }
  return Value::List(std::move(out));
}
absl::StatusOr<Value> FSelect(const Value& v, const CallArgs& a) {
  return SelectImpl(v, a, false, true);
}
absl::StatusOr<Value> FReject(const Value& v, const CallArgs& a) {
  return SelectImpl(v, a, false, false);
}
absl::StatusOr<Value> FSelectAttr(const Value& v, const CallArgs& a) {
  return SelectImpl(v, a, true, true);
}
absl::StatusOr<Value> FRejectAttr(const Value& v, const CallArgs& a) {
  return SelectImpl(v, a, true, false);
}

// Jinja's indent(width=4, first=False, blank=False).
absl::StatusOr<Value> FIndent(const Value& v, const CallArgs& a) {
  const Value* width = FindArg(a, 0, "width");
  const std::string pad = width == nullptr ? "    "
                          : width->is_string()
                              ? width->as_string()
                              : std::string(std::clamp<int64_t>(width->as_int(), 0, 4096), ' ');
  const bool first = BoolArg(a, 1, "first", false), blank = BoolArg(a, 2, "blank", false);
  const std::string s = ToStr(v) + "\n";
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n' || s[i] == '\r') {
      lines.push_back(s.substr(start, i - start));
      if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
      start = i + 1;
    }
  }
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) out += "\n";
    if (i > 0 && (blank || !lines[i].empty())) out += pad;
    out += lines[i];
  }
  if (first) out = pad + out;
  return Value::String(std::move(out));
}

const absl::flat_hash_map<std::string_view, Filter>& Filters() {
  static const auto* filters = new absl::flat_hash_map<std::string_view, Filter>{
      {"abs", FAbs},
      {"attr", FAttr},
      {"capitalize", FCapitalize},
      {"count", FLength},
      {"d", FDefault},
      {"default", FDefault},
      {"dictsort", FDictSort},
      {"first", FFirst},
      {"float", FFloat},
      {"indent", FIndent},
      {"int", FInt},
      {"items", FItems},
      {"join", FJoin},
      {"last", FLast},
      {"length", FLength},
      {"list", FList},
      {"lower", FLower},
      {"map", FMap},
      {"max", FMax},
      {"min", FMin},
      {"reject", FReject},
      {"rejectattr", FRejectAttr},
      {"replace", FReplace},
      {"reverse", FReverse},
      {"round", FRound},
      {"safe", FSafe},
      {"select", FSelect},
      {"selectattr", FSelectAttr},
      {"sort", FSort},
      {"string", FString},
      {"sum", FSum},
      {"title", FTitle},
      {"tojson", FToJson},
      {"trim", FTrim},
      {"unique", FUnique},
      {"upper", FUpper},
  };
  return *filters;
}

}  // namespace

bool IsKnownFilter(std::string_view name) { return Filters().contains(name); }

absl::StatusOr<Value> ApplyFilter(std::string_view name, const Value& input, const CallArgs& args) {
  auto it = Filters().find(name);
  if (it == Filters().end()) return Error(Cat("unknown filter '", name, "'"));
  return it->second(input, args);
}

}  // namespace tpserve::chat
