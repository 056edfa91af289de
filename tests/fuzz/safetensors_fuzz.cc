// libFuzzer target: the safetensors reader (engine/safetensors.h), header and data region.
//
// Input: a whole .safetensors file (8-byte header length, JSON header, data). The harness
// writes it to a scratch file and opens it with SafetensorsFile::Open. Properties of an
// accepted file: every tensor's nbytes is numel x dtype size, its data lies inside the mapping
// (all of it is read, so ASan sees any overrun) and is aligned to the element size.
//
// Thread-safety: single-threaded (libFuzzer).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "engine/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sambay;
  static const fuzz::FuzzScratch* scratch = new fuzz::FuzzScratch();
  const std::string path = scratch->Write(
      "model.safetensors", std::string_view(reinterpret_cast<const char*>(data), size));
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) return 0;
  uint64_t sum = 0;
  for (const auto& [name, t] : (*file)->tensors()) {
    if (t.nbytes != t.numel() * static_cast<int64_t>(DTypeSize(t.dtype))) {
      fuzz::Fail("tensor " + name + ": nbytes != numel x dtype size");
    }
    if (t.nbytes > 0 && reinterpret_cast<uintptr_t>(t.data) % DTypeSize(t.dtype) != 0) {
      fuzz::Fail("tensor " + name + ": data not aligned to its element size");
    }
    const auto* p = static_cast<const uint8_t*>(t.data);
    for (int64_t i = 0; i < t.nbytes; ++i) sum += p[i];
  }
  for (const auto& [k, v] : (*file)->metadata()) sum += k.size() + v.size();
  // Keeps the reads.
  if (sum == 0xFFFFFFFFFFFFFFFFull) fuzz::Fail("unreachable");
  return 0;
}
