// Globals of transformers' chat-template environment: range, dict, namespace,
// raise_exception, strftime_now.

#include <chrono>
#include <ctime>

#include "absl/status/status.h"
#include "common/base/status_macros.h"
#include "common/chat/builtins.h"
#include "common/chat/text_util.h"

namespace tpserve::chat {
namespace {

absl::Status Error(std::string_view message) {
  return absl::InvalidArgumentError(std::string(message));
}

}  // namespace

Dict MakeGlobals() {
  Dict g;
  g.Set("range", Value::Callable("range", [](const CallArgs& a) -> absl::StatusOr<Value> {
          std::vector<int64_t> p;
          for (const Value& v : a.positional) {
            if (!v.is_int() && !v.is_bool()) return Error("range() arguments must be integers");
            p.push_back(v.as_int());
          }
          if (p.empty() || p.size() > 3) return Error("range() takes 1 to 3 arguments");
          const int64_t start = p.size() == 1 ? 0 : p[0], stop = p.size() == 1 ? p[0] : p[1];
          const int64_t step = p.size() == 3 ? p[2] : 1;
          if (step == 0) return Error("range() arg 3 must not be zero");
          std::vector<Value> out;
          for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
            // jinja2's sandbox caps ranges at MAX_RANGE items.
            if (out.size() >= 100000)
              return Error(
                  "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
            out.push_back(Value::Int(i));
            if (__builtin_add_overflow(i, step, &i)) break;
          }
          return Value::List(std::move(out));
        }));
  auto kwargs_dict = [](const CallArgs& a) -> absl::StatusOr<Dict> {
    Dict d;
    for (const Value& v : a.positional) {
      if (!v.is_dict()) return Error("dict()/namespace() positional arguments must be mappings");
      for (const auto& [k, x] : v.as_dict().items()) d.Set(k, x);
    }
    for (const auto& [k, x] : a.keyword) d.Set(k, x);
    return d;
  };
  g.Set("dict", Value::Callable("dict", [kwargs_dict](const CallArgs& a) -> absl::StatusOr<Value> {
          ASSIGN_OR_RETURN(Dict d, kwargs_dict(a));
          return Value::MakeDict(std::move(d));
        }));
  g.Set("namespace",
        Value::Callable("namespace", [kwargs_dict](const CallArgs& a) -> absl::StatusOr<Value> {
          ASSIGN_OR_RETURN(Dict d, kwargs_dict(a));
          for (const auto& [k, _] : d.items()) {
            if (!k.empty() && k[0] == '_') {
              return Error(
                  Cat("Chat templates cannot store underscore-prefixed attributes on a "
                      "namespace, but got '",
                      k, "'"));
            }
          }
          return Value::Namespace(std::move(d));
        }));
  g.Set("raise_exception",
        Value::Callable("raise_exception", [](const CallArgs& a) -> absl::StatusOr<Value> {
          const Value* msg = FindArg(a, 0, "message");
          return Error(Cat(kRaisedPrefix, msg != nullptr ? ToStr(*msg) : ""));
        }));
  g.Set("strftime_now",
        Value::Callable("strftime_now", [](const CallArgs& a) -> absl::StatusOr<Value> {
          const Value* fmt = FindArg(a, 0, "format");
          if (fmt == nullptr || !fmt->is_string())
            return Error("strftime_now() needs a format string");
          const std::time_t now =
              std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
          std::tm tm;
          localtime_r(&now, &tm);
          char buf[256];
          const size_t n = std::strftime(buf, sizeof(buf), fmt->as_string().c_str(), &tm);
          return Value::String(std::string(buf, n));
        }));
  return g;
}

}  // namespace tpserve::chat
