// FlagSet: flags and SAMBAY_* environment variables, precedence, types, errors.
#include "common/flags.h"

#include <map>
#include <string>

#include "gtest/gtest.h"

namespace sambay {
namespace {

struct Fixture {
  std::string model;
  int64_t port = 50051;
  double lease = 30;
  bool verbose = false;
  FlagSet fs{"prog", "SAMBAY_"};
  Fixture() {
    fs.AddString("model", &model, "model dir");
    fs.AddInt("port", &port, "port");
    fs.AddDouble("lease-timeout", &lease, "lease");
    fs.AddBool("verbose", &verbose, "verbose");
  }
  absl::Status Parse(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
    return fs.Parse(args, [env](const char* n) -> const char* {
      auto it = env.find(n);
      return it == env.end() ? nullptr : it->second.c_str();
    });
  }
};

TEST(FlagSetTest, FlagsEnvAndDefaults) {
  Fixture f;
  ASSERT_TRUE(f.Parse({"--model", "/m", "--lease-timeout=2.5", "--verbose"},
                      {{"SAMBAY_PORT", "7000"}, {"SAMBAY_MODEL", "/env"}})
                  .ok());
  EXPECT_EQ(f.model, "/m");  // flag beats env
  EXPECT_EQ(f.port, 7000);   // env beats default
  EXPECT_DOUBLE_EQ(f.lease, 2.5);
  EXPECT_TRUE(f.verbose);
  const auto eff = f.fs.Effective();
  EXPECT_EQ(eff["flags"]["port"], 7000);
  EXPECT_EQ(eff["set_by"]["port"], "env");
  EXPECT_EQ(eff["set_by"]["model"], "flag");
  EXPECT_FALSE(eff["set_by"].contains("lease-timeout") && eff["set_by"]["lease-timeout"] != "flag");
  EXPECT_EQ(f.fs.EnvName("lease-timeout"), "SAMBAY_LEASE_TIMEOUT");
}

TEST(FlagSetTest, UnderscoresAndBoolValues) {
  Fixture f;
  ASSERT_TRUE(f.Parse({"--lease_timeout", "4", "--verbose", "false"}).ok());
  EXPECT_DOUBLE_EQ(f.lease, 4);
  EXPECT_FALSE(f.verbose);
}

TEST(FlagSetTest, ErrorsNameTheFlagOrVariable) {
  Fixture f;
  auto msg = [](const absl::Status& s) { return std::string(s.message()); };
  EXPECT_NE(msg(f.Parse({"--port", "x"})).find("--port"), std::string::npos);
  EXPECT_NE(msg(f.Parse({}, {{"SAMBAY_PORT", "12abc"}})).find("SAMBAY_PORT"), std::string::npos);
  EXPECT_NE(msg(f.Parse({"--lease-timeout=nan"})).find("--lease-timeout"), std::string::npos);
  EXPECT_NE(msg(f.Parse({"--nope=1"})).find("unknown flag --nope"), std::string::npos);
  EXPECT_NE(msg(f.Parse({"positional"})).find("unexpected argument"), std::string::npos);
  EXPECT_NE(msg(f.Parse({"--model"})).find("missing value"), std::string::npos);
  EXPECT_EQ(msg(f.Parse({"--help"})), FlagSet::kHelpRequested);
  EXPECT_NE(f.fs.Usage().find("SAMBAY_LEASE_TIMEOUT"), std::string::npos);
}

}  // namespace
}  // namespace sambay
