#include "engine/backend.h"

#include "absl/strings/str_cat.h"
#include "engine/sampler.h"
#include "engine/state_io.h"

namespace sambay {

absl::Status EngineBackend::ForwardArgmax(absl::Span<const ForwardSegment> segments,
                                          const std::vector<bool>& want_logits,
                                          std::vector<float>* logits,
                                          std::vector<int32_t>* argmax) {
  const int64_t rows = OutputRows(segments);
  if (static_cast<int64_t>(want_logits.size()) != rows) {
    return absl::InvalidArgumentError(absl::StrCat("ForwardArgmax: ", want_logits.size(),
                                                   " want_logits entries for ", rows, " rows"));
  }
  std::vector<float> all;
  const absl::Status s = Forward(segments, &all);
  if (!s.ok()) return s;
  const auto vocab = static_cast<size_t>(config().vocab_size);
  argmax->clear();
  for (int64_t r = 0; r < rows; ++r) {
    const absl::Span<const float> row(all.data() + r * vocab, vocab);
    argmax->push_back(GreedyToken(row));
    if (want_logits[r]) logits->insert(logits->end(), row.begin(), row.end());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> CpuBackend::Export(SequenceState& state,
                                                            size_t max_chunk_bytes) {
  return ExportState(model_.config(), model_.fingerprint(), state, max_chunk_bytes);
}

absl::Status EngineBackend::ExportTo(SequenceState& state, size_t max_chunk_bytes,
                                     const StateChunkSink& sink) {
  auto chunks = Export(state, max_chunk_bytes);
  if (!chunks.ok()) return chunks.status();
  for (std::string& chunk : *chunks) {
    if (absl::Status s = sink(std::move(chunk)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::ExportTo(SequenceState& state, size_t max_chunk_bytes,
                                  const StateChunkSink& sink) {
  return ExportStateTo(model_.config(), model_.fingerprint(), state, max_chunk_bytes, sink);
}

}  // namespace sambay
