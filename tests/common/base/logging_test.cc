#include "common/base/logging.h"

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tpserve {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

// Routes the default logger to `out` for the test's lifetime.
class CaptureLog {
 public:
  CaptureLog() {
    previous_ = spdlog::default_logger();
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  }
  ~CaptureLog() { spdlog::set_default_logger(previous_); }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> previous_;
};

TEST(LoggingTest, JsonLinesParseAndKeepTheMessageExactly) {
  CaptureLog capture;
  ASSERT_TRUE(ConfigureLogging({.format = "json", .level = "info"}, "rank 1").ok());
  const std::string message = "load \"model.gguf\": 50% \\ done\n\tnext\x01 caf\xc3\xa9";
  spdlog::info("{}", message);
  spdlog::debug("hidden at info");
  std::istringstream lines(capture.text());
  std::string line;
  ASSERT_TRUE(std::getline(lines, line));
  const nlohmann::json j = nlohmann::json::parse(line);
  EXPECT_EQ(j["msg"], message);
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["process"], "rank 1");
  EXPECT_THAT(j["ts"].get<std::string>(),
              MatchesRegex("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\\.[0-9]{6}Z"));
  EXPECT_FALSE(std::getline(lines, line)) << "debug line printed at level info: " << line;
}

TEST(LoggingTest, TextLinesNameTheProcessAndHonourTheLevel) {
  CaptureLog capture;
  ASSERT_TRUE(ConfigureLogging({.format = "text", .level = "warn"}, "coordinator").ok());
  spdlog::info("quiet");
  spdlog::warn("loud {}", 7);
  EXPECT_THAT(capture.text(), MatchesRegex("\\[coordinator\\] [0-9:.]+ warning loud 7\n"));
}

TEST(LoggingTest, BadOptionsAreRejectedNamingTheFlag) {
  absl::Status st = ConfigureLogging({.format = "xml", .level = "info"}, "x");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("--log-format"));
  st = ConfigureLogging({.format = "text", .level = "loud"}, "x");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("--log-level"));
}

TEST(LoggingTest, FlagsParseAndRefuseUnknownValues) {
  CLI::App app;
  LogOptions o;
  AddLogFlags(app, o);
  const char* good[] = {"prog", "--log-format", "json", "--log-level", "debug"};
  app.parse(5, good);
  EXPECT_EQ(o.format, "json");
  EXPECT_EQ(o.level, "debug");
  CLI::App app2;
  LogOptions o2;
  AddLogFlags(app2, o2);
  const char* bad[] = {"prog", "--log-format", "yaml"};
  EXPECT_THROW(app2.parse(3, bad), CLI::ValidationError);
}

TEST(LoggingTest, JsonEscapeControlCharacters) {
  EXPECT_EQ(JsonEscape("a\"b\\c\n\x1f"), "a\\\"b\\\\c\\n\\u001f");
}

}  // namespace
}  // namespace tpserve
