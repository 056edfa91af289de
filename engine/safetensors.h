// Safetensors files: a memory-mapped reader and a writer.
//
// Format (https://huggingface.co/docs/safetensors): 8-byte little-endian header length N,
// N bytes of JSON {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]},
// "__metadata__": {str: str}}, then the data region; offsets are relative to its start.
//
// Ownership: a SafetensorsFile owns its mapping; TensorInfo::data points into it (or into an
// owned aligned copy when the file's data is not aligned to the element size) and stays valid
// while the SafetensorsFile lives. Thread-safety: immutable after Open; concurrent reads are safe.
#ifndef SAMBAY_ENGINE_SAFETENSORS_H_
#define SAMBAY_ENGINE_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dtype.h"

namespace sambay {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // aligned to DTypeSize(dtype)
  int64_t nbytes = 0;
  std::string file;  // path of the file holding it

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// "[a, b, c]" for error messages.
std::string ShapeString(const std::vector<int64_t>& shape);

class SafetensorsFile {
 public:
  // Maps `path` read-only and validates the whole header: JSON syntax, every entry's dtype
  // (F32/BF16/F16 only, else an error naming the tensor and the dtype), shape (non-negative),
  // data_offsets (in range of the file, end - begin == numel * dtype size, no overlaps).
  // Any defect gives an InvalidArgument/DataLoss/NotFound status naming the file; never crashes.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::unique_ptr<uint8_t[]>> aligned_copies_;
};

// One tensor to write. `data` holds numel * DTypeSize(dtype) bytes.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// Writes a safetensors file (tensors in the given order, header padded with spaces to a
// multiple of 8 bytes so every tensor is 8-byte aligned). Writes to path + ".tmp" then renames.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace sambay

#endif  // SAMBAY_ENGINE_SAFETENSORS_H_
