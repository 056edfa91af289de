// CPU tensor parallelism (ModelOptions::tp): TP=2 and TP=4 give the logits of TP=1 within 1e-5
// (prefill + decode, chunked prefill, decode batches, scoring; f32 and bf16 weights); sizes
// that do not divide fail at load with InvalidArgument; states hand off between TP sizes
// (export gathers, import scatters; the bytes do not depend on the TP size) and continue with
// the ids of an uninterrupted TP=1 run.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "engine/generate.h"
#include "engine/state_io.h"
#include "tests/engine/test_util.h"

namespace sambay {
namespace {

using sambay::testing::RandomIds;
using sambay::testing::RelErr;
using sambay::testing::TempDir;
using sambay::testing::TpTestConfig;

// fp32 everywhere; TP only changes how the row-parallel sums are split (partial sums added in
// rank order), so differences are a few float ulps amplified through the layers.
constexpr double kTol = 1e-5;

void WriteModel(const std::string& dir, const ModelConfig& c, uint64_t seed, DType dtype) {
  MakeModelOptions o;
  o.seed = seed;
  o.dtype = dtype;
  o.threads = 2;
  absl::Status st = MakeModel(dir, c, o);
  ASSERT_TRUE(st.ok()) << st;
}

std::unique_ptr<Model> LoadTp(const std::string& dir, int tp, int threads) {
  ModelOptions mo;
  mo.tp = tp;
  mo.num_threads = threads;
  auto m = Model::Load(dir, mo);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

// Largest |a - b| over the largest |b|: the worst element relative to the logits' scale.
double MaxRelErr(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return num / std::max(den, 1e-300);
}

class TpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    WriteModel(dir_->path(), TpTestConfig(), 31, DType::kF32);
    for (int tp : {1, 2, 4}) models_[tp] = LoadTp(dir_->path(), tp, tp == 1 ? 2 : tp).release();
  }
  static void TearDownTestSuite() {
    for (Model*& m : models_) {
      delete m;
      m = nullptr;
    }
    delete dir_;
    for (int tp : {2, 4}) {
      std::printf("[tp] TP=%d vs TP=1: max ||a-b||/||b|| %.3g, max |a-b| / max |b| %.3g\n", tp,
                  worst_norm_[tp], worst_elem_[tp]);
    }
  }
  static Model& M(int tp) { return *models_[tp]; }
  static int64_t vocab() { return models_[1]->config().vocab_size; }

  // Expects `got` (TP=tp) to match `want` (TP=1) row by row.
  static void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, int tp,
                          const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t r = 0; r * vocab() < want.size(); ++r) {
      const double e = RelErr(got.data() + r * vocab(), want.data() + r * vocab(), vocab());
      worst_norm_[tp] = std::max(worst_norm_[tp], e);
      worst_elem_[tp] = std::max(
          worst_elem_[tp], MaxRelErr(got.data() + r * vocab(), want.data() + r * vocab(), vocab()));
      ASSERT_LE(e, kTol) << what << " TP=" << tp << " row " << r;
    }
  }

  static TempDir* dir_;
  static Model* models_[5];
  static double worst_norm_[5], worst_elem_[5];
};
TempDir* TpTest::dir_ = nullptr;
Model* TpTest::models_[5] = {};
double TpTest::worst_norm_[5] = {};
double TpTest::worst_elem_[5] = {};

TEST_F(TpTest, LoadOptionsAndStateSizes) {
  for (int tp : {1, 2, 4}) {
    EXPECT_EQ(M(tp).tp_size(), tp);
    EXPECT_EQ(M(tp).fingerprint(), M(1).fingerprint());
    EXPECT_EQ(M(tp).weights().matrix_bytes, M(1).weights().matrix_bytes);
    auto s = M(tp).NewState();
    EXPECT_EQ(s->tp_size(), tp);
    EXPECT_EQ(s->memory_bytes(), M(1).NewState()->memory_bytes()) << "TP=" << tp;
  }
  EXPECT_EQ(M(4).num_threads(), 4);
}

TEST_F(TpTest, PrefillThenDecodeStepsMatchTp1) {
  const auto ids = RandomIds(40, vocab(), 1);
  std::vector<std::vector<float>> want;
  for (int tp : {1, 2, 4}) {
    auto st = M(tp).NewState();
    std::vector<float> logits;
    ASSERT_TRUE(M(tp).Prefill(*st, ids, 0, &logits).ok());
    std::vector<std::vector<float>> got = {logits};
    SequenceState* s[] = {st.get()};
    for (int step = 0; step < 8; ++step) {
      const int32_t tok = static_cast<int32_t>((step * 41 + 3) % vocab());
      ASSERT_TRUE(M(tp).DecodeStep(s, {&tok, 1}, &logits).ok());
      got.push_back(logits);
    }
    EXPECT_EQ(st->num_tokens, 48);
    for (const SequenceState& sh : st->shards) EXPECT_EQ(sh.num_tokens, 48);
    if (tp == 1) {
      want = got;
      continue;
    }
    for (size_t i = 0; i < got.size(); ++i)
      ExpectClose(got[i], want[i], tp, "step " + std::to_string(i));
  }
}

TEST_F(TpTest, ChunkedPrefillMatchesTp1) {
  const auto ids = RandomIds(53, vocab(), 2);
  for (int64_t chunk : {0, 1, 7, 16, 20}) {
    for (int tp : {2, 4}) {
      auto ref = M(1).NewState(), st = M(tp).NewState();
      std::vector<float> want, got;
      ASSERT_TRUE(M(1).Prefill(*ref, ids, chunk, &want).ok());
      ASSERT_TRUE(M(tp).Prefill(*st, ids, chunk, &got).ok());
      ExpectClose(got, want, tp, "chunk " + std::to_string(chunk));
      // The states continue alike.
      const int32_t next = 9;
      SequenceState* a[] = {st.get()};
      SequenceState* b[] = {ref.get()};
      ASSERT_TRUE(M(tp).DecodeStep(a, {&next, 1}, &got).ok());
      ASSERT_TRUE(M(1).DecodeStep(b, {&next, 1}, &want).ok());
      ExpectClose(got, want, tp, "decode after chunk " + std::to_string(chunk));
    }
  }
}

TEST_F(TpTest, DecodeBatchMatchesTp1) {
  const std::vector<int64_t> lens = {1, 3, 17, 40, 16};
  std::vector<std::vector<float>> want;
  for (int tp : {1, 2, 4}) {
    std::vector<std::unique_ptr<SequenceState>> states;
    for (size_t i = 0; i < lens.size(); ++i) {
      states.push_back(M(tp).NewState());
      std::vector<float> l;
      ASSERT_TRUE(M(tp).Prefill(*states.back(), RandomIds(lens[i], vocab(), 10 + i), 0, &l).ok());
    }
    std::vector<std::vector<float>> got;
    for (int step = 0; step < 6; ++step) {
      std::vector<SequenceState*> ptrs;
      std::vector<int32_t> toks;
      for (size_t i = 0; i < lens.size(); ++i) {
        ptrs.push_back(states[i].get());
        toks.push_back(static_cast<int32_t>((step * 31 + i * 7) % vocab()));
      }
      std::vector<float> b;
      ASSERT_TRUE(M(tp).DecodeStep(ptrs, toks, &b).ok());
      ASSERT_EQ(b.size(), lens.size() * vocab());
      got.push_back(b);
    }
    if (tp == 1) {
      want = got;
      continue;
    }
    for (size_t i = 0; i < got.size(); ++i)
      ExpectClose(got[i], want[i], tp, "batch step " + std::to_string(i));
  }
}

// The worker's invariant holds under TP too: a decode batch (here larger than the GEMV row
// threshold) gives each sequence the bits it gets alone.
TEST_F(TpTest, DecodeBatchIsBitIdenticalToAloneUnderTp) {
  constexpr int kSeqs = 11;
  for (int tp : {2, 4}) {
    std::vector<std::unique_ptr<SequenceState>> batched, alone;
    std::vector<SequenceState*> ptrs;
    std::vector<int32_t> toks;
    for (int i = 0; i < kSeqs; ++i) {
      const auto prompt = RandomIds(1 + 5 * i, vocab(), 200 + i);
      for (auto* v : {&batched, &alone}) {
        v->push_back(M(tp).NewState());
        std::vector<float> l;
        ASSERT_TRUE(M(tp).Prefill(*v->back(), prompt, 0, &l).ok());
      }
      ptrs.push_back(batched.back().get());
      toks.push_back(static_cast<int32_t>((i * 29 + 1) % vocab()));
    }
    std::vector<float> b;
    ASSERT_TRUE(M(tp).DecodeStep(ptrs, toks, &b).ok());
    for (int i = 0; i < kSeqs; ++i) {
      std::vector<float> a;
      SequenceState* s[] = {alone[i].get()};
      ASSERT_TRUE(M(tp).DecodeStep(s, {&toks[i], 1}, &a).ok());
      ASSERT_EQ(0, std::memcmp(a.data(), b.data() + i * vocab(), vocab() * sizeof(float)))
          << "TP=" << tp << " sequence " << i;
    }
  }
}

TEST_F(TpTest, ScoreAndMixedBatchMatchTp1) {
  const auto ids = RandomIds(37, vocab(), 3);
  std::vector<float> want;
  {
    auto st = M(1).NewState();
    ASSERT_TRUE(M(1).Score(*st, ids, &want).ok());
  }
  for (int tp : {2, 4}) {
    auto st = M(tp).NewState();
    std::vector<float> got;
    ASSERT_TRUE(M(tp).Score(*st, ids, &got).ok());
    ExpectClose(got, want, tp, "score");
  }
  // One forward with a prefill chunk (kAll), a decode row (kLast) and a kNone segment.
  std::vector<float> ref;
  for (int tp : {1, 2, 4}) {
    auto a = M(tp).NewState(), b = M(tp).NewState(), c = M(tp).NewState();
    std::vector<float> l;
    ASSERT_TRUE(M(tp).Prefill(*b, RandomIds(9, vocab(), 4), 0, &l).ok());
    const auto pa = RandomIds(11, vocab(), 5), pc = RandomIds(6, vocab(), 6);
    const int32_t tb = 5;
    const ForwardSegment segs[] = {{a.get(), pa, LogitsMode::kAll},
                                   {b.get(), {&tb, 1}, LogitsMode::kLast},
                                   {c.get(), pc, LogitsMode::kNone}};
    std::vector<float> got;
    ASSERT_TRUE(M(tp).Forward(segs, &got).ok());
    ASSERT_EQ(got.size(), 12 * vocab());
    if (tp == 1) {
      ref = got;
    } else {
      ExpectClose(got, ref, tp, "mixed batch");
    }
  }
}

TEST(TpBf16Test, Bf16WeightsMatchTp1) {
  TempDir dir;
  WriteModel(dir.path(), TpTestConfig(), 32, DType::kBF16);
  auto m1 = LoadTp(dir.path(), 1, 2), m2 = LoadTp(dir.path(), 2, 2);
  ASSERT_TRUE(m1 && m2);
  const auto ids = RandomIds(30, m1->config().vocab_size, 7);
  const int64_t v = m1->config().vocab_size;
  auto s1 = m1->NewState(), s2 = m2->NewState();
  std::vector<float> a, b;
  ASSERT_TRUE(m1->Prefill(*s1, ids, 0, &a).ok());
  ASSERT_TRUE(m2->Prefill(*s2, ids, 8, &b).ok());
  EXPECT_LE(RelErr(b.data(), a.data(), v), kTol);
  SequenceState* p1[] = {s1.get()};
  SequenceState* p2[] = {s2.get()};
  for (int32_t tok : {1, 100, 200}) {
    ASSERT_TRUE(m1->DecodeStep(p1, {&tok, 1}, &a).ok());
    ASSERT_TRUE(m2->DecodeStep(p2, {&tok, 1}, &b).ok());
    EXPECT_LE(RelErr(b.data(), a.data(), v), kTol) << tok;
  }
}

TEST(TpLoadTest, SizesThatDoNotDivideFailWithInvalidArgument) {
  TempDir dir;
  // The tiny preset: 2 KV heads = 1 differential-attention KV pair, which cannot be split.
  WriteModel(dir.Sub("tiny"), *PresetConfig("tiny"), 1, DType::kF32);
  ModelOptions o;
  o.tp = 2;
  auto m = Model::Load(dir.Sub("tiny"), o);
  ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
  EXPECT_NE(m.status().message().find("num_key_value_heads 2"), absl::string_view::npos)
      << m.status();
  EXPECT_NE(m.status().message().find("not divisible by 2"), absl::string_view::npos) << m.status();
  // 4 KV pairs do not split over 3 ranks; an intermediate_size of 258 not over 4.
  ModelConfig c = TpTestConfig();
  c.intermediate_size = 258;
  WriteModel(dir.Sub("tp"), c, 1, DType::kF32);
  o.tp = 3;
  m = Model::Load(dir.Sub("tp"), o);
  ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
  EXPECT_NE(m.status().message().find("KV pair"), absl::string_view::npos) << m.status();
  o.tp = 4;
  m = Model::Load(dir.Sub("tp"), o);
  ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
  EXPECT_NE(m.status().message().find("intermediate_size 258 is not divisible by 4"),
            absl::string_view::npos)
      << m.status();
  for (int bad : {0, -1, kMaxTpSize + 1}) {
    o.tp = bad;
    EXPECT_EQ(Model::Load(dir.Sub("tp"), o).status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
  o.tp = 2;
  EXPECT_TRUE(Model::Load(dir.Sub("tp"), o).ok());
  // A TP importer for a size the model cannot split fails cleanly.
  StateImporter imp(c, "fp", 100, 3);
  EXPECT_EQ(imp.AddChunk("x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(imp.Finish().status().code(), absl::StatusCode::kInvalidArgument);
}

// Generation handed between TP sizes (export gathers, import scatters) continues exactly like
// an uninterrupted TP=1 generation, greedy and seeded.
TEST_F(TpTest, HandoffBetweenTpSizesContinuesLikeTp1) {
  const auto prompt = RandomIds(23, vocab(), 8);
  for (float temperature : {0.0f, 0.8f}) {
    GenerateOptions g;
    g.max_new_tokens = 14;
    g.sampling.temperature = temperature;
    g.sampling.seed = 77;
    std::vector<int32_t> want;
    {
      auto st = M(1).NewState();
      auto r = Generate(M(1), *st, prompt, g);
      ASSERT_TRUE(r.ok()) << r.status();
      want = *r;
    }
    const std::vector<int32_t> first(want.begin(), want.begin() + 5);
    std::vector<int32_t> history = prompt;
    history.insert(history.end(), first.begin(), first.end());
    GenerateOptions rest = g;
    rest.max_new_tokens = 9;
    const std::vector<int32_t> tail(want.begin() + 5, want.end());
    // (from, to, import sharded directly or logical then resharded by Forward)
    for (auto [from, to, direct] : std::vector<std::tuple<int, int, bool>>{{2, 1, false},
                                                                           {1, 2, true},
                                                                           {1, 2, false},
                                                                           {2, 4, true},
                                                                           {4, 2, false},
                                                                           {4, 1, true}}) {
      const std::string what = absl::StrCat("T=", temperature, " TP", from, "->TP", to,
                                            direct ? " (sharded import)" : " (logical import)");
      auto st = M(from).NewState();
      GenerateOptions head = g;
      head.max_new_tokens = 5;
      auto r = Generate(M(from), *st, prompt, head);
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_EQ(*r, first) << what;
      auto chunks = ExportState(M(from).config(), M(from).fingerprint(), *st, 1000);
      ASSERT_TRUE(chunks.ok()) << chunks.status();
      int64_t bytes = 0;
      for (const std::string& ch : *chunks) bytes += static_cast<int64_t>(ch.size());
      const int64_t n = st->num_tokens;
      EXPECT_EQ(bytes, StateStreamBytes(M(1).config(), M(1).fingerprint().size(), n) +
                           static_cast<int64_t>(chunks->size() * kStateChunkHeaderBytes))
          << what;
      auto imported =
          ImportState(M(to).config(), M(to).fingerprint(), *chunks, 1 << 20, direct ? to : 1);
      ASSERT_TRUE(imported.ok()) << imported.status();
      EXPECT_EQ((*imported)->tp_size(), direct ? to : 1) << what;
      auto more = ContinueGeneration(M(to), **imported, history, rest);
      ASSERT_TRUE(more.ok()) << more.status();
      EXPECT_EQ(*more, tail) << what;
      EXPECT_EQ((*imported)->tp_size(), to) << what;
    }
  }
}

// Gather and scatter are exact: export -> import (any TP layout) -> export gives the same bytes,
// and so does resharding a state through several layouts.
TEST_F(TpTest, ExportImportAndReshardAreExact) {
  auto st = M(2).NewState();
  std::vector<float> l;
  ASSERT_TRUE(M(2).Prefill(*st, RandomIds(45, vocab(), 9), 6, &l).ok());  // > 2 SWA windows
  st->last_token = 17;
  st->rng_state = {1, 2, 3, 4};
  const ModelConfig& c = M(1).config();
  const std::string& fp = M(1).fingerprint();
  auto a = ExportState(c, fp, *st, 4096);
  ASSERT_TRUE(a.ok()) << a.status();
  for (int tp : {1, 2, 4}) {
    auto s = ImportState(c, fp, *a, 1 << 20, tp);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ((*s)->tp_size(), tp);
    auto b = ExportState(c, fp, **s, 4096);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(*b, *a) << "import into TP=" << tp;
  }
  for (int tp : {4, 1, 2, 1, 4}) {
    ASSERT_TRUE(ReshardState(c, tp, *st).ok());
    EXPECT_EQ(st->tp_size(), tp);
    auto b = ExportState(c, fp, *st, 4096);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(*b, *a) << "reshard to TP=" << tp;
  }
  EXPECT_EQ(ReshardState(c, 3, *st).code(), absl::StatusCode::kInvalidArgument);
  // A sharded state with the wrong shards is refused by the exporter.
  auto bad = M(2).NewState();
  bad->shards.pop_back();
  EXPECT_EQ(ExportState(c, fp, *bad).status().code(), absl::StatusCode::kInvalidArgument);
  auto reset = M(4).NewState();
  ASSERT_TRUE(M(4).Prefill(*reset, RandomIds(5, vocab(), 1), 0, &l).ok());
  reset->Reset();
  EXPECT_EQ(reset->num_tokens, 0);
  for (const SequenceState& sh : reset->shards) EXPECT_EQ(sh.num_tokens, 0);
}

}  // namespace
}  // namespace sambay
