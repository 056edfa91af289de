#include "router/api_keys.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/log.h"

namespace sambay {
namespace {

constexpr size_t kMinKeyChars = 16;
constexpr size_t kMaxKeyChars = 256;
constexpr size_t kMaxNameChars = 64;

std::array<uint8_t, 32> Digest(absl::string_view key) {
  std::array<uint8_t, 32> d;
  SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), d.data());
  return d;
}

bool KeyCharsOk(absl::string_view key) {
  for (char c : key) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

bool NameCharsOk(absl::string_view name) {
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

absl::Status LineError(int line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("--api-keys-file: line ", line, ": ", what));
}

absl::StatusOr<ApiKeys::Entry> ParseLine(absl::string_view line, int number) {
  std::vector<absl::string_view> fields =
      absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (fields.size() > 2) return LineError(number, "expected KEY or KEY NAME");
  const absl::string_view key = fields[0];
  if (key.size() < kMinKeyChars || key.size() > kMaxKeyChars || !KeyCharsOk(key)) {
    return LineError(number, absl::StrCat("a key is ", kMinKeyChars, " to ", kMaxKeyChars,
                                          " printable ASCII characters"));
  }
  ApiKeys::Entry e{Digest(key), ""};
  if (fields.size() == 2) {
    if (fields[1].size() > kMaxNameChars || !NameCharsOk(fields[1])) {
      return LineError(number, "a name is 1 to 64 of [A-Za-z0-9._-]");
    }
    e.name = std::string(fields[1]);
  } else {
    static const char kHex[] = "0123456789abcdef";
    e.name = "key-";
    for (int i = 0; i < 4; ++i) {
      e.name += kHex[e.digest[i] >> 4];
      e.name += kHex[e.digest[i] & 15];
    }
  }
  return e;
}

bool StatFile(const std::string& path, uint64_t* inode, uint64_t* size, int64_t* mtime_ns) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return false;
  *inode = st.st_ino;
  *size = static_cast<uint64_t>(st.st_size);
  *mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return true;
}

absl::StatusOr<std::vector<ApiKeys::Entry>> ReadKeys(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--api-keys-file: cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return ApiKeys::Parse(text.str());
}

}  // namespace

absl::StatusOr<std::vector<ApiKeys::Entry>> ApiKeys::Parse(absl::string_view text) {
  std::vector<Entry> entries;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    auto e = ParseLine(line, number);
    if (!e.ok()) return e.status();
    for (const Entry& other : entries) {
      if (other.digest == e->digest) return LineError(number, "the key is listed twice");
    }
    entries.push_back(*std::move(e));
  }
  if (entries.empty()) return absl::InvalidArgumentError("--api-keys-file: no key in the file");
  return entries;
}

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Load(const std::string& path,
                                                       absl::Duration reload) {
  std::unique_ptr<ApiKeys> keys(new ApiKeys(path, reload));
  Stamp stamp;
  if (!StatFile(path, &stamp.inode, &stamp.size, &stamp.mtime_ns)) {
    return absl::InvalidArgumentError(absl::StrCat("--api-keys-file: cannot read ", path));
  }
  auto entries = ReadKeys(path);
  if (!entries.ok()) return entries.status();
  MutexLock lock(&keys->mu_);
  keys->entries_ = std::make_shared<const std::vector<Entry>>(*std::move(entries));
  keys->stamp_ = stamp;
  keys->checked_ = absl::Now();
  return keys;
}

void ApiKeys::MaybeReload() const {
  Stamp now;
  {
    MutexLock lock(&mu_);
    const absl::Time t = absl::Now();
    if (t - checked_ < reload_) return;
    checked_ = t;
    if (!StatFile(path_, &now.inode, &now.size, &now.mtime_ns) || now == stamp_) return;
    stamp_ = now;  // a file that does not parse is not read again until it changes
  }
  auto entries = ReadKeys(path_);
  if (!entries.ok()) {
    Log(LogLevel::kWarning, "router", "API keys not reloaded: the old keys stay",
        {{"error", entries.status().ToString()}});
    return;
  }
  const size_t n = entries->size();
  {
    MutexLock lock(&mu_);
    entries_ = std::make_shared<const std::vector<Entry>>(*std::move(entries));
  }
  Log(LogLevel::kInfo, "router", "API keys reloaded", {{"keys", n}});
}

absl::StatusOr<std::string> ApiKeys::Authenticate(absl::string_view authorization) const {
  MaybeReload();
  authorization = absl::StripAsciiWhitespace(authorization);
  constexpr absl::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(authorization.substr(0, kScheme.size()), kScheme)) {
    return absl::UnauthenticatedError(
        "missing API key: send the header \"authorization: Bearer <key>\"");
  }
  const std::array<uint8_t, 32> digest =
      Digest(absl::StripLeadingAsciiWhitespace(authorization.substr(kScheme.size())));
  std::shared_ptr<const std::vector<Entry>> entries;
  {
    MutexLock lock(&mu_);
    entries = entries_;
  }
  const Entry* found = nullptr;
  for (const Entry& e : *entries) {
    // Every entry is compared, whatever matched before.
    const bool same = CRYPTO_memcmp(e.digest.data(), digest.data(), digest.size()) == 0;
    if (same) found = &e;
  }
  if (found == nullptr) return absl::UnauthenticatedError("invalid API key");
  return found->name;
}

size_t ApiKeys::size() const {
  MutexLock lock(&mu_);
  return entries_->size();
}

}  // namespace sambay
