#include "common/server_util.h"

#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace sambay {
namespace {

sigset_t TerminationSignals() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGTERM);
  sigaddset(&s, SIGINT);
  return s;
}

}  // namespace

void BlockTerminationSignals() {
  sigset_t s = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &s, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

std::string WaitForTerminationSignal() {
  sigset_t s = TerminationSignals();
  int sig = 0;
  sigwait(&s, &sig);
  return sig == SIGTERM ? "SIGTERM" : "SIGINT";
}

void TuneMallocForLargeBuffers() {
  // Allocations up to 64 MiB come from the heap (not fresh mmaps), and up to 1 GiB of free heap
  // is kept rather than trimmed.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  // One heap for all threads: a state freed by the engine thread is reused by the next import
  // on whichever gRPC thread runs it (with per-thread arenas the memory sat in another arena and
  // every other import page-faulted its way through fresh memory).
  mallopt(M_ARENA_MAX, 1);
}

absl::Status WritePortFile(const std::string& path, int grpc_port, int metrics_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << "{\"grpc_port\":" << grpc_port << ",\"metrics_port\":" << metrics_port
        << ",\"pid\":" << getpid() << "}\n";
    if (!out) return absl::InternalError(absl::StrCat("--port-file: cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("--port-file: cannot rename to ", path));
  }
  return absl::OkStatus();
}

std::optional<int> ParseServerFlags(FlagSet& flags, const char* program, int argc, char** argv) {
  absl::Status s = flags.Parse(argc, argv);
  if (s.ok()) return std::nullopt;
  if (s.message() == FlagSet::kHelpRequested) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  std::fprintf(stderr, "%s: error: %s\n", program, std::string(s.message()).c_str());
  return 2;
}

}  // namespace sambay
