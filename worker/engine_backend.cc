#include "worker/engine_backend.h"

#include "engine/state_io.h"

namespace sambay {

absl::StatusOr<std::vector<std::string>> CpuBackend::Export(SequenceState& state,
                                                            size_t max_chunk_bytes) {
  return ExportState(model_.config(), model_.fingerprint(), state, max_chunk_bytes);
}

}  // namespace sambay
