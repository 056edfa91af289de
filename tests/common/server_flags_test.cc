// RegisterServerFlags / RegisterClientFlags: the shared flags, their defaults and help, and the
// checks that go with them.
#include <string>
#include <vector>

#include "common/client_flags.h"
#include "common/flags.h"
#include "common/server_util.h"
#include "gtest/gtest.h"

namespace sambay {
namespace {

absl::Status ParseArgs(FlagSet& fs, std::vector<std::string> args) {
  return fs.Parse(args, [](const char*) -> const char* { return nullptr; });
}

TEST(ServerFlagsTest, DefaultsAndHelpFromSpec) {
  ServerFlags f;
  FlagSet fs("prog", "SAMBAY_");
  RegisterServerFlags(fs, &f,
                      {.port = 50050,
                       .metrics_port = 9300,
                       .host_help = "HOST HELP",
                       .port_help = "PORT HELP",
                       .metrics_host_help = "METRICS HOST HELP",
                       .drain_timeout_help = "DRAIN HELP",
                       .keepalive_timeout_help = "KEEPALIVE TIMEOUT HELP"});
  ASSERT_TRUE(ParseArgs(fs, {}).ok());
  EXPECT_EQ(f.port, 50050);
  EXPECT_EQ(f.metrics_port, 9300);
  const std::string usage = fs.Usage();
  for (const char* want :
       {"--port (SAMBAY_PORT; default \"50050\")\n      PORT HELP",
        "--metrics-port (SAMBAY_METRICS_PORT; default \"9300\")",
        "--host (SAMBAY_HOST; default \"127.0.0.1\")\n      HOST HELP",
        "--metrics-host (SAMBAY_METRICS_HOST; default \"127.0.0.1\")\n      METRICS HOST HELP",
        "--drain-timeout (SAMBAY_DRAIN_TIMEOUT; default \"60\")\n      DRAIN HELP",
        "--keepalive-seconds (SAMBAY_KEEPALIVE_SECONDS; default \"20\")",
        "--keepalive-timeout-seconds (SAMBAY_KEEPALIVE_TIMEOUT_SECONDS; default \"10\")\n"
        "      KEEPALIVE TIMEOUT HELP",
        "--port-file (SAMBAY_PORT_FILE; default \"\")",
        "--log-level (SAMBAY_LOG_LEVEL; default \"info\")"}) {
    EXPECT_NE(usage.find(want), std::string::npos) << want << "\n" << usage;
  }
  ASSERT_TRUE(ParseArgs(fs, {"--port", "7", "--keepalive-seconds=3"}).ok());
  EXPECT_EQ(f.port, 7);
  EXPECT_EQ(ServerRpcLimits(f).keepalive_seconds, 3);
  EXPECT_EQ(ServerRpcLimits(f).keepalive_timeout_seconds, 10);
}

TEST(ServerFlagsTest, Checks) {
  EXPECT_TRUE(CheckServerFlags(ServerFlags{}).ok());
  ServerFlags f;
  f.port = 65536;
  EXPECT_EQ(CheckServerFlags(f).message(), "--port: must be in [0, 65535]");
  f = ServerFlags{};
  f.metrics_port = -1;
  EXPECT_EQ(CheckServerFlags(f).message(), "--metrics-port: must be in [0, 65535]");
  f = ServerFlags{};
  f.drain_timeout = -1;
  EXPECT_EQ(CheckServerFlags(f).message(), "--drain-timeout: must be >= 0");
  f = ServerFlags{};
  f.keepalive_timeout_seconds = 0;
  EXPECT_FALSE(CheckServerFlags(f).ok());
}

TEST(ClientFlagsTest, RegisterAndCheck) {
  ClientFlags f;
  FlagSet fs("prog", "SAMBAY_");
  RegisterClientFlags(fs, &f, "ADDRESS HELP", "TIMEOUT HELP");
  const std::string usage = fs.Usage();
  EXPECT_NE(usage.find("--address (SAMBAY_ADDRESS; default \"127.0.0.1:50050\")\n      ADDRESS "
                       "HELP"),
            std::string::npos)
      << usage;
  EXPECT_NE(usage.find("--timeout (SAMBAY_TIMEOUT; default \"0\")\n      TIMEOUT HELP"),
            std::string::npos)
      << usage;
  EXPECT_NE(usage.find("--max-message-mib (SAMBAY_MAX_MESSAGE_MIB; default \"32\")\n      "
                       "Largest gRPC message (MiB)."),
            std::string::npos)
      << usage;
  EXPECT_TRUE(CheckClientFlags(f).ok());
  ASSERT_TRUE(ParseArgs(fs, {"--timeout", "-1"}).ok());
  EXPECT_EQ(CheckClientFlags(f).message(), "--timeout: must be >= 0");
  ASSERT_TRUE(ParseArgs(fs, {"--timeout", "1", "--max-message-mib", "0"}).ok());
  EXPECT_EQ(CheckClientFlags(f).message(), "--max-message-mib: must be in [1, 2047]");
  ASSERT_TRUE(ParseArgs(fs, {"--max-message-mib", "1", "--address="}).ok());
  EXPECT_EQ(CheckClientFlags(f).message(), "--address: a host:port is required");
}

}  // namespace
}  // namespace sambay
