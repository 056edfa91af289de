// common/request_id.h: the id rule that keeps gRPC from aborting on an id it cannot send, and
// ids from the kernel's random source.
#include "common/request_id.h"

#include <set>
#include <string>

#include "gtest/gtest.h"

namespace sambay {
namespace {

TEST(RequestIdTest, OnlyPrintableAsciiWithoutSpaces) {
  EXPECT_TRUE(IsValidRequestId("trace-abc-123"));
  EXPECT_TRUE(IsValidRequestId(std::string(kMaxRequestIdBytes, '~')));
  EXPECT_TRUE(IsValidRequestId("!"));
  EXPECT_FALSE(IsValidRequestId(""));
  EXPECT_FALSE(IsValidRequestId(std::string(kMaxRequestIdBytes + 1, 'a')));
  for (int c = 0; c < 256; ++c) {
    const std::string id = std::string("a") + static_cast<char>(c) + "b";
    EXPECT_EQ(IsValidRequestId(id), c >= 0x21 && c <= 0x7e) << "byte " << c;
  }
}

TEST(RequestIdTest, NewIdsAreValidDistinctAndCarry128Bits) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    const std::string id = NewRequestId();
    ASSERT_EQ(id.size(), 4u + 32u) << id;
    EXPECT_EQ(id.substr(0, 4), "req-");
    EXPECT_TRUE(IsValidRequestId(id)) << id;
    EXPECT_EQ(id.find_first_not_of("0123456789abcdef", 4), std::string::npos) << id;
    EXPECT_TRUE(seen.insert(id).second) << "repeated " << id;
  }
}

}  // namespace
}  // namespace sambay
