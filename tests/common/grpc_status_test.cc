#include "common/grpc_status.h"

#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace sambay {
namespace {

TEST(GrpcCodeNameTest, NamesCanonicalCodes) {
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::UNKNOWN), "UNKNOWN");
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::INVALID_ARGUMENT), "INVALID_ARGUMENT");
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::UNAVAILABLE), "UNAVAILABLE");
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
}

// Every canonical code (0..16) has the same name as Abseil gives its numerically equal code.
TEST(GrpcCodeNameTest, MatchesAbslNamesForEveryCanonicalCode) {
  for (int i = 0; i <= 16; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(std::string(GrpcCodeName(static_cast<grpc::StatusCode>(i))),
              absl::StatusCodeToString(static_cast<absl::StatusCode>(i)));
  }
}

TEST(GrpcCodeNameTest, OutOfRangeIsUnknown) {
  EXPECT_STREQ(GrpcCodeName(static_cast<grpc::StatusCode>(17)), "UNKNOWN");
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::DO_NOT_USE), "UNKNOWN");
}

}  // namespace
}  // namespace sambay
