// Tests of the BPE tokenizers: tokenizer/bpe.h (merge loop, specials), the tiktoken and
// tokenizer.json loaders, and LoadTokenizer's format detection.
//
// Expected ids come from the npm `tiktoken` package: tests/data/tokenizer/encode_expected.json,
// made from tests/data/tokenizer/corpus.json by tools/tokenizer/encode_reference.mjs
// --make-fixture (package version inside the file). The o200k_base vocabulary itself is read
// from $SAMBAY_TIKTOKEN_DIR (default third_party/npm/node_modules/tiktoken, installed by
// scripts/install-deps.sh); tests that need it skip when it is absent. The tokenizer.json
// comparison converts that vocabulary with tools/tokenizer/make_hf_tokenizer.py (/usr/bin/python3,
// ~3 s, cached in the build directory).
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_util.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"

namespace sambay {
namespace {

using ::sambay::testing::ReadFileBytes;
using ::sambay::testing::TempDir;
using ::sambay::testing::WriteFileBytes;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

std::string TiktokenDir() {
  const char* env = std::getenv("SAMBAY_TIKTOKEN_DIR");
  return env != nullptr && *env != '\0'
             ? std::string(env)
             : std::string(SAMBAY_SOURCE_DIR) + "/third_party/npm/node_modules/tiktoken";
}
std::string O200kPath() { return TiktokenDir() + "/encoders/o200k_base.json"; }

// The o200k_base tokenizer, loaded once per process (nullptr if that fails).
const Tokenizer* O200kOrNull() {
  static const Tokenizer* const tok = [] {
    auto t = LoadTiktokenJson(O200kPath());
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? t->release() : nullptr;
  }();
  return tok;
}
const Tokenizer& O200k() { return *O200kOrNull(); }

#define REQUIRE_O200K()                                                                 \
  if (!fs::exists(O200kPath())) {                                                       \
    GTEST_SKIP() << "no o200k_base vocabulary at " << O200kPath()                       \
                 << " (run scripts/install-deps.sh, or set SAMBAY_TIKTOKEN_DIR to the " \
                    "npm tiktoken package directory)";                                  \
  }                                                                                     \
  ASSERT_NE(O200kOrNull(), nullptr)

struct Case {
  std::string text;
  std::vector<int32_t> ordinary, special, phi4;
};

struct Fixture {
  std::vector<Case> cases;
  std::map<std::string, int32_t> phi4_specials;
};

const Fixture& Expected() {
  static const Fixture* const f = [] {
    auto* f = new Fixture;
    const std::string dir = std::string(SAMBAY_SOURCE_DIR) + "/tests/data/tokenizer/";
    const auto corpus = nlohmann::json::parse(ReadFileBytes(dir + "corpus.json"));
    const auto expected = nlohmann::json::parse(ReadFileBytes(dir + "encode_expected.json"));
    EXPECT_EQ(corpus.size(), expected["cases"].size()) << "regenerate encode_expected.json";
    f->phi4_specials = expected["phi4_special_tokens"].get<std::map<std::string, int32_t>>();
    for (size_t i = 0; i < std::min(corpus.size(), expected["cases"].size()); ++i) {
      const auto& e = expected["cases"][i];
      Case c{corpus[i].get<std::string>(), e["ordinary"].get<std::vector<int32_t>>(), {}, {}};
      EXPECT_EQ(c.text.size(), e["bytes"].get<size_t>()) << "case " << i << " is stale";
      c.special = e.contains("special") ? e["special"].get<std::vector<int32_t>>() : c.ordinary;
      c.phi4 = e.contains("phi4") ? e["phi4"].get<std::vector<int32_t>>() : c.special;
      f->cases.push_back(std::move(c));
    }
    return f;
  }();
  return *f;
}

enum class Field { kOrdinary, kSpecial, kPhi4 };

// Encodes every corpus case and compares with the package's ids; returns the mismatch count.
int CheckCorpus(const Tokenizer& tok, bool allow_special, Field field) {
  int bad = 0;
  const auto& cases = Expected().cases;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const auto& want = field == Field::kOrdinary  ? c.ordinary
                       : field == Field::kSpecial ? c.special
                                                  : c.phi4;
    auto got = tok.Encode(c.text, allow_special);
    if (!got.ok() || *got != want) {
      if (++bad <= 5) {
        ADD_FAILURE() << "case " << i << " \"" << absl::CHexEscape(c.text.substr(0, 80))
                      << "\": " << (got.ok() ? "ids differ" : got.status().ToString());
      }
    }
  }
  EXPECT_GT(cases.size(), 200u);
  return bad;
}

TEST(BpeTiktokenTest, CorpusMatchesPackageOrdinary) {
  REQUIRE_O200K();
  EXPECT_EQ(CheckCorpus(O200k(), false, Field::kOrdinary), 0);
}

TEST(BpeTiktokenTest, CorpusMatchesPackageAllowSpecial) {
  REQUIRE_O200K();
  EXPECT_EQ(CheckCorpus(O200k(), true, Field::kSpecial), 0);
}

TEST(BpeTiktokenTest, VocabularyShape) {
  REQUIRE_O200K();
  const Tokenizer& tok = O200k();
  EXPECT_EQ(tok.name(), "tiktoken o200k_base");
  EXPECT_EQ(tok.vocab_size(), 200019);
  EXPECT_EQ(tok.special_tokens(), (std::map<std::string, int32_t>{{"<|endoftext|>", 199999},
                                                                  {"<|endofprompt|>", 200018}}));
  EXPECT_EQ(*tok.Decode(std::vector<int32_t>{24912, 2375}), "hello world");
  EXPECT_EQ(*tok.Encode("hello world", false), (std::vector<int32_t>{24912, 2375}));
  EXPECT_EQ(tok.Encode("", true)->size(), 0u);
}

TEST(BpeTiktokenTest, DecodeRoundTripsCorpus) {
  REQUIRE_O200K();
  for (const Case& c : Expected().cases) {
    for (bool special : {false, true}) {
      auto ids = O200k().Encode(c.text, special);
      ASSERT_TRUE(ids.ok()) << ids.status();
      auto text = O200k().Decode(*ids);
      ASSERT_TRUE(text.ok()) << text.status();
      EXPECT_EQ(*text, c.text) << absl::CHexEscape(c.text.substr(0, 80));
    }
  }
}

// Random valid UTF-8: code points drawn from ranges that exercise every pre-token class.
std::string RandomUtf8(std::mt19937& rng) {
  static const std::vector<std::pair<uint32_t, uint32_t>> kRanges = {
      {0x20, 0x7E},     {0x20, 0x7E},       {0x61, 0x7A},        {0x30, 0x39},     {0x09, 0x0D},
      {0x00, 0x1F},     {0x80, 0xFF},       {0x300, 0x36F},      {0x370, 0x4FF},   {0x600, 0x6FF},
      {0x900, 0x97F},   {0x2000, 0x206F},   {0x3000, 0x30FF},    {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3},
      {0xFE00, 0xFFFD}, {0x1F300, 0x1FAFF}, {0x10000, 0x10FFFF}, {0x0, 0xD7FF}};
  static const char* const kFragments[] = {
      "<|endoftext|>", "<|", "|>", "'s", "'LL", "\r\n", "    ", "\u200d", "<|endofprompt|>"};
  std::string s;
  const int n = std::uniform_int_distribution<int>(0, rng() % 8 == 0 ? 400 : 40)(rng);
  for (int i = 0; i < n; ++i) {
    if (rng() % 16 == 0) {
      s += kFragments[rng() % std::size(kFragments)];
      continue;
    }
    const auto& [lo, hi] = kRanges[rng() % kRanges.size()];
    uint32_t cp = std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
    const int extra = cp < 0x80 ? 0 : cp < 0x800 ? 1 : cp < 0x10000 ? 2 : 3;
    static constexpr uint32_t kLead[] = {0x00, 0xC0, 0xE0, 0xF0};
    s += static_cast<char>(kLead[extra] | (cp >> (6 * extra)));
    for (int k = extra - 1; k >= 0; --k) s += static_cast<char>(0x80 | ((cp >> (6 * k)) & 0x3F));
  }
  return s;
}

// Streaming detokenization of every corpus entry, token by token, from the package's ids:
// every piece is valid UTF-8 and the pieces concatenate to exactly the text.
TEST(BpeTiktokenTest, StreamingPiecesAreValidAndConcatenateToTheText) {
  REQUIRE_O200K();
  int held_back = 0;
  for (const Case& c : Expected().cases) {
    StreamDecoder d(O200k());
    std::string all;
    for (int32_t id : c.special) {
      auto piece = d.Push(id);
      ASSERT_TRUE(piece.ok()) << piece.status();
      ASSERT_TRUE(ValidateUtf8(*piece).ok()) << absl::CHexEscape(*piece);
      std::string bytes;
      ASSERT_TRUE(O200k().AppendTokenBytes(id, &bytes).ok());
      held_back += piece->size() < bytes.size();
      all += *piece;
    }
    all += d.Finish();
    ASSERT_EQ(all, c.text);
  }
  EXPECT_GT(held_back, 0) << "the corpus should split some characters across tokens";
}

TEST(BpeTiktokenTest, DecodeRoundTripsRandomUtf8) {
  REQUIRE_O200K();
  std::mt19937 rng(0x0200b0e5);
  for (int i = 0; i < 2000; ++i) {
    const std::string s = RandomUtf8(rng);
    for (bool special : {false, true}) {
      auto ids = O200k().Encode(s, special);
      ASSERT_TRUE(ids.ok()) << ids.status() << " for " << absl::CHexEscape(s);
      EXPECT_EQ(*O200k().Decode(*ids), s) << absl::CHexEscape(s);
    }
  }
}

TEST(BpeTiktokenTest, ConcurrentEncodesAgree) {
  REQUIRE_O200K();
  const auto& cases = Expected().cases;
  std::vector<std::thread> threads;
  std::vector<int> bad(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = t; i < cases.size(); i += 2) {
        auto ids = O200k().Encode(cases[i].text, false);
        if (!ids.ok() || *ids != cases[i].ordinary) ++bad[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad, std::vector<int>(4, 0));
}

TEST(BpeTiktokenTest, UnknownIdsAreNotFound) {
  REQUIRE_O200K();
  for (int32_t id : {-1, 199998, 200000, 200017, 200019, 200064, 1 << 30}) {
    std::string out;
    EXPECT_EQ(O200k().AppendTokenBytes(id, &out).code(), absl::StatusCode::kNotFound) << id;
    EXPECT_EQ(O200k().Decode(std::vector<int32_t>{13, id}).status().code(),
              absl::StatusCode::kNotFound);
  }
}

TEST(BpeTiktokenTest, InvalidUtf8IsInvalidArgumentWithWholeTextOffset) {
  REQUIRE_O200K();
  auto r = O200k().Encode("abc\xff", false);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  r = O200k().Encode("<|endoftext|>x\xC0\x80", true);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("14"));
}

// A model directory holding o200k_base.json plus the Phi-4 added_tokens.json.
std::string WriteAddedTokensJson(const std::map<std::string, int32_t>& specials) {
  nlohmann::json j(specials);
  return j.dump(2);
}

TEST(BpeTiktokenTest, SpecialTokensRoundTrip) {
  REQUIRE_O200K();
  TempDir dir;
  fs::create_symlink(O200kPath(), dir.Sub("o200k_base.json"));
  WriteFileBytes(dir.Sub("added_tokens.json"), WriteAddedTokensJson(Expected().phi4_specials));
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->name(), "tiktoken o200k_base");
  EXPECT_EQ((*tok)->special_tokens(), Expected().phi4_specials);
  EXPECT_EQ((*tok)->vocab_size(), 200029);
  for (const auto& [text, id] : Expected().phi4_specials) {
    EXPECT_EQ(*(*tok)->SpecialTokenId(text), id);
    EXPECT_EQ(*(*tok)->Encode(text, true), std::vector<int32_t>{id}) << text;
    EXPECT_EQ(*(*tok)->Decode(std::vector<int32_t>{id}), text);
    auto plain = (*tok)->Encode(text, false);
    EXPECT_GT(plain->size(), 1u) << text;
    EXPECT_EQ(*(*tok)->Decode(*plain), text);
  }
  EXPECT_FALSE((*tok)->SpecialTokenId("<|nope|>").has_value());
  EXPECT_EQ(CheckCorpus(**tok, true, Field::kPhi4), 0);
  EXPECT_EQ(CheckCorpus(**tok, false, Field::kOrdinary), 0);
}

// ---- Small vocabularies: the merge loop against a from-the-definition reference --------------

std::vector<BpeToken> ByteTokens() {
  std::vector<BpeToken> t;
  for (int b = 0; b < 256; ++b) t.push_back({std::string(1, static_cast<char>(b)), b, b});
  return t;
}

// tiktoken's definition: a whole-token piece maps directly; else merge the adjacent pair whose
// concatenation has the lowest rank, leftmost first, until none is a token.
std::vector<int32_t> NaiveBpe(const std::map<std::string, int32_t>& ranks, const std::string& s) {
  if (ranks.count(s)) return {ranks.at(s)};
  std::vector<std::string> parts;
  for (char c : s) parts.emplace_back(1, c);
  while (true) {
    int best = -1, best_rank = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      auto it = ranks.find(parts[i] + parts[i + 1]);
      if (it != ranks.end() && (best < 0 || it->second < best_rank)) {
        best = static_cast<int>(i);
        best_rank = it->second;
      }
    }
    if (best < 0) break;
    parts[best] += parts[best + 1];
    parts.erase(parts.begin() + best + 1);
  }
  std::vector<int32_t> ids;
  for (const auto& p : parts) ids.push_back(ranks.at(p));
  return ids;
}

TEST(BpeMergeTest, MatchesDefinitionOnRandomVocabularies) {
  std::mt19937 rng(12345);
  for (int v = 0; v < 20; ++v) {
    std::vector<BpeToken> tokens = ByteTokens();
    std::map<std::string, int32_t> ranks;
    for (const auto& t : tokens) ranks[t.bytes] = t.rank;
    const int alphabet = 2 + v % 4;
    std::vector<std::string> extra;
    for (int k = 0; k < 60; ++k) {
      std::string s;
      const int len = 2 + static_cast<int>(rng() % (k < 40 ? 3 : 9));
      for (int i = 0; i < len; ++i) s += static_cast<char>('a' + rng() % alphabet);
      if (ranks.emplace(s, 0).second) extra.push_back(s);
    }
    std::vector<int32_t> order(extra.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(256 + i);
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t i = 0; i < extra.size(); ++i) {
      ranks[extra[i]] = order[i];
      tokens.push_back({extra[i], order[i], order[i]});
    }
    auto tok = BpeTokenizer::Create("small", tokens, {});
    ASSERT_TRUE(tok.ok()) << tok.status();
    for (int t = 0; t < 200; ++t) {
      // Lowercase letters only: one pre-token, up to 300 bytes (both merge paths).
      std::string s;
      const int len = 1 + static_cast<int>(rng() % (t % 4 == 0 ? 300 : 70));
      for (int i = 0; i < len; ++i) s += static_cast<char>('a' + rng() % alphabet);
      EXPECT_EQ(*(*tok)->Encode(s, false), NaiveBpe(ranks, s)) << s;
    }
  }
}

TEST(BpeMergeTest, CreateValidates) {
  auto err = [](std::vector<BpeToken> t, std::vector<AddedToken> a) {
    auto r = BpeTokenizer::Create("v", std::move(t), std::move(a));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(r.status().message());
  };
  auto t = ByteTokens();
  t.pop_back();
  EXPECT_THAT(err(t, {}), HasSubstr("byte 0xff is not a token"));
  t = ByteTokens();
  t.push_back({"ab", 7, 300});
  EXPECT_THAT(err(t, {}), HasSubstr("duplicate rank 7"));
  t = ByteTokens();
  t.push_back({"ab", 300, 7});
  EXPECT_THAT(err(t, {}), HasSubstr("duplicate id 7"));
  t = ByteTokens();
  t.push_back({"a", 300, 300});
  EXPECT_THAT(err(t, {}), HasSubstr("duplicate token"));
  t = ByteTokens();
  t.push_back({"", 300, 300});
  EXPECT_THAT(err(t, {}), HasSubstr("bytes"));
  EXPECT_THAT(err(ByteTokens(), {{"<s>", 97}}), HasSubstr("has id 97"));
  EXPECT_THAT(err(ByteTokens(), {{"<s>", 300}, {"<t>", 300}}), HasSubstr("share id 300"));
  EXPECT_THAT(err(ByteTokens(), {{"<s>", 300}, {"<s>", 301}}), HasSubstr("twice"));
  EXPECT_THAT(err(ByteTokens(), {{"<\xff>", 300}}), HasSubstr("not UTF-8"));
  // An added token may reuse a mergeable id with the same bytes.
  EXPECT_TRUE(BpeTokenizer::Create("v", ByteTokens(), {{"a", 97}}).ok());
}

TEST(BpeMergeTest, SpecialsAreLeftmostThenLongest) {
  auto tok = BpeTokenizer::Create("v", ByteTokens(),
                                  {{"<a>", 300}, {"<a>b", 301}, {"a>", 302}, {"<", 303}});
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(*(*tok)->Encode("x<a>bc", true), (std::vector<int32_t>{'x', 301, 'c'}));
  EXPECT_EQ(*(*tok)->Encode("<a>", true), (std::vector<int32_t>{300}));
  EXPECT_EQ(*(*tok)->Encode("a>", true), (std::vector<int32_t>{302}));
  EXPECT_EQ(*(*tok)->Encode("<<a>", true), (std::vector<int32_t>{303, 300}));
  EXPECT_EQ(*(*tok)->Decode(std::vector<int32_t>{301, 303}), "<a>b<");
  EXPECT_EQ((*tok)->vocab_size(), 304);
}

// ---- Rank files and JSON files ----------------------------------------------------------------

std::string RankLines(const std::vector<BpeToken>& tokens) {
  std::string s;
  for (const auto& t : tokens) absl::StrAppend(&s, absl::Base64Escape(t.bytes), " ", t.rank, "\n");
  return s;
}

std::string JsonFile(const std::string& pat, const std::string& ranks,
                     const std::string& specials = "{\"<|endoftext|>\": 1000}") {
  nlohmann::json j = {{"pat_str", pat}, {"bpe_ranks", ranks}};
  j["special_tokens"] = nlohmann::json::parse(specials);
  return j.dump();
}

TEST(BpeLoaderTest, LoadsSmallRankFilesInBothForms) {
  TempDir dir;
  auto tokens = ByteTokens();
  tokens.push_back({"ab", 256, 256});
  tokens.push_back({"abc", 257, 257});
  WriteFileBytes(dir.Sub("v.tiktoken"), RankLines(tokens));
  auto tok = LoadTiktokenRanks(dir.Sub("v.tiktoken"), {{"<|x|>", 400}});
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->name(), "tiktoken v");
  EXPECT_EQ(*(*tok)->Encode("abc ab<|x|>", true), (std::vector<int32_t>{257, ' ', 256, 400}));
  // The npm package's compact form: "! <first rank> <token> <token> ...".
  std::string compact = "! 0";
  for (const auto& t : tokens) absl::StrAppend(&compact, " ", absl::Base64Escape(t.bytes));
  WriteFileBytes(dir.Sub("c.json"), JsonFile(bpe_internal::kO200kPattern, compact));
  tok = LoadTiktokenJson(dir.Sub("c.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(*(*tok)->Encode("abc<|endoftext|>", true), (std::vector<int32_t>{257, 1000}));
}

TEST(BpeLoaderTest, MalformedFilesAreErrors) {
  TempDir dir;
  const std::string good = RankLines(ByteTokens());
  const std::string pat = bpe_internal::kO200kPattern;
  const auto ranks_error = [&](const std::string& body) {
    WriteFileBytes(dir.Sub("r.tiktoken"), body);
    auto r = LoadTiktokenRanks(dir.Sub("r.tiktoken"), {});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << body.substr(0, 60);
    return std::string(r.status().message());
  };
  EXPECT_THAT(ranks_error(good + "@@@@ 300\n"), HasSubstr("line 257: bad base64"));
  EXPECT_THAT(ranks_error(good + "YQ= 300\n"), HasSubstr("bad base64"));
  EXPECT_THAT(ranks_error(good + "YR== 300\n"), HasSubstr("bad base64"));  // non-zero pad bits
  EXPECT_THAT(ranks_error(good + "YWI= -3\n"), HasSubstr("bad rank"));
  EXPECT_THAT(ranks_error(good + "YWI= x\n"), HasSubstr("bad rank"));
  EXPECT_THAT(ranks_error(good + "YWI=\n"), HasSubstr("expected"));
  EXPECT_THAT(ranks_error(good + "YWI= 300 1\n"), HasSubstr("expected"));
  EXPECT_THAT(ranks_error(good + "YWI= 5\n"), HasSubstr("duplicate rank 5"));
  EXPECT_THAT(ranks_error(good + "YQ== 300\n"), HasSubstr("duplicate token"));
  EXPECT_THAT(ranks_error(good.substr(0, good.rfind("\n", good.size() - 2) + 1)),
              HasSubstr("is not a token"));
  EXPECT_THAT(ranks_error(""), HasSubstr("no tokens"));
  EXPECT_THAT(ranks_error(std::string(1000, '\0')), HasSubstr("line 1"));
  EXPECT_EQ(LoadTiktokenRanks(dir.Sub("missing.tiktoken"), {}).status().code(),
            absl::StatusCode::kNotFound);

  const auto json_error = [&](const std::string& body) {
    WriteFileBytes(dir.Sub("j.json"), body);
    auto r = LoadTiktokenJson(dir.Sub("j.json"));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << body.substr(0, 60);
    return std::string(r.status().message());
  };
  EXPECT_THAT(json_error("{\"pat_str\": "), HasSubstr("not valid JSON"));
  EXPECT_THAT(json_error("[]"), HasSubstr("pat_str"));
  EXPECT_THAT(json_error(JsonFile("\\s+|\\w+", good)), HasSubstr("unsupported pat_str"));
  EXPECT_THAT(json_error(JsonFile(pat, good, "[1]")), HasSubstr("special_tokens"));
  EXPECT_THAT(json_error(JsonFile(pat, good, "{\"<s>\": \"x\"}")), HasSubstr("no valid id"));
  EXPECT_THAT(json_error(JsonFile(pat, good, "{\"<s>\": 97}")), HasSubstr("has id 97"));
  EXPECT_THAT(json_error(JsonFile(pat, "! x YQ==")), HasSubstr("bad rank after '!'"));
  EXPECT_THAT(json_error(JsonFile(pat, "! 0 YQ== Y")), HasSubstr("bad base64 token #1"));
  if (fs::exists(O200kPath())) {  // a truncated real file
    const std::string real = ReadFileBytes(O200kPath());
    EXPECT_THAT(json_error(real.substr(0, real.size() / 2)), HasSubstr("not valid JSON"));
    nlohmann::json j = nlohmann::json::parse(real);
    const std::string r = j["bpe_ranks"];
    j["bpe_ranks"] = r.substr(0, r.find(' ', r.size() / 2) + 2);  // ends in a 1-char token
    EXPECT_THAT(json_error(j.dump()), HasSubstr("bad base64"));
  }
}

// ---- tokenizer.json -------------------------------------------------------------------------

// Converts o200k_base.json with make_hf_tokenizer.py into a cached directory of the build tree.
std::string HfDir(const std::string& merges_format) {
  const std::string out = std::string(SAMBAY_BIN_DIR) + "/../test_data/o200k_hf_" + merges_format;
  const std::string script =
      std::string(SAMBAY_SOURCE_DIR) + "/tools/tokenizer/make_hf_tokenizer.py";
  std::error_code ec;
  const std::string file = out + "/tokenizer.json";
  if (fs::exists(file) && fs::last_write_time(file, ec) >= fs::last_write_time(script, ec) &&
      fs::last_write_time(file, ec) >= fs::last_write_time(O200kPath(), ec)) {
    return out;
  }
  const std::string cmd =
      absl::StrCat("/usr/bin/python3 '", script, "' --tiktoken-json '", O200kPath(), "' --out '",
                   out, "' --merges-format ", merges_format);
  return std::system(cmd.c_str()) == 0 ? out : "";
}

class BpeHfTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BpeHfTest, ConvertedVocabularyMatchesTiktoken) {
  REQUIRE_O200K();
  if (!fs::exists("/usr/bin/python3")) GTEST_SKIP() << "no /usr/bin/python3";
  const std::string dir = HfDir(GetParam());
  ASSERT_FALSE(dir.empty()) << "make_hf_tokenizer.py failed";
  auto hf = LoadHfTokenizer(dir);
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ((*hf)->name(), "huggingface tokenizer.json");
  EXPECT_EQ((*hf)->vocab_size(), 200029);
  EXPECT_EQ((*hf)->special_tokens(), Expected().phi4_specials);
  EXPECT_EQ(CheckCorpus(**hf, false, Field::kOrdinary), 0);
  EXPECT_EQ(CheckCorpus(**hf, true, Field::kPhi4), 0);
  for (int32_t id = 0; id < 199998; id += 97) {  // same bytes per id
    EXPECT_EQ(*(*hf)->Decode(std::vector<int32_t>{id}), *O200k().Decode(std::vector<int32_t>{id}));
  }
  auto via_dir = LoadTokenizer(dir);  // tokenizer.json wins
  ASSERT_TRUE(via_dir.ok()) << via_dir.status();
  EXPECT_EQ((*via_dir)->name(), "huggingface tokenizer.json");
}

INSTANTIATE_TEST_SUITE_P(BpeMergeFormats, BpeHfTest, ::testing::Values("strings", "pairs"));

// A small byte-level tokenizer.json: bytes as ids 0..255, then "ab", "abc", " a".
nlohmann::json SmallHf() {
  std::map<int, std::string> b2u;  // GPT-2 bytes_to_unicode
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const int cp = printable ? b : next++;
    b2u[b] = cp < 0x80 ? std::string(1, static_cast<char>(cp))
                       : std::string{static_cast<char>(0xC0 | (cp >> 6)),
                                     static_cast<char>(0x80 | (cp & 0x3F))};
  }
  nlohmann::json vocab;
  for (const auto& [b, s] : b2u) vocab[s] = b;
  vocab["ab"] = 256;
  vocab["abc"] = 257;
  vocab[b2u[' '] + "a"] = 258;
  vocab["<x>"] = 300;            // added tokens listed in the vocab too
  vocab["\xe4\xb8\xad!"] = 302;  // (not byte-level: allowed for an added token)
  nlohmann::json split = {{"type", "Split"},
                          {"pattern", {{"Regex", std::string(bpe_internal::kO200kPattern)}}},
                          {"behavior", "Isolated"},
                          {"invert", false}};
  nlohmann::json bl = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  return {{"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {split, bl}}}},
          {"added_tokens",
           {{{"id", 300}, {"content", "<x>"}, {"special", true}, {"rstrip", true}},
            {{"id", 301}, {"content", "<y>"}, {"special", false}, {"lstrip", true}},
            {{"id", 302}, {"content", "\xe4\xb8\xad!"}}}},
          {"model",
           {{"type", "BPE"},
            {"vocab", vocab},
            {"merges", nlohmann::json::array({nlohmann::json::array({"a", "b"}),
                                              nlohmann::json::array({"ab", "c"}),
                                              nlohmann::json::array({b2u[' '], "a"})})}}}};
}

TEST(BpeHfSmallTest, PairMergesAddedTokensAndStrip) {
  TempDir dir;
  WriteFileBytes(dir.Sub("tokenizer.json"), SmallHf().dump());
  auto tok = LoadHfTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  // " ab": " a" (rank 258) loses to "ab" (rank 256).
  EXPECT_EQ(*(*tok)->Encode("abc ab", false), (std::vector<int32_t>{257, ' ', 256}));
  EXPECT_EQ(*(*tok)->Encode("<x>  a \t<y>", true), (std::vector<int32_t>{300, 'a', 301}));
  EXPECT_EQ(*(*tok)->Encode("<x>", false), (std::vector<int32_t>{'<', 'x', '>'}));
  EXPECT_EQ(*(*tok)->Decode(std::vector<int32_t>{258, 300, 302}), " a<x>\xe4\xb8\xad!");
  EXPECT_EQ(*(*tok)->Encode("\xe4\xb8\xad!", true), (std::vector<int32_t>{302}));
  EXPECT_EQ((*tok)->vocab_size(), 303);
}

TEST(BpeHfSmallTest, UnsupportedOrMalformedFilesAreErrors) {
  const auto error = [](const nlohmann::json& j, const std::string& raw = "") {
    TempDir dir;
    WriteFileBytes(dir.Sub("tokenizer.json"), raw.empty() ? j.dump() : raw);
    auto r = LoadHfTokenizer(dir.path());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(r.status().message());
  };
  EXPECT_THAT(error({}, "{\"model\": "), HasSubstr("not valid JSON"));
  auto j = SmallHf();
  j["model"]["type"] = "WordPiece";
  EXPECT_THAT(error(j), HasSubstr("unsupported model type"));
  j = SmallHf();
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}};
  EXPECT_THAT(error(j), HasSubstr("unsupported pre-tokenizer"));
  j = SmallHf();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+|\\w+";
  EXPECT_THAT(error(j), HasSubstr("unsupported pre-tokenizer"));
  j = SmallHf();
  j["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = true;
  EXPECT_THAT(error(j), HasSubstr("unsupported pre-tokenizer"));
  j = SmallHf();
  j["normalizer"] = {{"type", "NFC"}};
  EXPECT_THAT(error(j), HasSubstr("unsupported normalizer"));
  j = SmallHf();
  j["model"]["vocab"]["\xe4\xb8\xad"] = 500;
  EXPECT_THAT(error(j), HasSubstr("not byte-level"));
  j = SmallHf();
  j["model"]["merges"].push_back("b c");
  EXPECT_THAT(error(j), HasSubstr("not in the vocab"));
  j = SmallHf();
  j["model"]["merges"].push_back("a b c");
  EXPECT_THAT(error(j), HasSubstr("is not \"a b\""));
  j = SmallHf();
  j["model"]["merges"].push_back(7);
  EXPECT_THAT(error(j), HasSubstr("merge 3"));
  j = SmallHf();
  j["added_tokens"].push_back({{"id", "x"}, {"content", "<z>"}});
  EXPECT_THAT(error(j), HasSubstr("bad added_tokens entry"));
  j = SmallHf();
  j["added_tokens"].push_back({{"id", 300}, {"content", "<z>"}});
  EXPECT_THAT(error(j), HasSubstr("conflicts"));
  TempDir empty;
  EXPECT_EQ(LoadHfTokenizer(empty.path()).status().code(), absl::StatusCode::kNotFound);
}

// ---- LoadTokenizer --------------------------------------------------------------------------

TEST(BpeLoadTokenizerTest, DetectsFormatsAndReportsProblems) {
  TempDir dir;
  EXPECT_EQ(LoadTokenizer(dir.path()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(LoadTokenizer(dir.Sub("nope")).status().code(), absl::StatusCode::kNotFound);
  auto tokens = ByteTokens();
  tokens.push_back({"ab", 256, 256});
  WriteFileBytes(dir.Sub("small.tiktoken"), RankLines(tokens));
  WriteFileBytes(dir.Sub("added_tokens.json"), "{\"<|user|>\": 300}");
  WriteFileBytes(dir.Sub("tokenizer_config.json"),
                 "{\"added_tokens_decoder\": {\"301\": {\"content\": \"<|end|>\", \"rstrip\": "
                 "true}}}");
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->name(), "tiktoken small");
  EXPECT_EQ(*(*tok)->Encode("<|user|>ab<|end|> ", true), (std::vector<int32_t>{300, 256, 301}));
  WriteFileBytes(dir.Sub("added_tokens.json"), "{\"<|user|>\": 301}");
  EXPECT_THAT(std::string(LoadTokenizer(dir.path()).status().message()), HasSubstr("conflicts"));
  WriteFileBytes(dir.Sub("added_tokens.json"), "{\"<|user|>\": ");
  EXPECT_EQ(LoadTokenizer(dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
  WriteFileBytes(dir.Sub("other.tiktoken"), RankLines(tokens));
  EXPECT_THAT(std::string(LoadTokenizer(dir.path()).status().message()),
              HasSubstr("more than one"));

  TempDir byte_dir;
  WriteFileBytes(byte_dir.Sub("tokenizer_config.json"),
                 "{\"tokenizer_class\": \"SambayByteTokenizer\"}");
  WriteFileBytes(byte_dir.Sub("added_tokens.json"), "{\"<|end|>\": 256}");
  tok = LoadTokenizer(byte_dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->name(), "byte-level");
  EXPECT_EQ(*(*tok)->SpecialTokenId("<|end|>"), 256);
  WriteFileBytes(byte_dir.Sub("added_tokens.json"), "{\"<|end|>\": 65}");
  EXPECT_EQ(LoadTokenizer(byte_dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
  WriteFileBytes(byte_dir.Sub("tokenizer_config.json"), "{\"tokenizer_class\": \"Other\"}");
  EXPECT_EQ(LoadTokenizer(byte_dir.path()).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sambay
