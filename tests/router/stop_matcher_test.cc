// StopMatcher (router/request.h), in process.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "router/request.h"

namespace sambay {
namespace {

// Feeds `text` in pieces of `step` bytes; the text sent and whether a stop string matched.
std::string Feed(const std::vector<std::string>& stops, const std::string& text, size_t step,
                 bool* stopped) {
  StopMatcher m(stops);
  std::string out;
  *stopped = false;
  for (size_t off = 0; off < text.size() && !*stopped; off += step) {
    out += m.Push(text.substr(off, step), stopped);
  }
  if (!*stopped) out += m.Flush();
  return out;
}

// Found by fuzzing: with stops "o" and "&ox", the text "..&ox.." gave "..&" fed byte by byte
// (the "o" completes first) but ".." fed whole (the cut was at the earliest start). The cut is
// now before the stop that completes first, whatever the pieces.
TEST(StopMatcherTest, TheCutDoesNotDependOnThePieces) {
  const std::vector<std::string> stops = {"o", "\xc3\xa9ox\x0c", "&ox"};
  const std::string text = "\x08\x10\x1a\x03&ox\x1a\x31\xc3\xa9qx\x0c";
  for (size_t step : {1, 2, 3, 7, 100}) {
    bool stopped = false;
    EXPECT_EQ(Feed(stops, text, step, &stopped), "\x08\x10\x1a\x03&") << step;
    EXPECT_TRUE(stopped) << step;
  }
}

TEST(StopMatcherTest, TiesGoToTheEarlierStartAndNoStopPassesEverything) {
  bool stopped = false;
  for (size_t step : {1, 4, 50}) {
    // "x" and "ox" both complete at the last byte: the cut is before "ox".
    EXPECT_EQ(Feed({"x", "ox"}, "hello ox", step, &stopped), "hello ") << step;
    EXPECT_TRUE(stopped);
    EXPECT_EQ(Feed({"zz"}, "hello z", step, &stopped), "hello z") << step;
    EXPECT_FALSE(stopped);
  }
}

}  // namespace
}  // namespace sambay
