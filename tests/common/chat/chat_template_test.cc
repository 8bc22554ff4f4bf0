// Chat templates render byte-identically to transformers' apply_chat_template, and the
// interpreter's pieces (expressions, filters, loops, whitespace control) match jinja2. Expected
// strings come from tests/data/golden/chat/chat_goldens.json, written by
// scripts/reference/make_chat_goldens.py.
#include "common/chat/chat_template.h"

#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace tpserve {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

const char kGoldenDir[] = "tests/data/golden/chat/";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << path << " (tests run from the repository root)";
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const nlohmann::ordered_json& Goldens() {
  static const auto* goldens = new nlohmann::ordered_json(
      nlohmann::ordered_json::parse(ReadFile(std::string(kGoldenDir) + "chat_goldens.json")));
  return *goldens;
}

// Templates that call strftime_now() unconditionally have today's date replaced by
// "<<strftime_now:FORMAT>>" in the goldens; put back the date this process sees.
std::string WithToday(std::string expected) {
  const std::string open = "<<strftime_now:";
  for (size_t at = expected.find(open); at != std::string::npos; at = expected.find(open, at)) {
    const size_t end = expected.find(">>", at);
    const std::string format = expected.substr(at + open.size(), end - at - open.size());
    const std::time_t now = std::time(nullptr);
    std::tm tm;
    localtime_r(&now, &tm);
    char buf[64];
    const size_t n = std::strftime(buf, sizeof(buf), format.c_str(), &tm);
    expected.replace(at, end + 2 - at, std::string(buf, n));
  }
  return expected;
}

// Python's message for a TemplateError raised by raise_exception(), e.g.
// "TemplateError: Conversation roles must alternate ..." → "Conversation roles must alternate ...".
std::string RaisedMessage(const std::string& python_error) {
  const std::string prefix = "TemplateError: ";
  return python_error.rfind(prefix, 0) == 0 ? python_error.substr(prefix.size()) : "";
}

TEST(ChatTemplateGoldenTest, RealTemplatesMatchTransformers) {
  const auto& cases = Goldens()["cases"];
  ASSERT_GT(cases.size(), 450u);
  int rendered = 0, errors = 0;
  for (const auto& c : cases) {
    const std::string name = c["template"];
    SCOPED_TRACE(name + " / " + c["conversation"].get<std::string>() +
                 " / add_generation_prompt=" + c["context"]["add_generation_prompt"].dump());
    auto t =
        ChatTemplate::Parse(ReadFile(std::string(kGoldenDir) + "templates/" + name + ".jinja"));
    ASSERT_TRUE(t.ok()) << t.status();
    auto out = t->RenderOrdered(c["context"]);
    if (c.contains("expected")) {
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_EQ(*out, WithToday(c["expected"].get<std::string>()));
      ++rendered;
    } else {
      ASSERT_FALSE(out.ok()) << "expected an error like: " << c["error"] << "\ngot: " << *out;
      const std::string raised = RaisedMessage(c["error"]);
      if (!raised.empty()) {
        EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
        EXPECT_THAT(std::string(out.status().message()),
                    HasSubstr("chat template raised an exception: " + raised));
      }
      ++errors;
    }
  }
  EXPECT_GT(rendered, 350);
  EXPECT_GT(errors, 20);
}

// Whether every message is a flat {role, content: string} dict, so that nlohmann::json's sorted
// keys cannot change what the template sees.
bool FlatMessages(const nlohmann::ordered_json& messages) {
  for (const auto& m : messages) {
    if (m.size() != 2 || !m.contains("role") || !m["content"].is_string()) return false;
  }
  return true;
}

// RenderChat (the server's entry point) passes exactly what transformers passes: every golden
// without extra template kwargs, through the key-order-keeping overload (with tools), and the
// nlohmann::json overload where sorted keys cannot matter.
TEST(ChatTemplateGoldenTest, RenderChatMatchesTransformers) {
  int checked = 0, checked_unordered = 0;
  for (const auto& c : Goldens()["cases"]) {
    const auto& ctx = c["context"];
    if (!c.contains("expected") || ctx.size() != 6) continue;  // 6: no extra kwargs.
    const std::string name = c["template"];
    SCOPED_TRACE(name + " / " + c["conversation"].get<std::string>());
    auto t =
        ChatTemplate::Parse(ReadFile(std::string(kGoldenDir) + "templates/" + name + ".jinja"));
    ASSERT_TRUE(t.ok()) << t.status();
    const bool agp = ctx["add_generation_prompt"].get<bool>();
    const std::string bos = ctx["bos_token"], eos = ctx["eos_token"];
    const std::string expected = WithToday(c["expected"].get<std::string>());
    auto out = RenderChat(*t, ctx["messages"], agp, bos, eos, ctx["tools"]);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(*out, expected);
    ++checked;
    if (ctx["tools"].is_null() && FlatMessages(ctx["messages"])) {
      out = RenderChat(*t, nlohmann::json::parse(ctx["messages"].dump()), agp, bos, eos);
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_EQ(*out, expected);
      ++checked_unordered;
    }
  }
  EXPECT_GT(checked, 300);
  EXPECT_GT(checked_unordered, 250);
}

TEST(ChatTemplateGoldenTest, SnippetsMatchJinja2) {
  const auto& snippets = Goldens()["snippets"];
  ASSERT_GT(snippets.size(), 80u);
  for (const auto& s : snippets) {
    const std::string name = s["name"];
    SCOPED_TRACE(name + ": " + s["template"].get<std::string>());
    auto t = ChatTemplate::Parse(s["template"].get<std::string>());
    ASSERT_TRUE(t.ok()) << t.status();
    auto out = t->RenderOrdered(s["context"]);
    if (s.contains("expected")) {
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_EQ(*out, s["expected"].get<std::string>());
    } else {
      EXPECT_FALSE(out.ok()) << "jinja2 raised " << s["error"] << " but we rendered: " << *out;
      if (!out.ok()) {
        EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
        EXPECT_THAT(std::string(out.status().message()), StartsWith("chat template"));
      }
    }
  }
}

// Llama 3.2 prints today's date through strftime_now("%d %b %Y") when date_string is not given.
TEST(ChatTemplateTest, StrftimeNowPrintsADate) {
  auto t =
      ChatTemplate::Parse(ReadFile(std::string(kGoldenDir) + "templates/llama-3.2-instruct.jinja"));
  ASSERT_TRUE(t.ok()) << t.status();
  auto out = RenderChat(*t, nlohmann::json::array({{{"role", "user"}, {"content", "hi"}}}), true,
                        "<|begin_of_text|>", "<|eot_id|>");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(std::regex_search(*out, std::regex("Today Date: \\d\\d [A-Z][a-z]{2} \\d{4}\n\n")))
      << *out;
}

struct BadTemplate {
  const char* source;
  const char* construct;  // Must appear in the error message.
  const char* position;   // "line L:C" of the offending token.
};

TEST(ChatTemplateTest, UnsupportedConstructsFailAtParseTimeWithPosition) {
  const BadTemplate cases[] = {
      {"{% extends 'base.html' %}", "'{% extends %}'", "line 1:4"},
      {"ok\n  {% include 'x.jinja' %}", "'{% include %}'", "line 2:6"},
      {"{% import 'm' as m %}", "'{% import %}'", "line 1:4"},
      {"{% from 'm' import f %}", "'{% from %}'", "line 1:4"},
      {"{% block body %}x{% endblock %}", "'{% block %}'", "line 1:4"},
      {"{% call f() %}x{% endcall %}", "'{% call %}'", "line 1:4"},
      {"{% for x in y recursive %}{% endfor %}", "recursive", "line 1:15"},
      {"{{ x | frobnicate }}", "filter 'frobnicate'", "line 1:8"},
      {"{{ x is frobbed }}", "test 'frobbed'", "line 1:9"},
      {"{{ f(*args) }}", "'*args'", "line 1:6"},
      {"{% frob %}", "tag 'frob'", "line 1:4"},
  };
  for (const auto& c : cases) {
    auto t = ChatTemplate::Parse(c.source);
    ASSERT_FALSE(t.ok()) << c.source;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(c.construct)) << c.source;
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(c.position)) << c.source;
  }
}

TEST(ChatTemplateTest, SyntaxErrorsNameTheProblem) {
  const BadTemplate cases[] = {
      {"{% if x %}never closed", "expected elif, else, endif", "line 1:23"},
      {"{{ 'unterminated }}", "unterminated string", "line 1:4"},
      {"{{ x ", "never closed", "line 1:1"},
      {"{# comment", "'#}'", "line 1:1"},
      {"{% for x in %}{% endfor %}", "expected an expression", "line 1:13"},
      {"{{ (1, 2] }}", "unexpected ']'", "line 1:9"},
      {"{% endfor %}", "unexpected tag 'endfor'", "line 1:4"},
  };
  for (const auto& c : cases) {
    auto t = ChatTemplate::Parse(c.source);
    ASSERT_FALSE(t.ok()) << c.source;
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(c.construct)) << c.source;
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(c.position)) << c.source;
  }
}

TEST(ChatTemplateTest, RuntimeErrorsCarryPosition) {
  auto t = ChatTemplate::Parse("line one\n{{ 1 + 'a' }}");
  ASSERT_TRUE(t.ok()) << t.status();
  auto out = t->Render(nlohmann::json::object());
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(std::string(out.status().message()), HasSubstr("line 2:"));
  EXPECT_THAT(std::string(out.status().message()), HasSubstr("unsupported operand type(s) for +"));
}

TEST(ChatTemplateTest, ContextMustBeAnObject) {
  auto t = ChatTemplate::Parse("x");
  ASSERT_TRUE(t.ok());
  EXPECT_FALSE(t->Render(nlohmann::json::array()).ok());
  EXPECT_FALSE(RenderChat(*t, nlohmann::json::object(), true, "", "").ok());
}

// Hostile templates fail cleanly instead of exhausting the native stack.
TEST(ChatTemplateTest, NestingAndTagLengthAreBounded) {
  const std::string deep_parens =
      "{{ " + std::string(1000, '(') + "1" + std::string(1000, ')') + " }}";
  auto t = ChatTemplate::Parse(deep_parens);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("nested deeper than"));

  std::string deep_ifs;
  for (int i = 0; i < 2000; ++i) deep_ifs += "{% if true %}";
  t = ChatTemplate::Parse(deep_ifs);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("nested deeper than"));

  std::string long_sum = "{{ 1";
  for (int i = 0; i < 5000; ++i) long_sum += " + 1";
  t = ChatTemplate::Parse(long_sum + " }}");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("tokens"));

  // Within the limits, deep templates still work.
  std::string ok_sum = "{{ 0";
  for (int i = 0; i < 500; ++i) ok_sum += " + 2";
  t = ChatTemplate::Parse(ok_sum + " }}");
  ASSERT_TRUE(t.ok()) << t.status();
  auto out = t->Render(nlohmann::json::object());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "1000");
}

// Garbled versions of every real template (deleted, duplicated and injected characters) either
// parse and render or fail with a chat-template error; none may crash or hang. Fixed seed.
TEST(ChatTemplateTest, MutatedTemplatesFailCleanly) {
  std::mt19937 rng(20261128);
  const std::string inject = "{}%#-+()[]'\"|.,:=~ \nabcis";
  const auto context = nlohmann::ordered_json::parse(
      R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
          {"role": "assistant", "content": "a"}], "add_generation_prompt": true,
          "bos_token": "<s>", "eos_token": "</s>", "tools": null, "documents": null})");
  int parsed = 0, rendered = 0, total = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(kGoldenDir) + "templates")) {
    const std::string original = ReadFile(entry.path().string());
    for (int i = 0; i < 150; ++i) {
      std::string s = original;
      const int edits = 1 + static_cast<int>(rng() % 3);
      for (int e = 0; e < edits && !s.empty(); ++e) {
        const size_t at = rng() % s.size();
        const size_t len = std::min<size_t>(1 + rng() % 8, s.size() - at);
        switch (rng() % 3) {
          case 0:
            s.erase(at, len);
            break;
          case 1:
            s.insert(at, s.substr(at, len));
            break;
          default:
            s.insert(at, 1, inject[rng() % inject.size()]);
            break;
        }
      }
      ++total;
      auto t = ChatTemplate::Parse(s);
      if (!t.ok()) {
        EXPECT_THAT(std::string(t.status().message()), StartsWith("chat template")) << s;
        continue;
      }
      ++parsed;
      auto out = t->RenderOrdered(context);
      if (out.ok()) {
        ++rendered;
      } else {
        EXPECT_THAT(std::string(out.status().message()), StartsWith("chat template")) << s;
      }
    }
  }
  EXPECT_GT(total, 2000);
  // Both paths are exercised: some mutants still parse and render, many do not.
  EXPECT_GT(parsed, total / 10);
  EXPECT_LT(parsed, total);
  EXPECT_GT(rendered, 0);
}

// Python would compute these with bigints or try to allocate terabytes; here they are clean
// errors (documented differences), never UB, hangs or crashes.
TEST(ChatTemplateTest, ArithmeticLimitsAreErrors) {
  for (const char* source :
       {"{{ 2 ** 100 }}", "{{ 2 ** 1000000000000 }}", "{{ 9223372036854775807 + 1 }}",
        "{{ 'x' * 1000000000000 }}", "{{ [1, 2] * 1000000000000 }}", "{{ 1e300|int }}"}) {
    auto t = ChatTemplate::Parse(source);
    ASSERT_TRUE(t.ok()) << source << ": " << t.status();
    auto out = t->Render(nlohmann::json::object());
    EXPECT_FALSE(out.ok()) << source << " rendered " << *out;
  }
  // 100000 x 32 MiB of output would be 3 TiB: refused once the prompt passes 64 MiB.
  auto big = ChatTemplate::Parse(
      "{% set s = 'x' * 33554432 %}{% for i in range(100000) %}{{ s }}{% endfor %}");
  ASSERT_TRUE(big.ok()) << big.status();
  auto big_out = big->Render(nlohmann::json::object());
  ASSERT_FALSE(big_out.ok());
  EXPECT_THAT(std::string(big_out.status().message()), HasSubstr("rendered text exceeds"));

  auto t = ChatTemplate::Parse("{{ 2 ** 62 }} {{ (-2) ** 63 }} {{ 3 ** 39 }}");
  ASSERT_TRUE(t.ok()) << t.status();
  auto out = t->Render(nlohmann::json::object());
  ASSERT_TRUE(out.ok()) << out.status();
  // Python: 2**62, (-2)**63, 3**39.
  EXPECT_EQ(*out, "4611686018427387904 -9223372036854775808 4052555153018976267");
}

TEST(ChatTemplateTest, RecursionIsBounded) {
  auto t = ChatTemplate::Parse("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  ASSERT_TRUE(t.ok()) << t.status();
  auto out = t->Render(nlohmann::json::object());
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(std::string(out.status().message()), HasSubstr("recursed deeper than"));
}

}  // namespace
}  // namespace tpserve
