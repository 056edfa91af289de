#include "common/request_id.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_format.h"

namespace sambay {

bool IsValidRequestId(absl::string_view id) {
  if (id.empty() || id.size() > kMaxRequestIdBytes) return false;
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

namespace {

// Fills `r` from the kernel's cryptographic source; aborts when there is none.
void RandomBits(uint64_t (&r)[2]) {
  size_t got = 0;
  while (got < sizeof(r)) {
    const ssize_t n = getrandom(reinterpret_cast<char*>(r) + got, sizeof(r) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {  // no kernel random source: a broken machine, not an input error
      std::fprintf(stderr, "fatal: getrandom failed (errno %d)\n", errno);
      std::abort();
    }
    got += static_cast<size_t>(n);
  }
}

}  // namespace

std::string NewRequestId() { return "req-" + RandomHex128(); }

std::string RandomHex128() {
  uint64_t r[2];
  RandomBits(r);
  return absl::StrFormat("%016x%016x", r[0], r[1]);
}

}  // namespace sambay
