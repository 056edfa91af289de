// libFuzzer target: the strict state importer (engine/state_io.h) fed a chunk stream.
//
// Input: [mode byte][cut byte][bytes...]. mode bit 0 clear: `bytes` is a logical state stream
// that the harness frames into chunks (correct magic, sequence numbers and CRC32C, so the
// fuzzer reaches the header and tensor parsing); the cut byte sets the payload bytes per chunk.
// Bit 0 set: `bytes` are raw chunks, cut before every "SBYC" (the frame checks). Bit 1: the
// free function ImportState instead of the incremental StateImporter. Bit 2: an importer for
// TP 2. Bits 3-4: the token limit (0, 1, 8 or 64 tokens).
// Property: a stream the importer accepts exports back to the same logical bytes (TP 1).
// Model: fuzz::MicroConfig() with fuzz::kMicroFingerprint (seeds: seedgen.cc).
//
// Thread-safety: single-threaded (libFuzzer).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "common/crc32c.h"
#include "engine/state_io.h"
#include "tests/fuzz/fuzz_util.h"

namespace sambay::fuzz {
namespace {

std::string Frame(uint32_t seq, std::string_view payload) {
  std::string c(kStateChunkHeaderBytes, '\0');
  std::memcpy(c.data(), "SBYC", 4);
  const uint32_t len = static_cast<uint32_t>(payload.size());
  const uint32_t crc = Crc32c(payload.data(), payload.size());
  std::memcpy(c.data() + 4, &seq, 4);
  std::memcpy(c.data() + 8, &len, 4);
  std::memcpy(c.data() + 12, &crc, 4);
  c.append(payload);
  return c;
}

std::vector<std::string> Chunks(uint8_t mode, uint8_t cut, std::string_view bytes) {
  std::vector<std::string> chunks;
  if ((mode & 1) == 0) {
    const size_t per = 1 + static_cast<size_t>(cut) * 8;
    for (size_t off = 0; off < bytes.size(); off += per) {
      chunks.push_back(Frame(static_cast<uint32_t>(chunks.size()), bytes.substr(off, per)));
    }
  } else {
    size_t start = 0;
    while (start < bytes.size()) {
      size_t next = bytes.find("SBYC", start + 1);
      if (next == std::string_view::npos) next = bytes.size();
      chunks.emplace_back(bytes.substr(start, next - start));
      start = next;
    }
  }
  return chunks;
}

std::string Logical(const std::vector<std::string>& chunks) {
  std::string s;
  for (const std::string& c : chunks) s.append(c, kStateChunkHeaderBytes);
  return s;
}

}  // namespace
}  // namespace sambay::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sambay;
  if (size < 2) return 0;
  const uint8_t mode = data[0];
  const uint8_t cut = data[1];
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 2, size - 2);
  const ModelConfig& config = fuzz::MicroConfig();
  const std::string fp = fuzz::kMicroFingerprint;
  static constexpr int64_t kLimits[] = {0, 1, 8, 64};
  const int64_t max_tokens = kLimits[(mode >> 3) & 3];
  const int tp = (mode & 4) != 0 ? 2 : 1;
  const std::vector<std::string> chunks = fuzz::Chunks(mode, cut, bytes);

  absl::StatusOr<std::unique_ptr<SequenceState>> state;
  if ((mode & 2) != 0) {
    state = ImportState(config, fp, chunks, max_tokens, tp);
  } else {
    StateImporter importer(config, fp, max_tokens, tp);
    absl::Status st;
    for (const std::string& c : chunks) {
      st = importer.AddChunk(c);
      if (!st.ok()) break;
    }
    if (st.ok()) {
      state = importer.Finish();
    } else {
      state = st;
      // Every later call repeats the error.
      if (importer.AddChunk("x").ok()) fuzz::Fail("AddChunk succeeded after a failure");
    }
  }
  if (!state.ok() || tp != 1) return 0;
  if ((*state)->num_tokens > max_tokens) fuzz::Fail("imported more tokens than the limit");
  auto again = ExportState(config, fp, **state, 1 << 20);
  if (!again.ok()) fuzz::Fail("an imported state does not export: " + again.status().ToString());
  if (fuzz::Logical(*again) != fuzz::Logical(chunks)) {
    // The raw mode's chunks are only framed when they passed the checks, so compare the
    // payloads in both modes.
    fuzz::Fail("an accepted stream does not round-trip through ExportState");
  }
  return 0;
}
