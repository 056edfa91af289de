#include "engine/state_io.h"

#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/model_maker.h"

namespace sambay {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

#define SAMBAY_EXPECT_OK(expr)            \
  do {                                    \
    const absl::Status s_ = (expr);       \
    EXPECT_TRUE(s_.ok()) << s_.message(); \
  } while (0)

constexpr char kFp[] = "0123456789abcdef";  // 16 bytes, like Model::fingerprint()
constexpr size_t kFrame = 16;               // chunk frame header, computed by hand below

ModelConfig Tiny() { return PresetConfig("tiny").value(); }

// ---- The test's own view of the format (independent of state_io.cc) ----------------------

uint32_t GetU32(const std::string& s, size_t off) {
  uint32_t v;
  std::memcpy(&v, s.data() + off, 4);
  return v;
}
void SetU32(std::string& s, size_t off, uint32_t v) { std::memcpy(s.data() + off, &v, 4); }
void SetU64(std::string& s, size_t off, uint64_t v) { std::memcpy(s.data() + off, &v, 8); }

// Header field offsets for a fingerprint of f bytes and L layers (docs/state-format.md).
struct Layout {
  size_t fp_len = 8, fp = 12, dtype, num_tokens, last_token, rng, num_layers, table, entries, size;
  Layout(size_t f, size_t layers) {
    dtype = fp + f;
    num_tokens = dtype + 4;
    last_token = num_tokens + 8;
    rng = last_token + 4;
    num_layers = rng + 32;
    table = num_layers + 4;
    entries = table + layers;
    size = entries + 4;
  }
};

// Concatenated payloads (the logical stream), checking each frame by hand.
std::string Stream(const std::vector<std::string>& chunks) {
  std::string s;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const std::string& c = chunks[i];
    EXPECT_EQ(c.substr(0, 4), "SBYC");
    EXPECT_EQ(GetU32(c, 4), i);
    EXPECT_EQ(GetU32(c, 8), c.size() - kFrame);
    EXPECT_EQ(GetU32(c, 12), Crc32c(c.data() + kFrame, c.size() - kFrame));
    s.append(c, kFrame);
  }
  return s;
}

std::string MakeChunk(uint32_t seq, const std::string& payload) {
  std::string c = "SBYC" + std::string(12, '\0') + payload;
  SetU32(c, 4, seq);
  SetU32(c, 8, static_cast<uint32_t>(payload.size()));
  SetU32(c, 12, Crc32c(payload.data(), payload.size()));
  return c;
}

// Frames a logical stream: first chunk of `first` payload bytes, then `rest` bytes each.
std::vector<std::string> Frame(const std::string& stream, size_t first = 984, size_t rest = 984) {
  std::vector<std::string> out;
  for (size_t off = 0; off < stream.size();) {
    const size_t n = std::min(out.empty() ? first : rest, stream.size() - off);
    out.push_back(MakeChunk(static_cast<uint32_t>(out.size()), stream.substr(off, n)));
    off += n;
  }
  return out;
}

// A state with every live value random.
std::unique_ptr<SequenceState> RandomState(const ModelConfig& c, int64_t n, uint32_t seed) {
  auto s = std::make_unique<SequenceState>(c);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const auto fill = [&](std::vector<float>& v) {
    for (float& x : v) x = u(rng);
  };
  for (auto& m : s->mamba) fill(m.conv), fill(m.ssm);
  for (auto& r : s->swa) fill(r.k), fill(r.v);
  s->global.Resize(n);
  for (int64_t p = 0; p < n; ++p) {
    for (int64_t j = 0; j < c.kv_dim(); ++j) s->global.k(p)[j] = u(rng), s->global.v(p)[j] = u(rng);
  }
  s->num_tokens = n;
  s->last_token = 7;
  s->rng_state = {11, 22, 33, 44};
  return s;
}

// Everything a continuation can read is bitwise equal.
void ExpectSameState(const ModelConfig& c, const SequenceState& a, const SequenceState& b) {
  ASSERT_EQ(a.num_tokens, b.num_tokens);
  EXPECT_EQ(a.last_token, b.last_token);
  EXPECT_EQ(a.rng_state, b.rng_state);
  const int64_t n = a.num_tokens, W = c.sliding_window, kvd = c.kv_dim();
  for (int i = 0; i < c.num_layers; ++i) {
    EXPECT_EQ(a.mamba[i].conv, b.mamba[i].conv) << "layer " << i;
    EXPECT_EQ(a.mamba[i].ssm, b.mamba[i].ssm) << "layer " << i;
    if (c.layers[i] != LayerKind::kSwa) continue;
    for (int64_t p = std::max<int64_t>(0, n - W); p < n; ++p) {
      const int64_t o = (p % W) * kvd;
      EXPECT_EQ(0, std::memcmp(&a.swa[i].k[o], &b.swa[i].k[o], kvd * 4)) << i << " pos " << p;
      EXPECT_EQ(0, std::memcmp(&a.swa[i].v[o], &b.swa[i].v[o], kvd * 4)) << i << " pos " << p;
    }
  }
  ASSERT_EQ(b.global.size(), n);
  for (int64_t p = 0; p < n; ++p) {
    EXPECT_EQ(0, std::memcmp(a.global.k(p), b.global.k(p), kvd * 4)) << "global pos " << p;
    EXPECT_EQ(0, std::memcmp(a.global.v(p), b.global.v(p), kvd * 4)) << "global pos " << p;
  }
}

void ExpectShape(const ModelConfig& c, const SequenceState& s, int64_t n) {
  EXPECT_EQ(s.num_tokens, n);
  ASSERT_EQ(s.mamba.size(), static_cast<size_t>(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    const bool mamba = c.layers[i] == LayerKind::kMamba, swa = c.layers[i] == LayerKind::kSwa;
    EXPECT_EQ(s.mamba[i].ssm.size(), mamba ? static_cast<size_t>(c.d_inner * c.d_state) : 0u);
    EXPECT_EQ(s.swa[i].k.size(), swa ? static_cast<size_t>(c.sliding_window * c.kv_dim()) : 0u);
  }
  EXPECT_EQ(s.global.size(), n);
}

std::vector<int32_t> Tokens(int64_t n, uint32_t seed, int64_t vocab) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

// ---- Round trips through the real model ---------------------------------------------------

class StateIoModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string tmpl = ::testing::TempDir() + "/state_io_test_XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) return;
    dir_ = new std::string(tmpl);
    MakeModelOptions o;
    o.seed = 3;
    o.dtype = DType::kF32;
    o.threads = 2;
    if (!MakeModel(*dir_, Tiny(), o).ok()) return;
    ModelOptions mo;
    mo.num_threads = 2;
    auto m = Model::Load(*dir_, mo);
    if (m.ok()) model_ = m->release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
    if (dir_ != nullptr) std::filesystem::remove_all(*dir_);
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(model_, nullptr) << "could not make/load the tiny model"; }

  static Model* model_;
  static std::string* dir_;
};
Model* StateIoModelTest::model_ = nullptr;
std::string* StateIoModelTest::dir_ = nullptr;

TEST_F(StateIoModelTest, RoundTripContinuesBitwiseIdentically) {
  const ModelConfig& c = model_->config();
  ASSERT_EQ(c.sliding_window, 16);
  const std::string& fp = model_->fingerprint();
  for (int64_t n : {5, 16, 40}) {
    SCOPED_TRACE(absl::StrCat("prefill ", n));
    auto a = model_->NewState();
    std::vector<float> la, lb, lc;
    SAMBAY_EXPECT_OK(model_->Prefill(*a, Tokens(n, 100 + n, c.vocab_size), 0, &la));
    a->last_token = 5;
    a->rng_state = {1, 2, 3, static_cast<uint64_t>(n)};
    for (size_t max_chunk : {kDefaultStateChunkBytes, size_t{1000}}) {
      auto chunks = ExportState(c, fp, *a, max_chunk);
      ASSERT_TRUE(chunks.ok()) << chunks.status();
      auto b = ImportState(c, fp, *chunks);
      ASSERT_TRUE(b.ok()) << b.status();
      ExpectSameState(c, *a, **b);
    }
    auto chunks = ExportState(c, fp, *a).value();
    auto b = ImportState(c, fp, chunks).value();
    // Control: a state differing in one live SWA value (the newest token) must change logits,
    // so the comparison below can detect a misplaced window row.
    auto bad = ImportState(c, fp, chunks).value();
    bad->swa[1].k[((n - 1) % c.sliding_window) * c.kv_dim()] += 0.5f;
    const std::vector<int32_t> feed = Tokens(8, 7 + n, c.vocab_size);
    for (int step = 0; step < 8; ++step) {
      SequenceState* sa[1] = {a.get()};
      SequenceState* sb[1] = {b.get()};
      SAMBAY_EXPECT_OK(model_->DecodeStep(sa, {&feed[step], 1}, &la));
      SAMBAY_EXPECT_OK(model_->DecodeStep(sb, {&feed[step], 1}, &lb));
      ASSERT_EQ(la.size(), static_cast<size_t>(c.vocab_size));
      ASSERT_EQ(la.size(), lb.size());
      ASSERT_EQ(0, std::memcmp(la.data(), lb.data(), la.size() * 4)) << "decode step " << step;
      if (step == 0) {
        SequenceState* sc[1] = {bad.get()};
        SAMBAY_EXPECT_OK(model_->DecodeStep(sc, {&feed[step], 1}, &lc));
        EXPECT_NE(0, std::memcmp(la.data(), lc.data(), la.size() * 4));
      }
    }
    ExpectSameState(c, *a, *b);
  }
}

TEST_F(StateIoModelTest, GenerateExportImportContinuesLikeUninterruptedRun) {
  const ModelConfig& c = model_->config();
  const std::string& fp = model_->fingerprint();
  const std::vector<int32_t> prompt = Tokens(12, 5, c.vocab_size);
  for (float temperature : {0.0f, 0.9f}) {
    SCOPED_TRACE(absl::StrCat("temperature ", temperature));
    GenerateOptions o;
    o.max_new_tokens = 20;
    o.sampling.temperature = temperature;
    o.sampling.top_k = 50;
    o.sampling.repetition_penalty = temperature > 0 ? 1.2f : 1.0f;
    o.sampling.seed = 1234;
    auto full_state = model_->NewState();
    const std::vector<int32_t> full = Generate(*model_, *full_state, prompt, o).value();
    ASSERT_EQ(full.size(), 20u);

    o.max_new_tokens = 10;
    auto s1 = model_->NewState();
    const std::vector<int32_t> first = Generate(*model_, *s1, prompt, o).value();
    ASSERT_EQ(first, std::vector<int32_t>(full.begin(), full.begin() + 10));
    auto s2 = ImportState(c, fp, ExportState(c, fp, *s1).value()).value();
    ExpectSameState(c, *s1, *s2);
    ASSERT_EQ(s2->last_token, first.back());
    ASSERT_EQ(s2->num_tokens, 12 + 9);

    // ContinueGeneration feeds last_token and samples with the imported RNG state; the
    // history (prompt + generated) feeds the penalties.
    std::vector<int32_t> history = prompt;
    history.insert(history.end(), first.begin(), first.end());
    o.max_new_tokens = 10;
    const std::vector<int32_t> rest = ContinueGeneration(*model_, *s2, history, o).value();
    std::vector<int32_t> out = first;
    out.insert(out.end(), rest.begin(), rest.end());
    EXPECT_EQ(out, full);
  }
}

// ---- Bytes on the wire ----------------------------------------------------------------------

TEST(StateIoTest, WireBytesEqualHeaderPlusDescriptorsPlusAnalyticPayload) {
  const ModelConfig c = Tiny();
  // tiny: 8 layers = 3 Mamba (0, 2, 4), 2 SWA (1, 3), global 5; d_inner 256, kv_dim 64.
  ASSERT_EQ(std::count(c.layers.begin(), c.layers.end(), LayerKind::kMamba), 3);
  ASSERT_EQ(std::count(c.layers.begin(), c.layers.end(), LayerKind::kSwa), 2);
  ASSERT_EQ(std::count(c.layers.begin(), c.layers.end(), LayerKind::kGlobal), 1);
  ASSERT_EQ(c.d_inner, 256);
  ASSERT_EQ(c.kv_dim(), 64);
  const int64_t header = 4 + 4 + 4 + 16 + 4 + 8 + 4 + 4 * 8 + 4 + 8 + 4;  // = 92
  ASSERT_EQ(static_cast<size_t>(header), Layout(16, 8).size);
  const int64_t descriptors = 12 * (4 * 4 + 2 * 8);
  for (int64_t n : {0, 1, 5, 16, 17, 40, 300}) {
    SCOPED_TRACE(n);
    const int64_t payload =
        3 * (3 * 256 + 256 * 16) * 4 + 2 * 2 * std::min<int64_t>(n, 16) * 64 * 4 + 2 * n * 64 * 4;
    EXPECT_EQ(StatePayloadBytes(c, n), payload);
    EXPECT_EQ(StateStreamBytes(c, 16, n), header + descriptors + payload);
    auto s = RandomState(c, n, 1);
    const std::vector<std::string> chunks = ExportState(c, kFp, *s).value();
    EXPECT_EQ(chunks.size(), 1u);
    EXPECT_EQ(static_cast<int64_t>(Stream(chunks).size()), header + descriptors + payload);
    ExpectSameState(c, *s, *ImportState(c, kFp, chunks).value());
  }
}

TEST(StateIoTest, SmallChunksRoundTrip) {
  const ModelConfig c = Tiny();
  auto s = RandomState(c, 40, 2);
  const int64_t total = StateStreamBytes(c, 16, 40);
  for (size_t max_chunk : {size_t{1000}, size_t{Layout(16, 8).size + kFrame}, size_t{4099}}) {
    SCOPED_TRACE(max_chunk);
    const std::vector<std::string> chunks = ExportState(c, kFp, *s, max_chunk).value();
    const int64_t per = static_cast<int64_t>(max_chunk - kFrame);
    EXPECT_EQ(static_cast<int64_t>(chunks.size()), (total + per - 1) / per);
    for (const std::string& ch : chunks) EXPECT_LE(ch.size(), max_chunk);
    EXPECT_EQ(static_cast<int64_t>(Stream(chunks).size()), total);
    ExpectSameState(c, *s, *ImportState(c, kFp, chunks).value());
    // One at a time, as a gRPC stream would deliver them.
    StateImporter imp(c, kFp, 40);
    for (const std::string& ch : chunks) SAMBAY_EXPECT_OK(imp.AddChunk(ch));
    ASSERT_NE(imp.header(), nullptr);
    EXPECT_EQ(imp.header()->num_tokens, 40);
    EXPECT_EQ(imp.payload_bytes_received(), total);
    ExpectSameState(c, *s, *imp.Finish().value());
  }
  // A chunk that cannot hold the frame plus the whole header is refused.
  auto r = ExportState(c, kFp, *s, Layout(16, 8).size + kFrame - 1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

// ExportStateTo hands each chunk over as soon as it is full (the sender streams the state
// instead of holding a second copy): the sink sees every chunk of ExportState, in order, and
// each one before the next is made; a sink error stops the export and is returned.
TEST(StateIoTest, ExportStateToStreamsChunkByChunk) {
  const ModelConfig c = Tiny();
  auto s = RandomState(c, 40, 2);
  const std::vector<std::string> all = ExportState(c, kFp, *s, 1000).value();
  ASSERT_GT(all.size(), 3u);
  std::vector<std::string> got;
  SAMBAY_EXPECT_OK(ExportStateTo(c, kFp, *s, 1000, [&](std::string chunk) {
    got.push_back(std::move(chunk));
    return absl::OkStatus();
  }));
  EXPECT_EQ(got, all);
  int calls = 0;
  const absl::Status st = ExportStateTo(c, kFp, *s, 1000, [&](std::string) {
    return ++calls == 2 ? absl::UnavailableError("peer gone") : absl::OkStatus();
  });
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_EQ(calls, 2) << "the export went on after the sink failed";
}

TEST(StateIoTest, ExportRejectsBadInputs) {
  const ModelConfig c = Tiny();
  auto s = RandomState(c, 10, 3);
  EXPECT_EQ(ExportState(c, std::string(65, 'f'), *s).status().code(),
            absl::StatusCode::kInvalidArgument);
  s->global.Resize(9);  // global K/V shorter than num_tokens
  EXPECT_THAT(ExportState(c, kFp, *s).status().message(), HasSubstr("global"));
  ModelConfig other = c;
  other.d_state = 8;
  ASSERT_TRUE(FinalizeModelConfig(other).ok());
  EXPECT_EQ(ExportState(other, kFp, *RandomState(c, 3, 3)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(StateIoTest, PayloadBytesOfPhi4MiniFlashMatchSpec) {
  const ModelConfig c = PresetConfig("phi4-mini-flash").value();
  ASSERT_EQ(std::count(c.layers.begin(), c.layers.end(), LayerKind::kMamba), 9);
  ASSERT_EQ(std::count(c.layers.begin(), c.layers.end(), LayerKind::kSwa), 8);
  ASSERT_EQ(std::count(c.layers.begin(), c.layers.end(), LayerKind::kGlobal), 1);
  const auto by_hand = [](int64_t n) {
    const int64_t mamba = 9 * (3 * 5120 + 5120 * 16) * 4;
    const int64_t swa = 8 * std::min<int64_t>(n, 512) * 2 * 1280 * 4;
    return mamba + swa + n * 2 * 1280 * 4;
  };
  for (int64_t n : {0, 100, 512, 2048, 32768}) EXPECT_EQ(StatePayloadBytes(c, n), by_hand(n)) << n;
  // The totals of docs/model-spec.md "Decode-time state per sequence" are bf16 (vLLM conv
  // width 3); fp32 is exactly twice.
  EXPECT_EQ(StatePayloadBytes(c, 2048), 2 * int64_t{33208320});
  EXPECT_EQ(StatePayloadBytes(c, 32768), 2 * int64_t{190494720});
}

// ---- Corruption -----------------------------------------------------------------------------

class StateIoCorruptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    state_ = RandomState(c_, kN, 9);
    chunks_ = ExportState(c_, kFp, *state_, 1000).value();
    ASSERT_GT(chunks_.size(), 10u);
    stream_ = Stream(chunks_);
  }
  absl::Status Import(const std::vector<std::string>& chunks) {
    return ImportState(c_, kFp, chunks).status();
  }
  // Imports the logical stream after `patch`, re-framed with valid CRCs.
  absl::Status ImportPatched(const std::function<void(std::string&)>& patch) {
    std::string s = stream_;
    patch(s);
    return Import(Frame(s));
  }
  // The first chunk alone, after `patch`, through a StateImporter.
  absl::Status FirstChunk(const std::function<void(std::string&)>& patch, int64_t max = 1000) {
    std::string s = stream_;
    patch(s);
    StateImporter imp(c_, kFp, max);
    absl::Status st = imp.AddChunk(Frame(s)[0]);
    EXPECT_EQ(imp.header() != nullptr, st.ok());
    return st;
  }
  // Offset of entry i's descriptor in the stream (export order: layer 0 conv, ssm; layer 1 swa
  // k, v; layer 2 conv, ssm; layer 3 k, v; layer 4 conv, ssm; layer 5 global k, v).
  size_t Entry(int i) const {
    const size_t conv = 3 * 256 * 4, ssm = 256 * 16 * 4, swa = 16 * 64 * 4, glob = kN * 64 * 4;
    const size_t data[] = {conv, ssm, swa, swa, conv, ssm, swa, swa, conv, ssm, glob, glob};
    size_t off = hdr_.size;
    for (int e = 0; e < i; ++e) off += 32 + data[e];
    return off;
  }
  static constexpr int64_t kN = 40;
  const ModelConfig c_ = Tiny();
  const Layout hdr_{16, 8};
  std::unique_ptr<SequenceState> state_;
  std::vector<std::string> chunks_;
  std::string stream_;
};

TEST_F(StateIoCorruptionTest, ValidStreamImports) { SAMBAY_EXPECT_OK(Import(chunks_)); }

TEST_F(StateIoCorruptionTest, WireTensorsAreLogicalAndInPositionOrder) {
  // Descriptors: layer, kind, dtype F32, rank 2, dims.
  const uint32_t want[][4] = {{0, 0, 3, 256}, {0, 1, 256, 16}, {1, 2, 16, 64}, {1, 3, 16, 64}};
  for (int e = 0; e < 4; ++e) {
    EXPECT_EQ(GetU32(stream_, Entry(e)), want[e][0]) << e;
    EXPECT_EQ(GetU32(stream_, Entry(e) + 4), want[e][1]) << e;
    EXPECT_EQ(GetU32(stream_, Entry(e) + 8), 0u) << e;
    EXPECT_EQ(GetU32(stream_, Entry(e) + 12), 2u) << e;
    EXPECT_EQ(GetU32(stream_, Entry(e) + 16), want[e][2]) << e;
    EXPECT_EQ(GetU32(stream_, Entry(e) + 24), want[e][3]) << e;
  }
  EXPECT_EQ(0, std::memcmp(stream_.data() + Entry(1) + 32, state_->mamba[0].ssm.data(), 16384));
  // SWA rows: positions 24..39, oldest first; position p sits in ring slot p % 16.
  for (int64_t r = 0; r < 16; ++r) {
    const float* slot = state_->swa[1].v.data() + ((24 + r) % 16) * 64;
    EXPECT_EQ(0, std::memcmp(stream_.data() + Entry(3) + 32 + r * 256, slot, 256)) << r;
  }
  for (int64_t p = 0; p < kN; ++p) {
    EXPECT_EQ(0, std::memcmp(stream_.data() + Entry(11) + 32 + p * 256, state_->global.v(p), 256));
  }
  EXPECT_EQ(Entry(12), stream_.size());
}

TEST_F(StateIoCorruptionTest, FlippedByteInAnyChunkIsDataLossNamingTheChunk) {
  for (size_t i = 0; i < chunks_.size(); ++i) {
    std::vector<std::string> ch = chunks_;
    ch[i][kFrame + (i * 131) % (ch[i].size() - kFrame)] ^= 0x20;
    const absl::Status st = Import(ch);
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << i;
    EXPECT_THAT(st.message(), AllOf(HasSubstr(absl::StrCat("chunk ", i, ":")), HasSubstr("CRC")));
  }
  std::vector<std::string> ch = chunks_;
  ch[3][0] = 'X';  // chunk magic
  EXPECT_EQ(Import(ch).code(), absl::StatusCode::kDataLoss);
  ch = chunks_;
  ch[3][12] ^= 1;  // stored CRC
  EXPECT_EQ(Import(ch).code(), absl::StatusCode::kDataLoss);
  ch = chunks_;
  ch[3][8] ^= 1;  // payload length
  EXPECT_EQ(Import(ch).code(), absl::StatusCode::kDataLoss);
}

TEST_F(StateIoCorruptionTest, WrongFingerprintIsFailedPreconditionOnFirstChunk) {
  EXPECT_EQ(ImportState(c_, "fedcba9876543210", chunks_).status().code(),
            absl::StatusCode::kFailedPrecondition);
  StateImporter imp(c_, "another-model", 1000);
  const absl::Status st = imp.AddChunk(chunks_[0]);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("fingerprint"));
  EXPECT_EQ(imp.AddChunk(chunks_[1]), st);  // the error sticks
  EXPECT_EQ(imp.Finish().status(), st);
}

TEST_F(StateIoCorruptionTest, ReorderedDroppedTruncatedAndExtraChunks) {
  std::vector<std::string> ch = chunks_;
  std::swap(ch[4], ch[5]);
  EXPECT_THAT(Import(ch).message(), HasSubstr("out of order"));
  EXPECT_EQ(Import(ch).code(), absl::StatusCode::kInvalidArgument);
  ch = chunks_;
  ch.pop_back();
  EXPECT_EQ(Import(ch).code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Import(ch).message(), HasSubstr("truncated"));
  EXPECT_EQ(Import({}).code(), absl::StatusCode::kDataLoss);
  ch = chunks_;
  ch[5].resize(ch[5].size() - 10);  // truncated chunk
  EXPECT_EQ(Import(ch).code(), absl::StatusCode::kDataLoss);
  ch[5] = MakeChunk(5, ch[5].substr(kFrame));  // ... even with a consistent frame
  EXPECT_FALSE(Import(ch).ok());
  ch = chunks_;
  ch.back() += "garbage";  // raw bytes after the last chunk
  EXPECT_EQ(Import(ch).code(), absl::StatusCode::kDataLoss);
  ch = chunks_;
  ch.back() = MakeChunk(ch.size() - 1, ch.back().substr(kFrame) + "garbage");
  EXPECT_THAT(Import(ch).message(), HasSubstr("7 trailing bytes"));
  ch = chunks_;
  ch.push_back(MakeChunk(ch.size(), "x"));  // an extra well-formed chunk
  EXPECT_EQ(Import(ch).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Import(ch).message(), HasSubstr("trailing"));
  // Header split across chunks: must be in the first.
  EXPECT_THAT(Import(Frame(stream_, 50)).message(), HasSubstr("first chunk"));
}

TEST_F(StateIoCorruptionTest, BadHeadersAreRejectedOnFirstChunk) {
  using Code = absl::StatusCode;
  const auto u32 = [](size_t off, uint32_t v) {
    return [=](std::string& s) { SetU32(s, off, v); };
  };
  const auto u64 = [](size_t off, uint64_t v) {
    return [=](std::string& s) { SetU64(s, off, v); };
  };
  SAMBAY_EXPECT_OK(FirstChunk([](std::string&) {}));
  EXPECT_THAT(FirstChunk([](std::string&) {}, 39).message(),
              HasSubstr("num_tokens 40 exceeds the limit of 39"));
  EXPECT_EQ(FirstChunk(u64(hdr_.num_tokens, uint64_t{1} << 40)).code(), Code::kInvalidArgument);
  EXPECT_THAT(FirstChunk(u64(hdr_.num_tokens, ~uint64_t{0})).message(), HasSubstr("negative"));
  EXPECT_EQ(FirstChunk(u32(4, 2)).code(), Code::kFailedPrecondition);        // format version
  EXPECT_EQ(FirstChunk(u32(0, 0x53425958)).code(), Code::kInvalidArgument);  // stream magic
  EXPECT_EQ(FirstChunk(u32(hdr_.fp_len, 65)).code(), Code::kInvalidArgument);
  EXPECT_EQ(FirstChunk(u32(hdr_.fp_len, 15)).code(), Code::kFailedPrecondition);
  EXPECT_THAT(FirstChunk(u32(hdr_.dtype, 1)).message(), HasSubstr("BF16"));
  EXPECT_THAT(FirstChunk(u32(hdr_.last_token, 320)).message(), HasSubstr("last_token"));
  SAMBAY_EXPECT_OK(FirstChunk(u32(hdr_.last_token, 0xffffffffu)));  // -1: none sampled yet
  EXPECT_THAT(FirstChunk(u32(hdr_.num_layers, 9)).message(), HasSubstr("9 layers"));
  EXPECT_THAT(FirstChunk([&](std::string& s) { s[hdr_.table] = 1; }).message(),
              HasSubstr("layer 0 is swa in the state, mamba in this model"));
  EXPECT_THAT(FirstChunk([&](std::string& s) { s[hdr_.table + 3] = 9; }).message(),
              HasSubstr("layer 3 has unknown kind code 9"));
  EXPECT_THAT(FirstChunk(u32(hdr_.entries, 11)).message(), HasSubstr("11 tensor entries"));
  // The same through the whole import.
  EXPECT_EQ(ImportPatched([&](std::string& s) { s[hdr_.table + 5] = 0; }).code(),
            Code::kInvalidArgument);
}

TEST_F(StateIoCorruptionTest, HugeClaimWithNoLimitIsNeverAllocated) {
  // No caller limit: the header passes, nothing proportional to 2^40 tokens is allocated, and
  // the stream fails at the global tensor's shape. (ASan aborts on a 2^40-token allocation.)
  std::string s = stream_;
  SetU64(s, hdr_.num_tokens, uint64_t{1} << 40);
  StateImporter imp(c_, kFp, std::numeric_limits<int64_t>::max());
  absl::Status st;
  for (const std::string& ch : Frame(s)) {
    if (!(st = imp.AddChunk(ch)).ok()) break;
  }
  EXPECT_THAT(st.message(), AllOf(HasSubstr("layer 5 global_k"), HasSubstr("[1099511627776, 64]"),
                                  HasSubstr("[40, 64]")));
  // ImportState caps the claim by the bytes present.
  EXPECT_THAT(ImportState(c_, kFp, Frame(s)).status().message(), HasSubstr("exceeds the limit"));
}

TEST_F(StateIoCorruptionTest, WrongDimsNameLayerTensorAndShapes) {
  ModelConfig other = c_;
  other.d_state = 8;
  ASSERT_TRUE(FinalizeModelConfig(other).ok());
  auto st = ImportState(c_, kFp, ExportState(other, kFp, *RandomState(other, kN, 4), 1000).value());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.status().message(),
              AllOf(HasSubstr("layer 0 ssm_state"), HasSubstr("[256, 8]"), HasSubstr("[256, 16]")));
  other = c_;
  other.sliding_window = 8;
  ASSERT_TRUE(FinalizeModelConfig(other).ok());
  st = ImportState(c_, kFp, ExportState(other, kFp, *RandomState(other, kN, 4)).value());
  EXPECT_THAT(st.status().message(),
              AllOf(HasSubstr("layer 1 swa_k"), HasSubstr("[8, 64]"), HasSubstr("[16, 64]")));
  // Dims patched in place.
  EXPECT_THAT(ImportPatched([&](std::string& s) { SetU64(s, Entry(0) + 16, 4); }).message(),
              AllOf(HasSubstr("layer 0 conv_state"), HasSubstr("[4, 256]"), HasSubstr("[3, 256]")));
}

TEST_F(StateIoCorruptionTest, WrongDtypeRankDuplicateAndUnexpectedEntries) {
  ASSERT_EQ(GetU32(stream_, Entry(1)), 0u);      // layer 0
  ASSERT_EQ(GetU32(stream_, Entry(1) + 4), 1u);  // ssm_state
  ASSERT_EQ(GetU32(stream_, Entry(4) + 4), 0u);  // layer 2 conv_state
  const auto patch = [&](size_t off, uint32_t v) {
    return ImportPatched([=](std::string& s) { SetU32(s, off, v); });
  };
  EXPECT_THAT(patch(Entry(0) + 8, 1).message(), HasSubstr("layer 0 conv_state: dtype code 1"));
  EXPECT_THAT(patch(Entry(1) + 12, 3).message(), HasSubstr("layer 0 ssm_state: rank 3"));
  EXPECT_THAT(patch(Entry(1) + 4, 0).message(), HasSubstr("duplicate layer 0 conv_state"));
  EXPECT_THAT(patch(Entry(0), 6).message(), HasSubstr("layer 6 (gmu) has no conv_state"));
  EXPECT_THAT(patch(Entry(0), 99).message(), HasSubstr("layer index 99"));
  EXPECT_THAT(patch(Entry(0) + 4, 17).message(), HasSubstr("unknown tensor kind code 17"));
  // A missing last entry: truncated stream.
  std::string s = stream_;
  s.resize(s.size() - 32 - 40 * 64 * 4);
  EXPECT_EQ(Import(Frame(s)).code(), absl::StatusCode::kDataLoss);
}

TEST_F(StateIoCorruptionTest, RandomMutationsNeverCrashAndYieldRightShape) {
  std::mt19937 rng(20240611);
  int ok = 0, failed = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string s = stream_;
    const size_t pos = iter % 2 == 0 ? rng() % (hdr_.size + 6 * 32) : rng() % s.size();
    const char old = s[pos];
    do s[pos] = static_cast<char>(rng());
    while (s[pos] == old);
    std::vector<std::string> ch = Frame(s, 984, 100 + rng() % 2000);
    if (iter % 10 == 9) {  // sometimes damage a frame instead of the payload
      std::string& c = ch[rng() % ch.size()];
      c[rng() % c.size()] ^= static_cast<char>(1 + rng() % 255);
    }
    absl::StatusOr<std::unique_ptr<SequenceState>> r;
    if (iter % 3 == 0) {
      StateImporter imp(c_, kFp, 64);
      absl::Status st;
      for (const std::string& c : ch) {
        if (!(st = imp.AddChunk(c)).ok()) break;
      }
      if (st.ok()) {
        r = imp.Finish();
      } else {
        r = st;
      }
    } else {
      r = ImportState(c_, kFp, ch);
    }
    if (r.ok()) {
      ++ok;
      ExpectShape(c_, **r, kN);
    } else {
      ++failed;
      const absl::StatusCode code = r.status().code();
      EXPECT_TRUE(code == absl::StatusCode::kInvalidArgument ||
                  code == absl::StatusCode::kDataLoss ||
                  code == absl::StatusCode::kFailedPrecondition)
          << r.status();
    }
  }
  EXPECT_GT(ok, 100);
  EXPECT_GT(failed, 100);
}

}  // namespace
}  // namespace sambay
