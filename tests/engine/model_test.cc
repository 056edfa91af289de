// Model properties: chunked prefill == one shot, prefill + decode == score, batched == alone,
// mixed prefill/decode batches, sharded == single file, input validation.
#include <cstring>
#include <numeric>

#include "engine/generate.h"
#include "tests/engine/test_util.h"

namespace sambay {
namespace {

using sambay::testing::MakeTiny;
using sambay::testing::RandomIds;
using sambay::testing::RelErr;

constexpr double kTol = 2e-5;  // fp32, different GEMM paths and summation orders (bugs give ~1e-1)

class ModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { tiny_ = MakeTiny(11).release(); }
  static void TearDownTestSuite() { delete tiny_; }
  Model& model() { return *tiny_->model; }
  int64_t vocab() { return model().config().vocab_size; }
  static sambay::testing::TinyModel* tiny_;
};
sambay::testing::TinyModel* ModelTest::tiny_ = nullptr;

TEST_F(ModelTest, ChunkedPrefillEqualsOneShot) {
  const int64_t window = model().config().sliding_window;
  const auto ids = RandomIds(3 * window + 5, vocab(), 1);
  auto ref_state = model().NewState();
  std::vector<float> ref;
  ASSERT_TRUE(model().Prefill(*ref_state, ids, 0, &ref).ok());
  for (int64_t chunk : {1, 2, 3, 7, 15, 16, 17, 40}) {
    auto st = model().NewState();
    std::vector<float> got;
    ASSERT_TRUE(model().Prefill(*st, ids, chunk, &got).ok());
    EXPECT_LE(RelErr(got.data(), ref.data(), vocab()), kTol) << "chunk " << chunk;
    EXPECT_EQ(st->num_tokens, static_cast<int64_t>(ids.size()));
    // The states continue identically.
    const int32_t next = 7;
    std::vector<float> a, b;
    SequenceState* s1[] = {st.get()};
    ASSERT_TRUE(model().DecodeStep(s1, {&next, 1}, &a).ok());
    auto ref_copy = model().NewState();
    std::vector<float> tmp;
    ASSERT_TRUE(model().Prefill(*ref_copy, ids, 0, &tmp).ok());
    SequenceState* s2[] = {ref_copy.get()};
    ASSERT_TRUE(model().DecodeStep(s2, {&next, 1}, &b).ok());
    EXPECT_LE(RelErr(a.data(), b.data(), vocab()), kTol) << "chunk " << chunk;
  }
}

TEST_F(ModelTest, PrefillThenDecodeStepsEqualsScore) {
  const int64_t window = model().config().sliding_window;
  const auto ids = RandomIds(4 * window, vocab(), 2);
  auto score_state = model().NewState();
  std::vector<float> all;
  ASSERT_TRUE(model().Score(*score_state, ids, &all).ok());
  for (int64_t k : {int64_t{1}, int64_t{5}, window - 1, window, window + 3}) {
    auto st = model().NewState();
    std::vector<float> logits;
    ASSERT_TRUE(model().Prefill(*st, absl::MakeConstSpan(ids).subspan(0, k), 0, &logits).ok());
    EXPECT_LE(RelErr(logits.data(), all.data() + (k - 1) * vocab(), vocab()), kTol) << k;
    SequenceState* s[] = {st.get()};
    for (size_t t = k; t < ids.size(); ++t) {
      ASSERT_TRUE(model().DecodeStep(s, {&ids[t], 1}, &logits).ok());
      ASSERT_LE(RelErr(logits.data(), all.data() + t * vocab(), vocab()), kTol)
          << "prefill " << k << " position " << t;
    }
  }
}

TEST_F(ModelTest, BatchedDecodeEqualsEachAlone) {
  const std::vector<int64_t> lens = {1, 3, 17, 40, 16};
  std::vector<std::unique_ptr<SequenceState>> batched, alone;
  std::vector<std::vector<int32_t>> prompts;
  for (size_t i = 0; i < lens.size(); ++i) {
    prompts.push_back(RandomIds(lens[i], vocab(), 10 + i));
    for (auto* v : {&batched, &alone}) {
      v->push_back(model().NewState());
      std::vector<float> l;
      ASSERT_TRUE(model().Prefill(*v->back(), prompts[i], 0, &l).ok());
    }
  }
  for (int step = 0; step < 20; ++step) {
    std::vector<SequenceState*> ptrs;
    std::vector<int32_t> toks;
    for (size_t i = 0; i < lens.size(); ++i) {
      ptrs.push_back(batched[i].get());
      toks.push_back(static_cast<int32_t>((step * 31 + i * 7) % vocab()));
    }
    std::vector<float> b;
    ASSERT_TRUE(model().DecodeStep(ptrs, toks, &b).ok());
    ASSERT_EQ(b.size(), lens.size() * vocab());
    for (size_t i = 0; i < lens.size(); ++i) {
      std::vector<float> a;
      SequenceState* s[] = {alone[i].get()};
      ASSERT_TRUE(model().DecodeStep(s, {&toks[i], 1}, &a).ok());
      ASSERT_LE(RelErr(b.data() + i * vocab(), a.data(), vocab()), kTol)
          << "sequence " << i << " step " << step;
    }
  }
}

// A decode batch larger than the GEMV row threshold gives bit-identical logits to each sequence
// run alone (the worker relies on this: batching never changes tokens), for f32 and bf16.
TEST(ModelBatchInvarianceTest, DecodeBatchOf13IsBitIdenticalToAlone) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    auto tiny = MakeTiny(21, dtype);
    Model& m = *tiny->model;
    const int64_t vocab = m.config().vocab_size;
    constexpr int kSeqs = 13;
    std::vector<std::unique_ptr<SequenceState>> batched, alone;
    for (int i = 0; i < kSeqs; ++i) {
      const auto prompt = RandomIds(1 + 7 * i, vocab, 100 + i);
      for (auto* v : {&batched, &alone}) {
        v->push_back(m.NewState());
        std::vector<float> l;
        ASSERT_TRUE(m.Prefill(*v->back(), prompt, 0, &l).ok());
      }
    }
    for (int step = 0; step < 6; ++step) {
      std::vector<SequenceState*> ptrs;
      std::vector<int32_t> toks;
      for (int i = 0; i < kSeqs; ++i) {
        ptrs.push_back(batched[i].get());
        toks.push_back(static_cast<int32_t>((step * 37 + i * 11) % vocab));
      }
      std::vector<float> b;
      ASSERT_TRUE(m.DecodeStep(ptrs, toks, &b).ok());
      for (int i = 0; i < kSeqs; ++i) {
        std::vector<float> a;
        SequenceState* s[] = {alone[i].get()};
        ASSERT_TRUE(m.DecodeStep(s, {&toks[i], 1}, &a).ok());
        ASSERT_EQ(0, std::memcmp(a.data(), b.data() + i * vocab, vocab * sizeof(float)))
            << DTypeName(dtype) << " sequence " << i << " step " << step;
      }
    }
  }
}

TEST_F(ModelTest, MixedPrefillAndDecodeInOneForward) {
  // Sequence A decodes one token while B prefills a chunk and C prefills its last chunk.
  const auto pa = RandomIds(20, vocab(), 21), pb = RandomIds(30, vocab(), 22),
             pc = RandomIds(25, vocab(), 23);
  auto a1 = model().NewState(), b1 = model().NewState(), c1 = model().NewState();
  auto a2 = model().NewState(), b2 = model().NewState(), c2 = model().NewState();
  std::vector<float> l;
  ASSERT_TRUE(model().Prefill(*a1, pa, 0, &l).ok());
  ASSERT_TRUE(model().Prefill(*a2, pa, 0, &l).ok());
  const int32_t tok = 5;
  auto bspan = absl::MakeConstSpan(pb).subspan(0, 12);
  auto cspan = absl::MakeConstSpan(pc);
  std::vector<ForwardSegment> segs = {{a1.get(), {&tok, 1}, LogitsMode::kLast},
                                      {b1.get(), bspan, LogitsMode::kNone},
                                      {c1.get(), cspan, LogitsMode::kAll}};
  std::vector<float> mixed;
  ASSERT_TRUE(model().Forward(segs, &mixed).ok());
  ASSERT_EQ(mixed.size(), (1 + cspan.size()) * vocab());
  std::vector<float> ea, ec;
  SequenceState* sa[] = {a2.get()};
  ASSERT_TRUE(model().DecodeStep(sa, {&tok, 1}, &ea).ok());
  ASSERT_TRUE(model().Score(*c2, pc, &ec).ok());
  EXPECT_LE(RelErr(mixed.data(), ea.data(), vocab()), kTol);
  for (size_t t = 0; t < cspan.size(); ++t) {
    EXPECT_LE(RelErr(mixed.data() + (1 + t) * vocab(), ec.data() + t * vocab(), vocab()), kTol);
  }
  // B continues as if prefilled alone.
  std::vector<float> rb, eb;
  ASSERT_TRUE(model().Prefill(*b1, absl::MakeConstSpan(pb).subspan(12), 0, &rb).ok());
  ASSERT_TRUE(model().Prefill(*b2, pb, 0, &eb).ok());
  EXPECT_LE(RelErr(rb.data(), eb.data(), vocab()), kTol);
}

TEST_F(ModelTest, RejectsBadInputWithoutTouchingState) {
  auto st = model().NewState();
  std::vector<float> l;
  const std::vector<int32_t> bad = {1, 2, static_cast<int32_t>(vocab())};
  absl::Status s = model().Prefill(*st, bad, 1, &l);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("position 2"), std::string::npos) << s;
  EXPECT_EQ(st->num_tokens, 0);
  const std::vector<int32_t> neg = {-1};
  EXPECT_EQ(model().Score(*st, neg, &l).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model().Prefill(*st, {}, 0, &l).code(), absl::StatusCode::kInvalidArgument);
  const int32_t t = 1;
  SequenceState* twice[] = {st.get(), st.get()};
  const int32_t two[] = {1, 2};
  s = model().DecodeStep(twice, two, &l);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  SequenceState* one[] = {st.get()};
  EXPECT_EQ(model().DecodeStep(one, two, &l).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st->num_tokens, 0);
  ASSERT_TRUE(model().DecodeStep(one, {&t, 1}, &l).ok());
  EXPECT_EQ(st->num_tokens, 1);
}

TEST_F(ModelTest, SeededSamplingIsReproducibleAndThreadCountIndependent) {
  GenerateOptions g;
  g.max_new_tokens = 24;
  g.sampling.temperature = 0.9f;
  g.sampling.top_p = 0.9f;
  g.sampling.seed = 1234;
  const auto prompt = RandomIds(9, vocab(), 5);
  auto s1 = model().NewState(), s2 = model().NewState();
  auto a = Generate(model(), *s1, prompt, g);
  auto b = Generate(model(), *s2, prompt, g);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  g.sampling.seed = 99;
  auto s3 = model().NewState();
  auto c = Generate(model(), *s3, prompt, g);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(*a, *c);
  // Same checkpoint, one thread.
  auto config = model().config();
  auto one = Model::Load(tiny_->dir.path(), {.num_threads = 1});
  ASSERT_TRUE(one.ok());
  g.sampling.seed = 1234;
  auto s4 = (*one)->NewState();
  auto d = Generate(**one, *s4, prompt, g);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*a, *d);
}

TEST(ModelLayoutTest, ShardedEqualsSingleFileAndBf16StaysBf16) {
  auto single = MakeTiny(31, DType::kF32, 12, 1);
  auto sharded = MakeTiny(31, DType::kF32, 12, 3);
  ASSERT_TRUE(single->model && sharded->model);
  EXPECT_EQ(sharded->model->weights().checkpoint->num_files(), 3);
  EXPECT_EQ(single->model->fingerprint(), sharded->model->fingerprint());
  const auto ids = RandomIds(50, 320, 3);
  std::vector<float> a, b;
  auto sa = single->model->NewState(), sb = sharded->model->NewState();
  ASSERT_TRUE(single->model->Score(*sa, ids, &a).ok());
  ASSERT_TRUE(sharded->model->Score(*sb, ids, &b).ok());
  EXPECT_EQ(a, b);

  auto bf = MakeTiny(31, DType::kBF16, 8, 2);
  ASSERT_TRUE(bf->model);
  const ModelWeights& w = bf->model->weights();
  EXPECT_EQ(w.embed.dtype, DType::kBF16);
  EXPECT_EQ(w.layers[0].mamba.in_proj.dtype, DType::kBF16);
  // Matrices are not copied: they point into the mapped checkpoint.
  EXPECT_EQ(w.layers[0].fc1.data, w.checkpoint->Find("model.layers.0.mlp.fc1.weight")->data);
}

}  // namespace
}  // namespace sambay
