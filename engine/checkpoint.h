// Checkpoint: every safetensors file of a Hugging Face model directory, as one name -> tensor map.
//
// Layouts: a single `model.safetensors`, or shards listed by `model.safetensors.index.json`
// ({"metadata": {"total_size": N}, "weight_map": {tensor: file}}). Every file named by the index
// must exist and hold exactly the tensors the index maps to it; a tensor in two files is an error.
//
// Ownership: owns the SafetensorsFiles; TensorInfo pointers live as long as the Checkpoint.
// Thread-safety: immutable after Open.
#ifndef SAMBAY_ENGINE_CHECKPOINT_H_
#define SAMBAY_ENGINE_CHECKPOINT_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/safetensors.h"

namespace sambay {

class Checkpoint {
 public:
  // Opens dir/model.safetensors.index.json if present, else dir/model.safetensors.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  // nullptr when absent.
  const TensorInfo* Find(const std::string& name) const;
  const std::map<std::string, const TensorInfo*>& tensors() const { return tensors_; }
  int num_files() const { return static_cast<int>(files_.size()); }
  // Sum of all tensors' bytes.
  int64_t total_bytes() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> tensors_;
};

// Writes `tensors` into dir as one file (num_shards == 1: model.safetensors) or as num_shards
// files model-0000k-of-0000N.safetensors (tensors split in order, by roughly equal bytes) plus
// model.safetensors.index.json.
absl::Status WriteCheckpoint(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                             int num_shards);

}  // namespace sambay

#endif  // SAMBAY_ENGINE_CHECKPOINT_H_
