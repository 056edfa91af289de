// ApiKeys: the bearer keys of the public API (gRPC `authorization` metadata and the HTTP API's
// Authorization header), loaded from --api-keys-file, and the check of a presented key.
//
// The file holds one key per line, `KEY` or `KEY NAME` (whitespace between); blank lines and lines
// starting with '#' are skipped. A key is 16 to 256 printable ASCII characters without spaces; a
// name is 1 to 64 of [A-Za-z0-9._-] (default: "key-" and the first 8 hex digits of the key's
// SHA-256). Several keys may share a name (a key being rotated): the name is the owner of the
// requests made with any of them. Only SHA-256 digests of the keys are kept in memory.
//
// Authenticate compares the digest of the presented key with every stored digest in constant time
// (CRYPTO_memcmp, no early exit), so the time taken tells nothing about how close a guess was.
// The file is checked for changes (inode, size, mtime) at most once per `reload` by the calls
// themselves; a changed file that no longer parses is logged and the keys loaded before stay.
// Keys are never logged or put in an error.
//
// Ownership: owns its key table. Thread-safety: Authenticate is thread-safe (mu_ guards the table
// and the file stamp; the table is swapped whole, and the comparison runs on a snapshot).
#ifndef SAMBAY_ROUTER_API_KEYS_H_
#define SAMBAY_ROUTER_API_KEYS_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/mutex.h"

namespace sambay {

class ApiKeys {
 public:
  struct Entry {
    std::array<uint8_t, 32> digest;  // SHA-256 of the key
    std::string name;
  };

  // Reads and parses `path`; INVALID_ARGUMENT "--api-keys-file: ..." naming the line when it
  // cannot (no key at all is an error).
  static absl::StatusOr<std::unique_ptr<ApiKeys>> Load(const std::string& path,
                                                       absl::Duration reload = absl::Seconds(5));

  // Parses the file's text (the flag's name and line numbers in errors); exposed for tests.
  static absl::StatusOr<std::vector<Entry>> Parse(absl::string_view text);

  // The owner name of the key in `authorization` ("Bearer KEY", the scheme case-insensitive).
  // UNAUTHENTICATED "missing API key ..." when the header is empty or not a bearer token, and
  // "invalid API key" (no more) when the key is not one of the file's.
  absl::StatusOr<std::string> Authenticate(absl::string_view authorization) const
      ABSL_LOCKS_EXCLUDED(mu_);

  size_t size() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Stamp {
    uint64_t inode = 0, size = 0;
    int64_t mtime_ns = 0;
    bool operator==(const Stamp& o) const {
      return inode == o.inode && size == o.size && mtime_ns == o.mtime_ns;
    }
  };
  ApiKeys(std::string path, absl::Duration reload) : path_(std::move(path)), reload_(reload) {}
  // Re-reads the file when `reload` has passed and its stamp changed.
  void MaybeReload() const ABSL_LOCKS_EXCLUDED(mu_);

  const std::string path_;
  const absl::Duration reload_;
  mutable Mutex mu_;
  mutable std::shared_ptr<const std::vector<Entry>> entries_ ABSL_GUARDED_BY(mu_);
  mutable Stamp stamp_ ABSL_GUARDED_BY(mu_);
  mutable absl::Time checked_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sambay

#endif  // SAMBAY_ROUTER_API_KEYS_H_
