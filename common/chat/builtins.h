// Python/Jinja semantics the interpreter delegates to: attribute and item access (including the
// str/dict/list methods templates call), iteration, arithmetic, filters, tests and globals.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/chat/value.h"

namespace tpserve::chat {

// Argument `index` if passed positionally, else keyword `name`; null when absent.
const Value* FindArg(const CallArgs& args, size_t index, std::string_view name);

// `obj.name`: a dict key, a namespace attribute or a bound str/dict/list method. Missing →
// Undefined; any access on an Undefined is an error, as in jinja2's default Undefined.
absl::StatusOr<Value> GetAttr(const Value& obj, const std::string& name);
// `obj[key]`: list/str index (negative counts from the end), dict key, else falls back to GetAttr
// for string keys. Missing → Undefined.
absl::StatusOr<Value> GetItem(const Value& obj, const Value& key);
// `obj[start:stop:step]` on lists and strings (null bounds are Python's defaults).
absl::StatusOr<Value> Slice(const Value& obj, const Value& start, const Value& stop,
                            const Value& step);
// What `for x in v` walks: list items, dict keys, string code points; Undefined is empty.
absl::StatusOr<std::vector<Value>> Iterate(const Value& v);
// Python `needle in haystack`.
absl::StatusOr<bool> Contains(const Value& haystack, const Value& needle);
// Python binary operators + - * / // % ** and Jinja's ~ (string concatenation).
absl::StatusOr<Value> BinaryOp(std::string_view op, const Value& a, const Value& b);

bool IsKnownFilter(std::string_view name);
bool IsKnownTest(std::string_view name);
absl::StatusOr<Value> ApplyFilter(std::string_view name, const Value& input, const CallArgs& args);
absl::StatusOr<bool> ApplyTest(std::string_view name, const Value& input, const CallArgs& args);

// Globals transformers' environment provides: range, dict, namespace, raise_exception,
// strftime_now. `raise_exception` fails the render with kRaisedPrefix + its message.
Dict MakeGlobals();
inline constexpr std::string_view kRaisedPrefix = "chat template raised an exception: ";

}  // namespace tpserve::chat
