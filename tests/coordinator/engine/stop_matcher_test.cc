#include "coordinator/engine/stop_matcher.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace tpserve::engine {
namespace {

struct Case {
  std::vector<std::string> stops;
  bool include;
  std::vector<std::string> deltas;
  std::string expect_text;  // everything emitted (Push results + Flush when not stopped)
  std::string expect_match;
};

TEST(StopMatcherTest, Table) {
  const std::vector<Case> cases = {
      {{}, false, {"Hello", " world"}, "Hello world", ""},
      {{"STOP"}, false, {"ab", "cST", "OPde"}, "abc", "STOP"},  // spans two deltas
      {{"STOP"}, true, {"ab", "cST", "OPde"}, "abcSTOP", "STOP"},
      {{"STOP"}, false, {"ab", "cST", "x"}, "abcSTx", ""},  // held back, then released
      {{"\n\n", "User:"}, false, {"Hi", "\n", "U", "ser", ":"}, "Hi\n", "User:"},
      {{"aab"}, false, {"a", "a", "a", "b"}, "a", "aab"},  // overlapping prefixes
      {{"ab", "b"}, false, {"xab"}, "x", "ab"},            // earliest match wins
      {{"END"}, false, {"E", "N"}, "EN", ""},              // flushed at the end
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    StopMatcher m(c.stops, c.include);
    std::string text, matched;
    bool stopped = false;
    for (const std::string& d : c.deltas) {
      StopMatcher::Result r = m.Push(d);
      EXPECT_FALSE(stopped && !r.text.empty()) << "case " << i << ": text after the stop";
      text += r.text;
      if (r.stopped) {
        stopped = true;
        matched = r.matched;
      }
    }
    if (!stopped) text += m.Flush();
    EXPECT_EQ(text, c.expect_text) << "case " << i;
    EXPECT_EQ(matched, c.expect_match) << "case " << i;
  }
}

TEST(StopMatcherTest, HoldsBackOnlyPossibleStopPrefixes) {
  StopMatcher m({"</s>"}, false);
  EXPECT_EQ(m.Push("abc<").text, "abc");
  EXPECT_EQ(m.Push("/").text, "");
  EXPECT_EQ(m.Push("x").text, "</x");
}

}  // namespace
}  // namespace tpserve::engine
