#include "tools/cli_util.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"

namespace sambay {

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text, const std::string& flag) {
  std::vector<int32_t> ids;
  for (absl::string_view part :
       absl::StrSplit(text, absl::ByAnyChar(", \t\r\n"), absl::SkipEmpty())) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": \"", part, "\" is not an integer token id"));
    }
    ids.push_back(v);
  }
  return ids;
}

absl::StatusOr<std::vector<int32_t>> ReadIdsFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("--ids-file: cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseIds(ss.str(), "--ids-file " + path);
}

std::vector<std::string> DashesToUnderscores(int argc, char** argv) {
  std::vector<std::string> out;
  bool flags_done = false;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") flags_done = true;
    if (!flags_done && i > 0 && a.size() > 2 && a[0] == '-' && a[1] == '-') {
      const size_t end = std::min(a.find('='), a.size());
      for (size_t j = 2; j < end; ++j) {
        if (a[j] == '-') a[j] = '_';
      }
    }
    out.push_back(std::move(a));
  }
  return out;
}

std::vector<std::string> ParseFlags(int argc, char** argv, const char* usage) {
  absl::SetProgramUsageMessage(usage);
  std::vector<std::string> storage = DashesToUnderscores(argc, argv);
  std::vector<char*> fixed;
  for (std::string& a : storage) fixed.push_back(a.data());
  std::vector<char*> args = absl::ParseCommandLine(static_cast<int>(fixed.size()), fixed.data());
  return std::vector<std::string>(args.begin(), args.end());
}

int ReportError(const char* tool, const absl::Status& status) {
  std::string msg(status.message());
  msg = absl::StrReplaceAll(msg, {{"\n", " "}});
  std::fprintf(stderr, "%s: error: %s\n", tool, msg.c_str());
  return 1;
}

}  // namespace sambay
