#include "engine/state_io.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "common/status_macros.h"

namespace sambay {

static_assert(std::endian::native == std::endian::little,
              "the state wire format is little-endian and copies fp32 data as raw bytes");
// Layer kind codes on the wire are the LayerKind values; pin them so a reorder of the enum
// breaks the build instead of the format.
static_assert(static_cast<int>(LayerKind::kMamba) == 0 && static_cast<int>(LayerKind::kSwa) == 1 &&
              static_cast<int>(LayerKind::kGlobal) == 2 && static_cast<int>(LayerKind::kGmu) == 3 &&
              static_cast<int>(LayerKind::kCross) == 4);
static_assert(static_cast<int>(DType::kF32) == 0);

namespace {

template <typename... A>
absl::Status Invalid(const A&... a) {
  return absl::InvalidArgumentError(absl::StrCat(a...));
}
template <typename... A>
absl::Status DataLoss(const A&... a) {
  return absl::DataLossError(absl::StrCat(a...));
}

constexpr char kChunkMagic[4] = {'S', 'B', 'Y', 'C'};
constexpr char kStreamMagic[4] = {'S', 'B', 'Y', 'S'};
constexpr uint32_t kNumTensorKinds = 6;
constexpr uint32_t kNumLayerKinds = 5;
constexpr uint32_t kTensorRank = 2;
constexpr size_t kDescriptorFixedBytes = 16;  // layer, kind, dtype, rank

// One tensor entry the config calls for.
struct EntrySpec {
  int layer;
  StateTensorKind kind;
  int64_t rows, cols;
};

std::vector<EntrySpec> ExpectedEntries(const ModelConfig& c, int64_t n) {
  std::vector<EntrySpec> out;
  const int64_t live = std::min(n, c.sliding_window);
  for (int i = 0; i < c.num_layers; ++i) {
    switch (c.layers[i]) {
      case LayerKind::kMamba:
        out.push_back({i, StateTensorKind::kConvState, c.d_conv - 1, c.d_inner});
        out.push_back({i, StateTensorKind::kSsmState, c.d_inner, c.d_state});
        break;
      case LayerKind::kSwa:
        out.push_back({i, StateTensorKind::kSwaK, live, c.kv_dim()});
        out.push_back({i, StateTensorKind::kSwaV, live, c.kv_dim()});
        break;
      case LayerKind::kGlobal:
        out.push_back({i, StateTensorKind::kGlobalK, n, c.kv_dim()});
        out.push_back({i, StateTensorKind::kGlobalV, n, c.kv_dim()});
        break;
      case LayerKind::kGmu:
      case LayerKind::kCross:
        break;
    }
  }
  return out;
}

int64_t HeaderBytes(size_t fingerprint_bytes, int num_layers) {
  // magic, version, fingerprint length + bytes, dtype, num_tokens, last_token, rng, num_layers,
  // layer table, num_entries.
  return 4 + 4 + 4 + static_cast<int64_t>(fingerprint_bytes) + 4 + 8 + 4 + 32 + 4 + num_layers + 4;
}

// Row r of entry e of a state holding n tokens: a float* or const float* by the state's
// constness. SWA rows are in position order; position p lives at ring slot p % window.
template <typename State>
auto RowPtr(State& s, const ModelConfig& c, const EntrySpec& e, int64_t r, int64_t n) {
  switch (e.kind) {
    case StateTensorKind::kConvState:
      return s.mamba[e.layer].conv.data() + r * e.cols;
    case StateTensorKind::kSsmState:
      return s.mamba[e.layer].ssm.data() + r * e.cols;
    case StateTensorKind::kSwaK:
      return s.swa[e.layer].k.data() + ((n - e.rows + r) % c.sliding_window) * e.cols;
    case StateTensorKind::kSwaV:
      return s.swa[e.layer].v.data() + ((n - e.rows + r) % c.sliding_window) * e.cols;
    case StateTensorKind::kGlobalK:
      return s.global.k(r);
    case StateTensorKind::kGlobalV:
      break;
  }
  return s.global.v(r);
}

// Calls fn(ptr, cols) for each contiguous piece of row r of entry e, in column order: one piece
// for a logical state; for a state sharded by `plan`, the ranks' column slices (conv, SWA and
// global K/V are split by columns) or the one rank holding an SSM row (split by channel rows).
template <typename State, typename Fn>
void ForEachPiece(State& s, const ModelConfig& c, const TpPlan* plan, const EntrySpec& e, int64_t r,
                  int64_t n, Fn fn) {
  if (s.shards.empty()) {
    fn(RowPtr(s, c, e, r, n), e.cols);
    return;
  }
  if (e.kind == StateTensorKind::kSsmState) {
    const int q = plan->DInnerOwner(r);
    EntrySpec local = e;
    local.rows = plan->ranks[q].d_inner1 - plan->ranks[q].d_inner0;
    fn(RowPtr(s.shards[q], plan->ranks[q].config, local, r - plan->ranks[q].d_inner0, n), e.cols);
    return;
  }
  for (size_t q = 0; q < s.shards.size(); ++q) {
    const TpRankSlice& slice = plan->ranks[q];
    EntrySpec local = e;
    local.cols = e.kind == StateTensorKind::kConvState ? slice.d_inner1 - slice.d_inner0
                                                       : slice.kv1 - slice.kv0;
    fn(RowPtr(s.shards[q], slice.config, local, r, n), local.cols);
  }
}

// Grows the global K/V (of every shard) to hold at least `rows` tokens.
void EnsureGlobalRows(SequenceState& s, int64_t rows) {
  if (s.global.size() < rows && s.shards.empty()) s.global.Resize(rows);
  for (SequenceState& sh : s.shards) {
    if (sh.global.size() < rows) sh.global.Resize(rows);
  }
}

int64_t GlobalRows(const SequenceState& s) {
  return s.shards.empty() ? s.global.size() : s.shards[0].global.size();
}

std::string EntryName(const EntrySpec& e) {
  return absl::StrCat("layer ", e.layer, " ", StateTensorKindName(e.kind));
}

std::string ShapeString(int64_t a, int64_t b) { return absl::StrCat("[", a, ", ", b, "]"); }

void PutU32(std::string& s, uint32_t v) { s.append(reinterpret_cast<const char*>(&v), 4); }
void PutU64(std::string& s, uint64_t v) { s.append(reinterpret_cast<const char*>(&v), 8); }
uint32_t GetU32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t GetU64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Bounds-checked reader over the first chunk's payload.
class Reader {
 public:
  explicit Reader(absl::string_view d) : d_(d) {}
  bool U32(uint32_t* v) {
    return Take(4, [&](const char* p) { *v = GetU32(p); });
  }
  bool U64(uint64_t* v) {
    return Take(8, [&](const char* p) { *v = GetU64(p); });
  }
  bool Bytes(size_t n, absl::string_view* v) {
    return Take(n, [&](const char* p) { *v = absl::string_view(p, n); });
  }
  size_t pos() const { return pos_; }
  size_t size() const { return d_.size(); }

 private:
  template <typename F>
  bool Take(size_t n, F f) {
    if (d_.size() - pos_ < n) return false;
    f(d_.data() + pos_);
    pos_ += n;
    return true;
  }
  absl::string_view d_;
  size_t pos_ = 0;
};

// The error for a header that ends before its last field.
absl::Status HeaderTruncated(const Reader& r) {
  return Invalid("state header truncated: it must fit in the first chunk, whose payload has ",
                 r.size(), " bytes");
}

// The buffers of `s` (a logical state of `c`, or one shard of its shard config) hold n tokens.
absl::Status CheckBuffers(const ModelConfig& c, const SequenceState& s, int64_t n,
                          const std::string& where) {
  const auto bad = [&](const std::string& what) {
    return Invalid("export: state does not match the model: ", where, what);
  };
  if (static_cast<int64_t>(s.mamba.size()) != c.num_layers ||
      static_cast<int64_t>(s.swa.size()) != c.num_layers) {
    return bad(absl::StrCat("layer vectors have ", s.mamba.size(), "/", s.swa.size(),
                            " entries, model has ", c.num_layers, " layers"));
  }
  if (s.global.size() != n || s.global.kv_dim() != c.kv_dim()) {
    return bad(absl::StrCat("global K/V holds ", s.global.size(), " tokens of ", s.global.kv_dim(),
                            ", expected ", n, " of ", c.kv_dim()));
  }
  for (int i = 0; i < c.num_layers; ++i) {
    const bool m = c.layers[i] == LayerKind::kMamba, w = c.layers[i] == LayerKind::kSwa;
    const size_t conv = m ? (c.d_conv - 1) * c.d_inner : 0, ssm = m ? c.d_inner * c.d_state : 0;
    const size_t ring = w ? c.sliding_window * c.kv_dim() : 0;
    if (s.mamba[i].conv.size() != conv || s.mamba[i].ssm.size() != ssm ||
        s.swa[i].k.size() != ring || s.swa[i].v.size() != ring) {
      return bad(absl::StrCat("layer ", i, " (", LayerKindName(c.layers[i]),
                              ") buffers do not have the config's sizes"));
    }
  }
  return absl::OkStatus();
}

// Checks `s` against the config; for a sharded state, sets *plan to its TP plan.
absl::Status CheckStateMatchesConfig(const ModelConfig& c, const SequenceState& s,
                                     std::optional<TpPlan>* plan) {
  const auto bad = [](const std::string& what) {
    return Invalid("export: state does not match the model: ", what);
  };
  if (s.num_tokens < 0) return bad(absl::StrCat("num_tokens is ", s.num_tokens));
  if (s.last_token < -1 || s.last_token >= c.vocab_size) {
    return bad(absl::StrCat("last_token ", s.last_token, " is outside [-1, ", c.vocab_size, ")"));
  }
  if (s.shards.empty()) return CheckBuffers(c, s, s.num_tokens, "");
  auto p = MakeTpPlan(c, s.tp_size());
  if (!p.ok()) {
    return bad(absl::StrCat("it has ", s.shards.size(), " shards: ", p.status().message()));
  }
  // The logical part of a sharded state holds no tensors.
  ModelConfig empty = c;
  empty.layers.assign(c.num_layers, LayerKind::kGmu);
  SAMBAY_RETURN_IF_ERROR(CheckBuffers(empty, s, 0, "sharded state: "));
  for (size_t r = 0; r < s.shards.size(); ++r) {
    const std::string where = absl::StrCat("shard ", r, ": ");
    if (!s.shards[r].shards.empty() || s.shards[r].num_tokens != s.num_tokens) {
      return bad(
          absl::StrCat(where, "num_tokens ", s.shards[r].num_tokens, ", expected ", s.num_tokens));
    }
    SAMBAY_RETURN_IF_ERROR(CheckBuffers(p->ranks[r].config, s.shards[r], s.num_tokens, where));
  }
  *plan = std::move(*p);
  return absl::OkStatus();
}

// Appends bytes to chunks of at most max_chunk bytes; frames them on Finish.
class ChunkWriter {
 public:
  // Hands each chunk to `sink` (framed: magic, sequence number, length, CRC32C) as soon as it is
  // full, so one chunk is in memory at a time. After the sink fails, later input is dropped and
  // Finish returns its error.
  ChunkWriter(size_t max_payload, int64_t total, const StateChunkSink& sink)
      : max_payload_(max_payload), left_(total), sink_(sink) {}
  void Append(const char* p, size_t n) {
    while (n > 0 && status_.ok()) {
      if (chunk_.empty()) {
        const size_t want = std::min<size_t>(max_payload_, static_cast<size_t>(left_));
        chunk_.assign(kStateChunkHeaderBytes, '\0');
        chunk_.reserve(kStateChunkHeaderBytes + want);
      }
      const size_t take = std::min(n, max_payload_ - (chunk_.size() - kStateChunkHeaderBytes));
      chunk_.append(p, take);
      p += take;
      n -= take;
      left_ -= static_cast<int64_t>(take);
      if (chunk_.size() - kStateChunkHeaderBytes == max_payload_) Seal();
    }
  }
  absl::Status Finish() {
    if (!chunk_.empty() && status_.ok()) Seal();
    return status_;
  }

 private:
  void Seal() {
    const size_t len = chunk_.size() - kStateChunkHeaderBytes;
    const uint32_t fields[3] = {index_++, static_cast<uint32_t>(len),
                                Crc32c(chunk_.data() + kStateChunkHeaderBytes, len)};
    std::memcpy(chunk_.data(), kChunkMagic, 4);
    std::memcpy(chunk_.data() + 4, fields, 12);
    status_ = sink_(std::move(chunk_));
    chunk_.clear();
  }

  size_t max_payload_;
  int64_t left_;
  const StateChunkSink& sink_;
  std::string chunk_;  // the chunk being filled (empty: none)
  uint32_t index_ = 0;
  absl::Status status_;
};

// Frame checks of chunk number `index`; on success *payload is the verified payload.
absl::Status CheckChunkFrame(absl::string_view chunk, int64_t index, absl::string_view* payload) {
  if (chunk.size() < kStateChunkHeaderBytes) {
    return DataLoss("state chunk ", index, ": ", chunk.size(),
                    " bytes, shorter than the 16-byte chunk header");
  }
  if (std::memcmp(chunk.data(), kChunkMagic, 4) != 0) {
    return DataLoss("state chunk ", index, ": bad magic \"", absl::CHexEscape(chunk.substr(0, 4)),
                    "\", expected \"SBYC\"");
  }
  const uint32_t seq = GetU32(chunk.data() + 4);
  const uint32_t len = GetU32(chunk.data() + 8);
  const uint32_t crc = GetU32(chunk.data() + 12);
  if (len != chunk.size() - kStateChunkHeaderBytes) {
    return DataLoss("state chunk ", index, ": payload length field says ", len,
                    " bytes but the chunk carries ", chunk.size() - kStateChunkHeaderBytes);
  }
  if (seq != index) {
    return Invalid("state chunk ", index, ": out of order: sequence number ", seq, ", expected ",
                   index);
  }
  if (len == 0) return Invalid("state chunk ", index, ": empty payload");
  const uint32_t actual = Crc32c(chunk.data() + kStateChunkHeaderBytes, len);
  if (actual != crc) {
    return DataLoss("state chunk ", index, ": CRC32C mismatch (stored ",
                    absl::Hex(crc, absl::kZeroPad8), ", computed ",
                    absl::Hex(actual, absl::kZeroPad8), ")");
  }
  *payload = chunk.substr(kStateChunkHeaderBytes);
  return absl::OkStatus();
}

}  // namespace

const char* StateTensorKindName(StateTensorKind k) {
  static constexpr const char* kNames[kNumTensorKinds] = {"conv_state", "ssm_state", "swa_k",
                                                          "swa_v",      "global_k",  "global_v"};
  const uint32_t i = static_cast<uint32_t>(k);
  return i < kNumTensorKinds ? kNames[i] : "?";
}

int64_t StatePayloadBytes(const ModelConfig& config, int64_t num_tokens) {
  int64_t bytes = 0;
  for (const EntrySpec& e : ExpectedEntries(config, std::max<int64_t>(0, num_tokens))) {
    bytes += e.rows * e.cols * 4;
  }
  return bytes;
}

int64_t StateStreamBytes(const ModelConfig& config, size_t fingerprint_bytes, int64_t num_tokens) {
  const int64_t entries =
      static_cast<int64_t>(ExpectedEntries(config, std::max<int64_t>(0, num_tokens)).size());
  return HeaderBytes(fingerprint_bytes, config.num_layers) +
         entries * static_cast<int64_t>(kStateEntryDescriptorBytes) +
         StatePayloadBytes(config, num_tokens);
}

absl::StatusOr<std::vector<std::string>> ExportState(const ModelConfig& config,
                                                     const std::string& fingerprint,
                                                     const SequenceState& state,
                                                     size_t max_chunk_bytes) {
  std::vector<std::string> chunks;
  SAMBAY_RETURN_IF_ERROR(
      ExportStateTo(config, fingerprint, state, max_chunk_bytes, [&](std::string chunk) {
        chunks.push_back(std::move(chunk));
        return absl::OkStatus();
      }));
  return chunks;
}

absl::Status ExportStateTo(const ModelConfig& config, const std::string& fingerprint,
                           const SequenceState& state, size_t max_chunk_bytes,
                           const StateChunkSink& sink) {
  if (fingerprint.size() > kMaxStateFingerprintBytes) {
    return Invalid("export: fingerprint has ", fingerprint.size(), " bytes, at most 64 allowed");
  }
  std::optional<TpPlan> plan;
  SAMBAY_RETURN_IF_ERROR(CheckStateMatchesConfig(config, state, &plan));
  const TpPlan* tp = plan ? &*plan : nullptr;
  const int64_t n = state.num_tokens;
  const std::vector<EntrySpec> entries = ExpectedEntries(config, n);

  std::string header;
  header.append(kStreamMagic, 4);
  PutU32(header, kStateFormatVersion);
  PutU32(header, static_cast<uint32_t>(fingerprint.size()));
  header.append(fingerprint);
  PutU32(header, static_cast<uint32_t>(DType::kF32));
  PutU64(header, static_cast<uint64_t>(n));
  PutU32(header, static_cast<uint32_t>(state.last_token));
  for (uint64_t w : state.rng_state) PutU64(header, w);
  PutU32(header, static_cast<uint32_t>(config.num_layers));
  for (LayerKind k : config.layers) header.push_back(static_cast<char>(k));
  PutU32(header, static_cast<uint32_t>(entries.size()));

  const size_t max_payload = std::min<size_t>(
      max_chunk_bytes > kStateChunkHeaderBytes ? max_chunk_bytes - kStateChunkHeaderBytes : 0,
      0xffffffffu);
  if (max_payload < header.size()) {
    return Invalid("export: max_chunk_bytes ", max_chunk_bytes,
                   " cannot hold the chunk header and the ", header.size(),
                   "-byte state header (need at least ", header.size() + kStateChunkHeaderBytes,
                   ")");
  }
  ChunkWriter w(max_payload, StateStreamBytes(config, fingerprint.size(), n), sink);
  w.Append(header.data(), header.size());
  for (const EntrySpec& e : entries) {
    std::string d;
    PutU32(d, static_cast<uint32_t>(e.layer));
    PutU32(d, static_cast<uint32_t>(e.kind));
    PutU32(d, static_cast<uint32_t>(DType::kF32));
    PutU32(d, kTensorRank);
    PutU64(d, static_cast<uint64_t>(e.rows));
    PutU64(d, static_cast<uint64_t>(e.cols));
    w.Append(d.data(), d.size());
    // A sharded state is gathered here: each logical row is written piece by piece.
    for (int64_t r = 0; r < e.rows; ++r) {
      ForEachPiece(state, config, tp, e, r, n, [&](const float* p, int64_t cols) {
        w.Append(reinterpret_cast<const char*>(p), static_cast<size_t>(cols) * 4);
      });
    }
  }
  return w.Finish();
}

// ---- StateImporter -------------------------------------------------------------------------

struct StateImporter::Impl {
  enum class Phase { kHeader, kDescriptor, kData, kDone, kFinished };

  ModelConfig config;
  std::string fingerprint;
  int64_t max_tokens;
  std::optional<TpPlan> plan;  // set when importing into a sharded (TP > 1) state
  absl::Status error;
  Phase phase = Phase::kHeader;
  int64_t chunks = 0;
  int64_t bytes = 0;
  std::optional<StateHeaderInfo> header;
  std::unique_ptr<SequenceState> state;
  std::vector<EntrySpec> expected;
  std::vector<int> index;  // [layer * kNumTensorKinds + kind] -> index in expected, or -1
  std::vector<bool> seen;
  uint32_t entries_done = 0;
  std::string pending;  // descriptor bytes received so far
  int current = -1;     // index in expected of the entry being read
  int64_t data_offset = 0;

  absl::Status Fail(absl::Status s) {
    error = s;
    return s;
  }
  absl::Status AddChunk(absl::string_view chunk);
  absl::Status ParseHeader(absl::string_view payload, size_t* used);
  // ParseHeader's steps in stream order (magic, version, fingerprint; dtype, num_tokens,
  // last_token, RNG; layer table), then StartEntries allocates the state for a valid header.
  absl::Status ParseStreamId(Reader& r, StateHeaderInfo* h);
  absl::Status ParseTokenFields(Reader& r, StateHeaderInfo* h);
  absl::Status ParseLayerTable(Reader& r, StateHeaderInfo* h);
  void StartEntries(StateHeaderInfo h);
  absl::Status Consume(absl::string_view in);
  absl::Status CheckDescriptor();
  void EntryDone();
};

absl::Status StateImporter::Impl::ParseStreamId(Reader& r, StateHeaderInfo* h) {
  absl::string_view magic, fp;
  uint32_t fp_len;
  if (!r.Bytes(4, &magic) || !r.U32(&h->format_version)) return HeaderTruncated(r);
  if (magic != absl::string_view(kStreamMagic, 4)) {
    return Invalid("state header: bad magic \"", absl::CHexEscape(magic), "\", expected \"SBYS\"");
  }
  if (h->format_version != kStateFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("state format version ", h->format_version,
                     " is not supported (this build reads version ", kStateFormatVersion, ")"));
  }
  if (!r.U32(&fp_len)) return HeaderTruncated(r);
  if (fp_len > kMaxStateFingerprintBytes) {
    return Invalid("state header: fingerprint length ", fp_len, " exceeds 64 bytes");
  }
  if (!r.Bytes(fp_len, &fp)) return HeaderTruncated(r);
  if (fp != fingerprint) {
    return absl::FailedPreconditionError(
        absl::StrCat("model fingerprint mismatch: the state is for model \"", absl::CHexEscape(fp),
                     "\", this model is \"", absl::CHexEscape(fingerprint), "\""));
  }
  h->fingerprint = std::string(fp);
  return absl::OkStatus();
}

absl::Status StateImporter::Impl::ParseTokenFields(Reader& r, StateHeaderInfo* h) {
  uint32_t dtype, last;
  uint64_t num_tokens;
  if (!r.U32(&dtype)) return HeaderTruncated(r);
  if (dtype != static_cast<uint32_t>(DType::kF32)) {
    return Invalid("state header: dtype code ", dtype,
                   dtype <= 2
                       ? absl::StrCat(" (", std::string(DTypeName(static_cast<DType>(dtype))), ")")
                       : " (unknown)",
                   " is not supported; this engine's states are F32 (code 0)");
  }
  if (!r.U64(&num_tokens)) return HeaderTruncated(r);
  h->num_tokens = static_cast<int64_t>(num_tokens);
  if (h->num_tokens < 0) {
    return Invalid("state header: num_tokens is negative (", h->num_tokens, ")");
  }
  if (h->num_tokens > max_tokens) {
    return Invalid("state header: num_tokens ", h->num_tokens, " exceeds the limit of ", max_tokens,
                   " tokens");
  }
  if (!r.U32(&last)) return HeaderTruncated(r);
  h->last_token = static_cast<int32_t>(last);
  if (h->last_token < -1 || h->last_token >= config.vocab_size) {
    return Invalid("state header: last_token ", h->last_token, " is outside [-1, ",
                   config.vocab_size, ")");
  }
  for (uint64_t& w : h->rng_state) {
    if (!r.U64(&w)) return HeaderTruncated(r);
  }
  return absl::OkStatus();
}

absl::Status StateImporter::Impl::ParseLayerTable(Reader& r, StateHeaderInfo* h) {
  uint32_t num_layers;
  if (!r.U32(&num_layers)) return HeaderTruncated(r);
  if (num_layers != static_cast<uint32_t>(config.num_layers)) {
    return Invalid("state header: layer table has ", num_layers, " layers, this model has ",
                   config.num_layers);
  }
  absl::string_view table;
  if (!r.Bytes(num_layers, &table)) return HeaderTruncated(r);
  for (uint32_t i = 0; i < num_layers; ++i) {
    const uint8_t code = static_cast<uint8_t>(table[i]);
    if (code >= kNumLayerKinds) {
      return Invalid("state header: layer table: layer ", i, " has unknown kind code ", code);
    }
    const LayerKind k = static_cast<LayerKind>(code);
    if (k != config.layers[i]) {
      return Invalid("state header: layer table: layer ", i, " is ", LayerKindName(k),
                     " in the state, ", LayerKindName(config.layers[i]), " in this model");
    }
    h->layers.push_back(k);
  }
  return absl::OkStatus();
}

void StateImporter::Impl::StartEntries(StateHeaderInfo h) {
  // Valid: allocate the fixed-size state (bounded by the config). The global K/V grows only as
  // its verified bytes arrive.
  index.assign(static_cast<size_t>(config.num_layers) * kNumTensorKinds, -1);
  for (size_t i = 0; i < expected.size(); ++i) {
    index[expected[i].layer * kNumTensorKinds + static_cast<uint32_t>(expected[i].kind)] =
        static_cast<int>(i);
  }
  seen.assign(expected.size(), false);
  state = plan ? std::make_unique<SequenceState>(config, *plan)
               : std::make_unique<SequenceState>(config);
  header = std::move(h);
  phase = expected.empty() ? Phase::kDone : Phase::kDescriptor;
}

absl::Status StateImporter::Impl::ParseHeader(absl::string_view payload, size_t* used) {
  Reader r(payload);
  StateHeaderInfo h;
  SAMBAY_RETURN_IF_ERROR(ParseStreamId(r, &h));
  SAMBAY_RETURN_IF_ERROR(ParseTokenFields(r, &h));
  SAMBAY_RETURN_IF_ERROR(ParseLayerTable(r, &h));
  if (!r.U32(&h.num_entries)) return HeaderTruncated(r);
  expected = ExpectedEntries(config, h.num_tokens);
  if (h.num_entries != expected.size()) {
    return Invalid("state header: ", h.num_entries, " tensor entries, this model has ",
                   expected.size());
  }
  h.header_bytes = static_cast<int64_t>(r.pos());
  *used = r.pos();
  StartEntries(std::move(h));
  return absl::OkStatus();
}

absl::Status StateImporter::Impl::CheckDescriptor() {
  const char* p = pending.data();
  const uint32_t layer = GetU32(p), kind = GetU32(p + 4), dtype = GetU32(p + 8);
  const uint32_t rank = GetU32(p + 12);
  const std::string where = absl::StrCat("state entry ", entries_done, ": ");
  if (layer >= static_cast<uint32_t>(config.num_layers)) {
    return Invalid(where, "layer index ", layer, " is outside [0, ", config.num_layers, ")");
  }
  if (kind >= kNumTensorKinds) {
    return Invalid(where, "layer ", layer, ": unknown tensor kind code ", kind);
  }
  const int i = index[layer * kNumTensorKinds + kind];
  const char* kind_name = StateTensorKindName(static_cast<StateTensorKind>(kind));
  if (i < 0) {
    return Invalid(where, "layer ", layer, " (", LayerKindName(config.layers[layer]), ") has no ",
                   kind_name, " tensor");
  }
  const EntrySpec& e = expected[i];
  if (seen[i]) return Invalid(where, "duplicate ", EntryName(e));
  if (dtype != static_cast<uint32_t>(DType::kF32)) {
    return Invalid(where, EntryName(e), ": dtype code ", dtype, ", expected 0 (F32)");
  }
  if (rank != kTensorRank) return Invalid(where, EntryName(e), ": rank ", rank, ", expected 2");
  if (pending.size() < kStateEntryDescriptorBytes) return absl::OkStatus();  // dims not yet here
  const int64_t rows = static_cast<int64_t>(GetU64(p + 16));
  const int64_t cols = static_cast<int64_t>(GetU64(p + 24));
  if (rows != e.rows || cols != e.cols) {
    return Invalid(where, EntryName(e), ": shape ", ShapeString(rows, cols),
                   " does not match the model's ", ShapeString(e.rows, e.cols));
  }
  seen[i] = true;
  current = i;
  data_offset = 0;
  phase = Phase::kData;
  if (e.rows * e.cols == 0) EntryDone();
  return absl::OkStatus();
}

void StateImporter::Impl::EntryDone() {
  ++entries_done;
  pending.clear();
  current = -1;
  phase = entries_done == expected.size() ? Phase::kDone : Phase::kDescriptor;
}

absl::Status StateImporter::Impl::Consume(absl::string_view in) {
  const int64_t n = header->num_tokens;
  while (!in.empty()) {
    if (phase == Phase::kDone) {
      return Invalid("state stream: ", in.size(), " trailing bytes after the last tensor entry",
                     " (chunk ", chunks - 1, ")");
    }
    if (phase == Phase::kDescriptor) {
      // Fixed part first (validated before the dims are read), then the dims.
      const size_t want = pending.size() < kDescriptorFixedBytes ? kDescriptorFixedBytes
                                                                 : kStateEntryDescriptorBytes;
      const size_t take = std::min(in.size(), want - pending.size());
      pending.append(in.data(), take);
      in.remove_prefix(take);
      if (pending.size() == want) SAMBAY_RETURN_IF_ERROR(CheckDescriptor());
      continue;
    }
    // kData: copy into the rows of the fresh state (scattered over its shards, if sharded).
    const EntrySpec& e = expected[current];
    const int64_t row_bytes = e.cols * 4;
    const int64_t r = data_offset / row_bytes;
    const int64_t within = data_offset % row_bytes;
    const int64_t take = std::min<int64_t>(static_cast<int64_t>(in.size()), row_bytes - within);
    if (e.kind == StateTensorKind::kGlobalK || e.kind == StateTensorKind::kGlobalV) {
      EnsureGlobalRows(*state, r + 1);
    }
    int64_t piece_begin = 0;  // bytes
    ForEachPiece(*state, config, plan ? &*plan : nullptr, e, r, n, [&](float* p, int64_t cols) {
      const int64_t pb = piece_begin, pe = piece_begin + cols * 4;
      piece_begin = pe;
      const int64_t lo = std::max(pb, within), hi = std::min(pe, within + take);
      if (lo < hi) {
        std::memcpy(reinterpret_cast<char*>(p) + (lo - pb), in.data() + (lo - within),
                    static_cast<size_t>(hi - lo));
      }
    });
    in.remove_prefix(static_cast<size_t>(take));
    data_offset += take;
    if (data_offset == e.rows * row_bytes) EntryDone();
  }
  return absl::OkStatus();
}

absl::Status StateImporter::Impl::AddChunk(absl::string_view chunk) {
  if (!error.ok()) return error;
  if (phase == Phase::kFinished) {
    return absl::FailedPreconditionError("state import: AddChunk after Finish");
  }
  absl::string_view payload;
  SAMBAY_RETURN_IF_ERROR(Fail(CheckChunkFrame(chunk, chunks, &payload)));
  ++chunks;
  bytes += static_cast<int64_t>(payload.size());
  if (phase == Phase::kHeader) {
    size_t used = 0;
    SAMBAY_RETURN_IF_ERROR(Fail(ParseHeader(payload, &used)));
    payload.remove_prefix(used);
  }
  return Fail(Consume(payload));
}

StateImporter::StateImporter(const ModelConfig& config, const std::string& fingerprint,
                             int64_t max_tokens, int tp)
    : impl_(std::make_unique<Impl>()) {
  impl_->config = config;
  impl_->fingerprint = fingerprint;
  impl_->max_tokens = std::max<int64_t>(0, max_tokens);
  if (tp != 1) {
    auto plan = MakeTpPlan(config, tp);
    if (plan.ok()) {
      impl_->plan = std::move(*plan);
    } else {
      impl_->error =
          absl::InvalidArgumentError(absl::StrCat("state import: ", plan.status().message()));
    }
  }
}
StateImporter::~StateImporter() = default;
StateImporter::StateImporter(StateImporter&&) noexcept = default;
StateImporter& StateImporter::operator=(StateImporter&&) noexcept = default;

absl::Status StateImporter::AddChunk(absl::string_view chunk) { return impl_->AddChunk(chunk); }

absl::StatusOr<std::unique_ptr<SequenceState>> StateImporter::Finish() {
  Impl& m = *impl_;
  if (!m.error.ok()) return m.error;
  if (m.phase == Impl::Phase::kFinished) {
    return absl::FailedPreconditionError("state import: Finish called twice");
  }
  if (m.phase != Impl::Phase::kDone) {
    std::string where = "in the header";
    if (m.phase == Impl::Phase::kDescriptor) {
      where = absl::StrCat("in the descriptor of entry ", m.entries_done);
    } else if (m.phase == Impl::Phase::kData) {
      where = absl::StrCat("in the data of ", EntryName(m.expected[m.current]));
    }
    return m.Fail(DataLoss("state stream truncated: ended after ", m.chunks, " chunks and ",
                           m.bytes, " payload bytes, ", where, " (entry ", m.entries_done, " of ",
                           m.expected.size(), ")"));
  }
  const StateHeaderInfo& h = *m.header;
  const int64_t want = StateStreamBytes(m.config, h.fingerprint.size(), h.num_tokens);
  if (m.bytes != want || GlobalRows(*m.state) != h.num_tokens) {
    return m.Fail(absl::InternalError(
        absl::StrCat("state import: received ", m.bytes, " bytes, expected ", want)));
  }
  m.state->num_tokens = h.num_tokens;
  m.state->last_token = h.last_token;
  m.state->rng_state = h.rng_state;
  for (SequenceState& sh : m.state->shards) sh.num_tokens = h.num_tokens;
  m.phase = Impl::Phase::kFinished;
  return std::move(m.state);
}

const StateHeaderInfo* StateImporter::header() const {
  return impl_->header ? &*impl_->header : nullptr;
}
int64_t StateImporter::chunks_received() const { return impl_->chunks; }
int64_t StateImporter::payload_bytes_received() const { return impl_->bytes; }

absl::StatusOr<std::unique_ptr<SequenceState>> ImportState(const ModelConfig& config,
                                                           const std::string& fingerprint,
                                                           const std::vector<std::string>& chunks,
                                                           int64_t max_tokens, int tp) {
  // Every frame and CRC first, before anything is allocated.
  int64_t total = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    absl::string_view payload;
    SAMBAY_RETURN_IF_ERROR(CheckChunkFrame(chunks[i], static_cast<int64_t>(i), &payload));
    total += static_cast<int64_t>(payload.size());
  }
  // The global K/V alone takes 8 * kv_dim bytes per token: no larger claim can be honest.
  const int64_t by_bytes = total / std::max<int64_t>(1, 8 * config.kv_dim());
  StateImporter importer(config, fingerprint, std::min(max_tokens, by_bytes), tp);
  for (const std::string& c : chunks) SAMBAY_RETURN_IF_ERROR(importer.AddChunk(c));
  return importer.Finish();
}

absl::Status ReshardState(const ModelConfig& config, int tp, SequenceState& state) {
  if (state.shards.size() == (tp == 1 ? 0 : static_cast<size_t>(tp))) return absl::OkStatus();
  std::optional<TpPlan> from;
  SAMBAY_RETURN_IF_ERROR(CheckStateMatchesConfig(config, state, &from));
  std::optional<TpPlan> to;
  if (tp != 1) {
    auto p = MakeTpPlan(config, tp);
    if (!p.ok()) return p.status();
    to = std::move(*p);
  }
  const int64_t n = state.num_tokens;
  SequenceState out = to ? SequenceState(config, *to) : SequenceState(config);
  EnsureGlobalRows(out, n);
  std::vector<float> row;
  for (const EntrySpec& e : ExpectedEntries(config, n)) {
    row.resize(static_cast<size_t>(e.cols));
    for (int64_t r = 0; r < e.rows; ++r) {
      int64_t at = 0;
      ForEachPiece(state, config, from ? &*from : nullptr, e, r, n,
                   [&](const float* p, int64_t cols) {
                     std::memcpy(row.data() + at, p, static_cast<size_t>(cols) * 4);
                     at += cols;
                   });
      at = 0;
      ForEachPiece(out, config, to ? &*to : nullptr, e, r, n, [&](float* p, int64_t cols) {
        std::memcpy(p, row.data() + at, static_cast<size_t>(cols) * 4);
        at += cols;
      });
    }
  }
  out.num_tokens = n;
  out.last_token = state.last_token;
  out.rng_state = state.rng_state;
  for (SequenceState& sh : out.shards) sh.num_tokens = n;
  state = std::move(out);
  return absl::OkStatus();
}

}  // namespace sambay
