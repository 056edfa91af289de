// State wire format: export a SequenceState as CRC-checked chunks, and import it strictly
// (docs/design.md "State wire format"; byte-by-byte layout in docs/state-format.md).
//
// A state travels as a logical stream (a header, then one entry per stateful tensor) cut into
// chunks; each chunk carries its sequence number and a CRC32C of its payload. Tensors are
// LOGICAL and unsharded: Mamba conv [d_conv-1, d_inner] and ssm [d_inner, d_state]; SWA K/V
// only the live window, min(num_tokens, window) rows of [kv_dim] ordered by position (oldest
// first, not ring order); global K/V [num_tokens, kv_dim] in position order. All fp32
// (the CPU state dtype). The whole header is always in the first chunk, so a receiver can
// reject a stream (wrong model, too many tokens, wrong layer table) before receiving more.
//
// Import treats the bytes as untrusted: every frame, CRC, size, dtype, layer index and kind is
// checked against the importing model's config; nothing proportional to a claimed size is
// allocated before that size has been validated against the config and the caller's token
// limit (the global K/V blocks are allocated only as their verified bytes arrive). Errors:
//   FailedPrecondition  the state is for another model (fingerprint) or format version;
//   DataLoss            a chunk is damaged (bad magic, length, CRC) or the stream is truncated;
//   InvalidArgument     anything else (sequence numbers, header fields, shapes, dtypes,
//                       duplicate or unexpected entries, trailing bytes).
// Imports fill a fresh SequenceState owned by the importer until Finish() hands it over, so a
// failed import never touches a live state.
//
// Tensor parallelism: a sharded state (SequenceState::shards, a TP > 1 model's) is gathered by
// ExportState into the same logical tensors, so the bytes do not depend on the TP size; an
// importer built with tp > 1 scatters the tensors into a state sharded for that TP size, and
// ReshardState converts a state between layouts in place.
//
// Ownership: ExportState returns owned chunk strings; StateImporter copies its config and
// fingerprint. Thread-safety: the free functions are thread-safe (ExportState only reads the
// state, which must not be modified concurrently); a StateImporter is used by one thread at a
// time. The format assumes a little-endian host (checked at compile time).
#ifndef SAMBAY_ENGINE_STATE_IO_H_
#define SAMBAY_ENGINE_STATE_IO_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/config.h"
#include "engine/dtype.h"
#include "engine/state.h"

namespace sambay {

inline constexpr uint32_t kStateFormatVersion = 1;
// [magic "SBYC"][sequence number u32][payload length u32][CRC32C of payload u32].
inline constexpr size_t kStateChunkHeaderBytes = 16;
inline constexpr size_t kMaxStateFingerprintBytes = 64;
inline constexpr size_t kDefaultStateChunkBytes = 4 << 20;
// Per tensor entry: layer, kind, dtype, rank (u32 each), then rank x i64 dims (rank is 2).
inline constexpr size_t kStateEntryDescriptorBytes = 32;

// Tensor kind codes on the wire.
enum class StateTensorKind : uint32_t {
  kConvState = 0,
  kSsmState = 1,
  kSwaK = 2,
  kSwaV = 3,
  kGlobalK = 4,
  kGlobalV = 5,
};
// "conv_state", "ssm_state", "swa_k", "swa_v", "global_k", "global_v".
const char* StateTensorKindName(StateTensorKind k);

// The parsed (and, once StateImporter exposes it, validated) header of a state stream.
struct StateHeaderInfo {
  uint32_t format_version = 0;
  std::string fingerprint;
  DType dtype = DType::kF32;
  int64_t num_tokens = 0;
  int32_t last_token = -1;
  std::array<uint64_t, 4> rng_state{};
  std::vector<LayerKind> layers;  // the layer table
  uint32_t num_entries = 0;
  int64_t header_bytes = 0;  // bytes of the header in the logical stream
};

// Bytes of tensor data in a state with `num_tokens` consumed (fp32; num_tokens < 0 counts as
// 0): Mamba conv + ssm per Mamba layer, 2 x min(n, window) x kv_dim per SWA layer, 2 x n x kv_dim
// for the global layer.
int64_t StatePayloadBytes(const ModelConfig& config, int64_t num_tokens);
// Bytes of the whole logical stream: header + entry descriptors + StatePayloadBytes. The sum of
// the chunk payloads equals this exactly; each chunk adds kStateChunkHeaderBytes.
int64_t StateStreamBytes(const ModelConfig& config, size_t fingerprint_bytes, int64_t num_tokens);

// Serializes `state` of a model with `config` and `fingerprint` (Model::fingerprint()) into
// chunks of at most max_chunk_bytes bytes each (frame header included). InvalidArgument if the
// state does not match the config, the fingerprint is longer than kMaxStateFingerprintBytes,
// or max_chunk_bytes cannot hold the chunk header plus the whole stream header.
absl::StatusOr<std::vector<std::string>> ExportState(
    const ModelConfig& config, const std::string& fingerprint, const SequenceState& state,
    size_t max_chunk_bytes = kDefaultStateChunkBytes);

// Receives exported chunks in order; an error stops the export, which returns it.
using StateChunkSink = std::function<absl::Status(std::string chunk)>;

// As ExportState, but each chunk goes to `sink` as soon as it is full: one chunk is in memory
// at a time (a sender can stream the state instead of holding a second copy of it).
absl::Status ExportStateTo(const ModelConfig& config, const std::string& fingerprint,
                           const SequenceState& state, size_t max_chunk_bytes,
                           const StateChunkSink& sink);

// Incremental strict importer: feed chunks in order with AddChunk, then call Finish. The first
// chunk's header is fully validated by the first AddChunk. After any error the importer stays
// failed and returns that error from every later call.
class StateImporter {
 public:
  // max_tokens: the largest num_tokens this receiver accepts (negative counts as 0).
  // tp: the TP size of the model that will use the state (Model::tp_size()); the state is
  // built sharded for it. A tp the config cannot split fails every call with InvalidArgument.
  StateImporter(const ModelConfig& config, const std::string& fingerprint, int64_t max_tokens,
                int tp = 1);
  ~StateImporter();
  StateImporter(StateImporter&&) noexcept;
  StateImporter& operator=(StateImporter&&) noexcept;

  absl::Status AddChunk(absl::string_view chunk);
  // The state, once the stream is complete. DataLoss if it is truncated. Call at most once.
  absl::StatusOr<std::unique_ptr<SequenceState>> Finish();

  // The validated header once the first chunk was accepted, else null.
  const StateHeaderInfo* header() const;
  int64_t chunks_received() const;
  int64_t payload_bytes_received() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Strict import of a complete chunk list: checks every chunk frame and CRC first, then parses
// with a StateImporter whose token limit is max_tokens, further capped by what the bytes
// present could possibly hold.
absl::StatusOr<std::unique_ptr<SequenceState>> ImportState(
    const ModelConfig& config, const std::string& fingerprint,
    const std::vector<std::string>& chunks,
    int64_t max_tokens = std::numeric_limits<int64_t>::max(), int tp = 1);

// Converts `state` (of a model with `config`) in place to the layout of a TP=tp model: logical
// for tp 1, else sharded by MakeTpPlan(config, tp). Exact (a copy). No-op if it already has that
// layout. InvalidArgument if the state does not match the config or tp cannot split it.
absl::Status ReshardState(const ModelConfig& config, int tp, SequenceState& state);

}  // namespace sambay

#endif  // SAMBAY_ENGINE_STATE_IO_H_
