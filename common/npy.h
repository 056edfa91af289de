// NumPy .npy files (format version 1.0): write float32 arrays, read float32/float64 arrays.
//
// Stateless functions; thread-safe. Errors name the path.
#ifndef SAMBAY_COMMON_NPY_H_
#define SAMBAY_COMMON_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sambay {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // converted to float32, C order
};

// Writes a little-endian float32 C-order array ('<f4') of the given shape.
absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape,
                         const float* data);

// Reads a C-order '<f4' or '<f8' array.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

}  // namespace sambay

#endif  // SAMBAY_COMMON_NPY_H_
