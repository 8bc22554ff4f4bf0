// Attribute/item access, iteration, operators and the str/dict/list methods templates call.
// Filters, tests and globals live in filters.cc, jinja_tests.cc and globals.cc.

#include "common/chat/builtins.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "common/base/status_macros.h"
#include "common/chat/text_util.h"

namespace tpserve::chat {
namespace {

constexpr std::string_view kIntOverflow = "integer overflow (templates use 64-bit integers)";
// Strings/lists built by `~`, `+` and `*` beyond this many bytes / items are refused, so a
// template cannot exhaust memory (Python would try).
constexpr size_t kMaxRepeatItems = size_t{64} << 20;

absl::Status TypeError(std::string_view message) {
  return absl::InvalidArgumentError(std::string(message));
}

absl::StatusOr<std::string> StrArg(const CallArgs& args, size_t index, std::string_view name,
                                   std::string_view method) {
  const Value* v = FindArg(args, index, name);
  if (v == nullptr) return TypeError(Cat(method, "() missing argument '", name, "'"));
  if (!v->is_string()) {
    return TypeError(Cat(method, "() argument '", name, "' must be str, not ", v->TypeName()));
  }
  return v->as_string();
}

// Optional str argument: null when absent or None.
absl::StatusOr<const std::string*> OptStrArg(const CallArgs& args, size_t index,
                                             std::string_view name, std::string_view method) {
  const Value* v = FindArg(args, index, name);
  if (v == nullptr || v->is_none()) return nullptr;
  if (!v->is_string()) {
    return TypeError(
        Cat(method, "() argument '", name, "' must be str or None, not ", v->TypeName()));
  }
  return &v->as_string();
}

int64_t IntArg(const CallArgs& args, size_t index, std::string_view name, int64_t def) {
  const Value* v = FindArg(args, index, name);
  return v != nullptr && v->is_number() ? v->as_int() : def;
}

Value Method(std::string name, NativeFunction fn) { return Value::Callable(std::move(name), fn); }

Value StrList(const std::vector<std::string>& parts) {
  std::vector<Value> items;
  for (const auto& p : parts) items.push_back(Value::String(p));
  return Value::List(std::move(items));
}

// `prefix` may be a str or a tuple of str, as in Python.
absl::StatusOr<bool> AffixMatch(const std::string& s, const Value& affix, bool prefix) {
  auto one = [&](const Value& a) -> absl::StatusOr<bool> {
    if (!a.is_string()) {
      return TypeError(Cat(prefix ? "startswith" : "endswith",
                           "() first arg must be str or a tuple of str, not ", a.TypeName()));
    }
    const std::string& x = a.as_string();
    if (x.size() > s.size()) return false;
    return prefix ? s.compare(0, x.size(), x) == 0
                  : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  if (affix.is_list()) {
    for (const Value& a : affix.as_list()) {
      ASSIGN_OR_RETURN(bool m, one(a));
      if (m) return true;
    }
    return false;
  }
  return one(affix);
}

absl::StatusOr<Value> StringMethod(const std::string& s, const std::string& name) {
  auto self = std::make_shared<const std::string>(s);
  const std::string qualified = "str." + name;
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const bool left = name != "rstrip", right = name != "lstrip";
    return Method(qualified, [self, left, right, name](const CallArgs& a) -> absl::StatusOr<Value> {
      ASSIGN_OR_RETURN(const std::string* chars, OptStrArg(a, 0, "chars", name));
      return Value::String(PyStrip(*self, chars, left, right));
    });
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    return Method(qualified, [self, name](const CallArgs&) -> absl::StatusOr<Value> {
      if (name == "upper") return Value::String(PyUpper(*self));
      if (name == "lower") return Value::String(PyLower(*self));
      if (name == "title") return Value::String(PyTitle(*self));
      return Value::String(PyCapitalize(*self));
    });
  }
  if (name == "split") {
    return Method(qualified, [self](const CallArgs& a) -> absl::StatusOr<Value> {
      ASSIGN_OR_RETURN(const std::string* sep, OptStrArg(a, 0, "sep", "split"));
      if (sep != nullptr && sep->empty()) return TypeError("split(): empty separator");
      return StrList(PySplit(*self, sep, static_cast<int>(IntArg(a, 1, "maxsplit", -1))));
    });
  }
  if (name == "startswith" || name == "endswith") {
    const bool prefix = name == "startswith";
    return Method(qualified, [self, prefix, name](const CallArgs& a) -> absl::StatusOr<Value> {
      const Value* affix = FindArg(a, 0, "prefix");
      if (affix == nullptr) return TypeError(Cat(name, "() takes at least 1 argument"));
      ASSIGN_OR_RETURN(bool m, AffixMatch(*self, *affix, prefix));
      return Value::Bool(m);
    });
  }
  if (name == "replace") {
    return Method(qualified, [self](const CallArgs& a) -> absl::StatusOr<Value> {
      ASSIGN_OR_RETURN(std::string old_s, StrArg(a, 0, "old", "replace"));
      ASSIGN_OR_RETURN(std::string new_s, StrArg(a, 1, "new", "replace"));
      return Value::String(PyReplace(*self, old_s, new_s, IntArg(a, 2, "count", -1)));
    });
  }
  if (name == "find" || name == "count") {
    const bool find = name == "find";
    return Method(qualified, [self, find, name](const CallArgs& a) -> absl::StatusOr<Value> {
      ASSIGN_OR_RETURN(std::string sub, StrArg(a, 0, "sub", name));
      if (find) {
        const size_t at = self->find(sub);
        if (at == std::string::npos) return Value::Int(-1);
        return Value::Int(
            static_cast<int64_t>(CodePointCount(std::string_view(*self).substr(0, at))));
      }
      if (sub.empty()) return Value::Int(static_cast<int64_t>(CodePointCount(*self) + 1));
      int64_t n = 0;
      for (size_t at = self->find(sub); at != std::string::npos;
           at = self->find(sub, at + sub.size()))
        ++n;
      return Value::Int(n);
    });
  }
  if (name == "join") {
    return Method(qualified, [self](const CallArgs& a) -> absl::StatusOr<Value> {
      const Value* seq = FindArg(a, 0, "iterable");
      if (seq == nullptr) return TypeError("join() takes exactly one argument");
      ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(*seq));
      std::string out;
      for (size_t i = 0; i < items.size(); ++i) {
        if (!items[i].is_string()) {
          return TypeError(
              Cat("sequence item ", i, ": expected str instance, ", items[i].TypeName(), " found"));
        }
        if (i > 0) out += *self;
        out += items[i].as_string();
      }
      return Value::String(std::move(out));
    });
  }
  return Value::Undefined(Cat("'str object' has no attribute '", name, "'"));
}

absl::StatusOr<Value> DictMethod(const Value& obj, const std::string& name) {
  const std::string qualified = "dict." + name;
  if (name == "items" || name == "keys" || name == "values") {
    return Method(qualified, [obj, name](const CallArgs&) -> absl::StatusOr<Value> {
      std::vector<Value> out;
      for (const auto& [k, v] : obj.as_dict().items()) {
        if (name == "items") {
          out.push_back(Value::List({Value::String(k), v}, /*tuple=*/true));
        } else {
          out.push_back(name == "keys" ? Value::String(k) : v);
        }
      }
      return Value::List(std::move(out));
    });
  }
  if (name == "get") {
    return Method(qualified, [obj](const CallArgs& a) -> absl::StatusOr<Value> {
      const Value* key = FindArg(a, 0, "key");
      if (key == nullptr) return TypeError("get expected at least 1 argument, got 0");
      const Value* def = FindArg(a, 1, "default");
      if (key->is_string()) {
        if (const Value* v = obj.as_dict().Find(key->as_string())) return *v;
      }
      return def != nullptr ? *def : Value::None();
    });
  }
  return Value();  // Not a method: the caller looks the key up.
}

absl::StatusOr<Value> ListMethod(const Value& obj, const std::string& name) {
  if (name == "index" || name == "count") {
    const bool index = name == "index";
    return Method("list." + name, [obj, index](const CallArgs& a) -> absl::StatusOr<Value> {
      const Value* x = FindArg(a, 0, "value");
      if (x == nullptr) return TypeError("list method takes exactly one argument");
      int64_t n = 0;
      const auto& items = obj.as_list();
      for (size_t i = 0; i < items.size(); ++i) {
        if (!Equal(items[i], *x)) continue;
        if (index) return Value::Int(static_cast<int64_t>(i));
        ++n;
      }
      if (index) return TypeError(Cat(Repr(*x), " is not in list"));
      return Value::Int(n);
    });
  }
  return Value::Undefined(Cat("'list object' has no attribute '", name, "'"));
}

// Python's slice.indices(): clamps start/stop for a sequence of length n.
absl::StatusOr<std::vector<int64_t>> SliceIndices(int64_t n, const Value& start, const Value& stop,
                                                  const Value& step) {
  for (const Value* v : {&start, &stop, &step}) {
    if (!v->is_none() && !v->is_int() && !v->is_bool()) {
      return TypeError("slice indices must be integers or None");
    }
  }
  const int64_t st = step.is_none() ? 1 : step.as_int();
  if (st == 0) return TypeError("slice step cannot be zero");
  auto clamp = [&](const Value& v, int64_t def) {
    if (v.is_none()) return def;
    int64_t i = v.as_int();
    if (i < 0) i += n;
    if (st > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t b = clamp(start, st > 0 ? 0 : n - 1);
  const int64_t e = clamp(stop, st > 0 ? n : -1);
  std::vector<int64_t> idx;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) idx.push_back(i);
  return idx;
}

}  // namespace

const Value* FindArg(const CallArgs& args, size_t index, std::string_view name) {
  if (index < args.positional.size()) return &args.positional[index];
  for (const auto& [k, v] : args.keyword) {
    if (k == name) return &v;
  }
  return nullptr;
}

absl::StatusOr<Value> GetAttr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      return absl::InvalidArgumentError(obj.undefined_message());
    case Value::Kind::kDict: {
      ASSIGN_OR_RETURN(Value m, DictMethod(obj, name));
      if (!m.is_undefined()) return m;
      if (const Value* v = obj.as_dict().Find(name)) return *v;
      return Value::Undefined(Cat("'dict object' has no attribute '", name, "'"));
    }
    case Value::Kind::kNamespace:
      if (const Value* v = obj.namespace_attrs().Find(name)) return *v;
      return Value::Undefined(Cat("'Namespace object' has no attribute '", name, "'"));
    case Value::Kind::kString:
      return StringMethod(obj.as_string(), name);
    case Value::Kind::kList:
      return ListMethod(obj, name);
    default:
      return Value::Undefined(Cat("'", obj.TypeName(), " object' has no attribute '", name, "'"));
  }
}

absl::StatusOr<Value> GetItem(const Value& obj, const Value& key) {
  if (obj.is_undefined()) return absl::InvalidArgumentError(obj.undefined_message());
  if ((obj.is_list() || obj.is_string()) && (key.is_int() || key.is_bool())) {
    int64_t i = key.as_int();
    if (obj.is_list()) {
      const int64_t n = static_cast<int64_t>(obj.as_list().size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return obj.as_list()[i];
      return Value::Undefined(Cat("'list object' has no element ", key.as_int()));
    }
    const std::u32string u = DecodeUtf8(obj.as_string());
    const int64_t n = static_cast<int64_t>(u.size());
    if (i < 0) i += n;
    if (i >= 0 && i < n) return Value::String(EncodeUtf8(std::u32string(1, u[i])));
    return Value::Undefined(Cat("'str object' has no element ", key.as_int()));
  }
  if (obj.is_dict() && key.is_string()) {
    if (const Value* v = obj.as_dict().Find(key.as_string())) return *v;
  }
  if (key.is_string()) return GetAttr(obj, key.as_string());
  return Value::Undefined(Cat("'", obj.TypeName(), " object' has no element ", Repr(key)));
}

absl::StatusOr<Value> Slice(const Value& obj, const Value& start, const Value& stop,
                            const Value& step) {
  if (obj.is_undefined()) return absl::InvalidArgumentError(obj.undefined_message());
  if (obj.is_list()) {
    const auto& items = obj.as_list();
    ASSIGN_OR_RETURN(auto idx, SliceIndices(static_cast<int64_t>(items.size()), start, stop, step));
    std::vector<Value> out;
    for (int64_t i : idx) out.push_back(items[i]);
    return Value::List(std::move(out), obj.is_tuple());
  }
  if (obj.is_string()) {
    const std::u32string u = DecodeUtf8(obj.as_string());
    ASSIGN_OR_RETURN(auto idx, SliceIndices(static_cast<int64_t>(u.size()), start, stop, step));
    std::u32string out;
    for (int64_t i : idx) out.push_back(u[i]);
    return Value::String(EncodeUtf8(out));
  }
  return Value::Undefined(Cat("'", obj.TypeName(), " object' cannot be sliced"));
}

absl::StatusOr<std::vector<Value>> Iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return std::vector<Value>();
    case Value::Kind::kList:
      return v.as_list();
    case Value::Kind::kDict: {
      std::vector<Value> keys;
      for (const auto& [k, _] : v.as_dict().items()) keys.push_back(Value::String(k));
      return keys;
    }
    case Value::Kind::kString: {
      std::vector<Value> chars;
      for (char32_t cp : DecodeUtf8(v.as_string())) {
        chars.push_back(Value::String(EncodeUtf8(std::u32string(1, cp))));
      }
      return chars;
    }
    default:
      return TypeError(Cat("'", v.TypeName(), "' object is not iterable"));
  }
}

absl::StatusOr<bool> Contains(const Value& haystack, const Value& needle) {
  switch (haystack.kind()) {
    case Value::Kind::kUndefined:
      return false;
    case Value::Kind::kString:
      if (!needle.is_string()) {
        return TypeError(
            Cat("'in <string>' requires string as left operand, not ", needle.TypeName()));
      }
      return haystack.as_string().find(needle.as_string()) != std::string::npos;
    case Value::Kind::kList:
      for (const Value& item : haystack.as_list()) {
        if (Equal(item, needle)) return true;
      }
      return false;
    case Value::Kind::kDict:
      return needle.is_string() && haystack.as_dict().Find(needle.as_string()) != nullptr;
    default:
      return TypeError(Cat("argument of type '", haystack.TypeName(), "' is not iterable"));
  }
}

absl::StatusOr<Value> BinaryOp(std::string_view op, const Value& a, const Value& b) {
  if (op == "~") {
    std::string out = ToStr(a);
    const std::string right = ToStr(b);
    if (out.size() + right.size() > kMaxRepeatItems) return TypeError("string grew too large");
    return Value::String(out + right);
  }
  for (const Value* v : {&a, &b}) {
    if (v->is_undefined()) return absl::InvalidArgumentError(v->undefined_message());
  }
  auto unsupported = [&]() {
    return TypeError(Cat("unsupported operand type(s) for ", op, ": '", a.TypeName(), "' and '",
                         b.TypeName(), "'"));
  };
  if (a.is_number() && b.is_number()) {
    const bool fl = a.is_float() || b.is_float();
    const double x = a.as_double(), y = b.as_double();
    const int64_t i = a.as_int(), j = b.as_int();
    // Python ints are unbounded; ours are int64 and overflow is an error rather than UB.
    int64_t r = 0;
    if (op == "+") {
      if (fl) return Value::Float(x + y);
      if (__builtin_add_overflow(i, j, &r)) return TypeError(kIntOverflow);
      return Value::Int(r);
    }
    if (op == "-") {
      if (fl) return Value::Float(x - y);
      if (__builtin_sub_overflow(i, j, &r)) return TypeError(kIntOverflow);
      return Value::Int(r);
    }
    if (op == "*") {
      if (fl) return Value::Float(x * y);
      if (__builtin_mul_overflow(i, j, &r)) return TypeError(kIntOverflow);
      return Value::Int(r);
    }
    if (op == "/" || op == "//" || op == "%") {
      if (fl ? y == 0 : j == 0) {
        return TypeError(op == "%" ? "integer modulo by zero" : "division by zero");
      }
    }
    if (op == "/") return Value::Float(x / y);
    if (op == "//") {
      if (fl) return Value::Float(std::floor(x / y));
      int64_t q = i / j;
      if ((i % j != 0) && ((i < 0) != (j < 0))) --q;
      return Value::Int(q);
    }
    if (op == "%") {
      if (fl) {
        double m = std::fmod(x, y);
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        return Value::Float(m);
      }
      int64_t m = i % j;
      if (m != 0 && ((m < 0) != (j < 0))) m += j;
      return Value::Int(m);
    }
    if (op == "**") {
      if (!fl && j >= 0) {  // Square-and-multiply: at most 63 squarings before overflow.
        int64_t result = 1, base = i;
        for (int64_t e = j; e > 0; e >>= 1) {
          if ((e & 1) && __builtin_mul_overflow(result, base, &result))
            return TypeError(kIntOverflow);
          if (e > 1 && __builtin_mul_overflow(base, base, &base)) return TypeError(kIntOverflow);
        }
        return Value::Int(result);
      }
      return Value::Float(std::pow(x, y));
    }
    return unsupported();
  }
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      if (a.as_string().size() + b.as_string().size() > kMaxRepeatItems) {
        return TypeError("string grew too large");
      }
      return Value::String(a.as_string() + b.as_string());
    }
    if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
      std::vector<Value> out = a.as_list();
      out.insert(out.end(), b.as_list().begin(), b.as_list().end());
      return Value::List(std::move(out), a.is_tuple());
    }
    if (a.is_string()) {
      return TypeError(Cat("can only concatenate str (not \"", b.TypeName(), "\") to str"));
    }
  }
  if (op == "*") {
    const bool a_seq = a.is_string() || a.is_list();
    const Value& seq = a_seq ? a : b;
    const Value& count = a_seq ? b : a;
    if ((seq.is_string() || seq.is_list()) && (count.is_int() || count.is_bool())) {
      const int64_t n = std::max<int64_t>(0, count.as_int());
      const size_t unit = seq.is_string() ? seq.as_string().size() : seq.as_list().size();
      if (unit != 0 && n > static_cast<int64_t>(kMaxRepeatItems / unit)) {
        return TypeError(Cat("repeating a ", seq.TypeName(), " ", n, " times is too large"));
      }
      if (seq.is_string()) {
        std::string out;
        for (int64_t k = 0; k < n; ++k) out += seq.as_string();
        return Value::String(std::move(out));
      }
      std::vector<Value> out;
      for (int64_t k = 0; k < n; ++k) {
        out.insert(out.end(), seq.as_list().begin(), seq.as_list().end());
      }
      return Value::List(std::move(out), seq.is_tuple());
    }
  }
  if (op == "%" && a.is_string()) {
    return TypeError(
        "printf-style string formatting ('%') is not supported; use '~' or format "
        "the string with filters");
  }
  return unsupported();
}

}  // namespace tpserve::chat
