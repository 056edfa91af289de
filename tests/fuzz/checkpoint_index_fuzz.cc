// libFuzzer target: a sharded checkpoint's model.safetensors.index.json and its shards
// (engine/checkpoint.h).
//
// Input: files separated by fuzz::kFileSeparator: the index, then shard k of N written as
// model-0000k-of-0000N.safetensors (the names sambay-mkmodel --shards uses, so seeds from a
// real sharded checkpoint match their index). The harness writes them into a scratch
// directory and calls Checkpoint::Open. Properties of an accepted checkpoint: every tensor is
// found by name and total_bytes is the sum of the tensors' bytes.
//
// Thread-safety: single-threaded (libFuzzer).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/checkpoint.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sambay;
  static const fuzz::FuzzScratch* scratch = new fuzz::FuzzScratch();
  static std::vector<std::string> written;
  for (const std::string& name : written) scratch->Remove(name);
  written.clear();
  const std::vector<std::string_view> parts =
      fuzz::SplitFiles(std::string_view(reinterpret_cast<const char*>(data), size));
  if (parts.size() > 9) return 0;  // file names have one digit of shard count
  written.push_back("model.safetensors.index.json");
  scratch->Write(written.back(), parts[0]);
  const int shards = static_cast<int>(parts.size()) - 1;
  for (int k = 1; k <= shards; ++k) {
    written.push_back(absl::StrFormat("model-%05d-of-%05d.safetensors", k, shards));
    scratch->Write(written.back(), parts[k]);
  }
  auto ckpt = Checkpoint::Open(scratch->dir());
  if (!ckpt.ok()) return 0;
  int64_t total = 0;
  for (const auto& [name, t] : (*ckpt)->tensors()) {
    if ((*ckpt)->Find(name) != t) fuzz::Fail("Find(" + name + ") is not the listed tensor");
    total += t->nbytes;
  }
  if (total != (*ckpt)->total_bytes()) fuzz::Fail("total_bytes is not the sum of the tensors");
  return 0;
}
