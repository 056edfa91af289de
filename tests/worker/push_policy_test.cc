// PushAllowList (--push-allow parsing and destination checks) and PeerChannels (the bounded LRU
// of channels to push destinations), in process.
#include "worker/push_policy.h"

#include "gtest/gtest.h"

namespace sambay {
namespace {

absl::StatusCode CheckCode(const PushAllowList& l, const std::string& address) {
  return l.Check(address).code();
}

TEST(PushAllowListTest, LoopbackIsTheDefault) {
  const PushAllowList l = PushAllowList::Loopback();
  EXPECT_EQ(CheckCode(l, "127.0.0.1:50052"), absl::StatusCode::kOk);
  EXPECT_EQ(CheckCode(l, "127.9.9.9:1"), absl::StatusCode::kOk);
  EXPECT_EQ(CheckCode(l, "[::1]:50052"), absl::StatusCode::kOk);
  EXPECT_EQ(CheckCode(l, "LocalHost:50052"), absl::StatusCode::kOk);
  EXPECT_EQ(CheckCode(l, "128.0.0.1:50052"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckCode(l, "169.254.169.254:80"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckCode(l, "[::2]:50052"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckCode(l, "localhost.evil.com:50052"), absl::StatusCode::kPermissionDenied);
  const absl::Status s = l.Check("10.0.0.1:5");
  EXPECT_NE(std::string(s.message()).find("destination.address"), std::string::npos) << s;
}

TEST(PushAllowListTest, MalformedDestinationsAreInvalid) {
  const PushAllowList l = PushAllowList::Loopback();
  for (const char* a : {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
                        "127.0.0.1:+5", "dns:///127.0.0.1:5", "unix:/tmp/s", "ipv4:127.0.0.1:5",
                        "::1:5", "[::1]", "[127.0.0.1]:5", "a b:5", "127.0.0.1:5/x"}) {
    EXPECT_EQ(CheckCode(l, a), absl::StatusCode::kInvalidArgument) << a;
  }
}

TEST(PushAllowListTest, EntryKinds) {
  auto l = PushAllowList::Parse("10.0.0.0/8, 192.168.1.7 ,fd00::/8,decode.ns:50052,Pods.Local");
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(CheckCode(*l, "10.255.1.2:1"), absl::StatusCode::kOk);
  EXPECT_EQ(CheckCode(*l, "11.0.0.1:1"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckCode(*l, "192.168.1.7:9"), absl::StatusCode::kOk);
  EXPECT_EQ(CheckCode(*l, "192.168.1.8:9"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckCode(*l, "[fd12::1]:9"), absl::StatusCode::kOk);
  EXPECT_EQ(CheckCode(*l, "[fe80::1]:9"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckCode(*l, "decode.ns:50052"), absl::StatusCode::kOk);
  EXPECT_EQ(CheckCode(*l, "decode.ns:50053"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckCode(*l, "pods.local:7"), absl::StatusCode::kOk);
  EXPECT_EQ(CheckCode(*l, "127.0.0.1:7"), absl::StatusCode::kPermissionDenied);
  auto prefix = PushAllowList::Parse("10.1.128.0/17");
  ASSERT_TRUE(prefix.ok());
  EXPECT_EQ(CheckCode(*prefix, "10.1.200.1:1"), absl::StatusCode::kOk);
  EXPECT_EQ(CheckCode(*prefix, "10.1.127.1:1"), absl::StatusCode::kPermissionDenied);
  auto any = PushAllowList::Parse("*");
  ASSERT_TRUE(any.ok());
  EXPECT_EQ(CheckCode(*any, "dns:///anything:5"), absl::StatusCode::kOk);
  auto none = PushAllowList::Parse("");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(CheckCode(*none, "127.0.0.1:5"), absl::StatusCode::kPermissionDenied);
}

TEST(PushAllowListTest, BadEntriesNameTheFlag) {
  for (const char* spec : {"300.1.1.1/8", "10.0.0.0/33", "::1/129", "10.0.0.0/x", "host:0",
                           "host:99999", "a b", "dns:///x:1", "*,!"}) {
    auto l = PushAllowList::Parse(spec);
    ASSERT_FALSE(l.ok()) << spec;
    EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(l.status().message()).find("--push-allow"), std::string::npos)
        << l.status();
  }
}

TEST(PeerChannelsTest, BoundedLeastRecentlyUsed) {
  PeerChannels peers(RpcLimits{}, 3);
  auto a = peers.Get("127.0.0.1:1");
  auto b = peers.Get("127.0.0.1:2");
  EXPECT_EQ(peers.Get("127.0.0.1:1"), a);  // a is now the most recent
  peers.Get("127.0.0.1:3");
  peers.Get("127.0.0.1:4");  // evicts b, the least recently used
  EXPECT_EQ(peers.size(), 3u);
  EXPECT_EQ(peers.Get("127.0.0.1:1"), a);
  EXPECT_NE(peers.Get("127.0.0.1:2"), b);  // a new channel; b stays valid for its holder
  for (int i = 0; i < 1000; ++i) peers.Get("127.0.0.1:" + std::to_string(1000 + i));
  EXPECT_EQ(peers.size(), 3u);
}

}  // namespace
}  // namespace sambay
