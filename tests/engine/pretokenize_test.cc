// Tests of tokenizer/pretokenize.h: SplitO200k against splits from the independent
// JavaScript RegExp reference (tests/data/tokenizer/splits.json, made by
// tools/tokenizer/split_reference.mjs --make-fixture), hand-checked splits, exact coverage on
// random text, and ValidateUtf8 against a from-the-definition decoder.
//
// Semantics notes (where the reference had to be adapted to match tiktoken's Rust regex):
//  - \s / \S are Unicode White_Space as Rust `regex` defines them (JS \s differs: U+FEFF,
//    U+0085); the reference spells the class out.
//  - (?i:'s...) follows Rust's simple case folding, so "'\u017f" (long s) is a contraction.
//  - Categories come from the system ICU (ICU 72: Unicode 15.0). Code points assigned in later
//    Unicode versions count as unassigned (like symbols), so they can split differently from a
//    tiktoken built with newer tables (and from Node's newer RegExp tables, which also moved
//    U+0295 from Ll to Lo); the fixture corpus uses only long-stable characters.
#include "tokenizer/pretokenize.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sambay {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint32_t kSeed = 0x5eed0200u;

std::vector<std::string> Split(std::string_view text) {
  std::vector<std::string_view> views;
  const absl::Status st = SplitO200k(text, &views);
  EXPECT_TRUE(st.ok()) << st;
  return std::vector<std::string>(views.begin(), views.end());
}

std::string Concat(const std::vector<std::string_view>& pieces) {
  std::string out;
  for (std::string_view p : pieces) out.append(p);
  return out;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// A reference validator straight from the definition: decode each sequence by its length
// bits, then reject overlongs, surrogates and values above U+10FFFF. Returns the offset of the
// first bad sequence, or -1.
int64_t RefFirstInvalid(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<uint8_t>(s[i]);
    size_t len;
    uint32_t cp;
    if (b0 < 0x80) {
      len = 1, cp = b0;
    } else if ((b0 & 0xE0) == 0xC0) {
      len = 2, cp = b0 & 0x1F;
    } else if ((b0 & 0xF0) == 0xE0) {
      len = 3, cp = b0 & 0x0F;
    } else if ((b0 & 0xF8) == 0xF0) {
      len = 4, cp = b0 & 0x07;
    } else {
      return static_cast<int64_t>(i);
    }
    if (i + len > s.size()) return static_cast<int64_t>(i);
    for (size_t k = 1; k < len; ++k) {
      const auto b = static_cast<uint8_t>(s[i + k]);
      if ((b & 0xC0) != 0x80) return static_cast<int64_t>(i);
      cp = (cp << 6) | (b & 0x3F);
    }
    const uint32_t min_for_len[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_len[len] || (cp >= 0xD800 && cp < 0xE000) || cp > 0x10FFFF) {
      return static_cast<int64_t>(i);
    }
    i += len;
  }
  return -1;
}

// Random valid UTF-8 drawn from a mix of scripts, whitespace, digits, marks and symbols.
std::string RandomText(std::mt19937& rng) {
  struct Range {
    uint32_t lo, hi;
  };
  static const Range kRanges[] = {
      {'a', 'z'},         {'A', 'Z'},         {'0', '9'},         {' ', ' '},
      {' ', ' '},         {'\n', '\n'},       {'\r', '\r'},       {'\t', '\t'},
      {'!', '/'},         {':', '@'},         {'[', '`'},         {'{', '~'},
      {'\'', '\''},       {0x00, 0x1F},       {0x80, 0xFF},       {0x100, 0x17F},
      {0x1C4, 0x1CC},     {0x2B0, 0x2FF},     {0x300, 0x36F},     {0x370, 0x3FF},
      {0x400, 0x4FF},     {0x590, 0x5FF},     {0x600, 0x6FF},     {0x900, 0x97F},
      {0x1F00, 0x1FFF},   {0x2000, 0x206F},   {0x20A0, 0x20FF},   {0x2150, 0x218F},
      {0x3000, 0x30FF},   {0x4E00, 0x9FFF},   {0xAC00, 0xD7A3},   {0xFE00, 0xFE0F},
      {0xFF00, 0xFFEF},   {0x10400, 0x1044F}, {0x1D400, 0x1D7FF}, {0x1F1E6, 0x1F1FF},
      {0x1F300, 0x1FAFF}, {0x20000, 0x2A6DF}, {0xE0000, 0xE007F}, {0x10FFF0, 0x10FFFF},
  };
  constexpr int kNumRanges = sizeof(kRanges) / sizeof(kRanges[0]);
  std::uniform_int_distribution<int> len_dist(0, 40);
  std::uniform_int_distribution<int> range_dist(0, kNumRanges - 1);
  std::string s;
  const int len = len_dist(rng);
  for (int k = 0; k < len; ++k) {
    const Range& r = kRanges[range_dist(rng)];
    uint32_t cp = std::uniform_int_distribution<uint32_t>(r.lo, r.hi)(rng);
    if (cp >= 0xD800 && cp < 0xE000) cp = 'x';
    AppendUtf8(cp, &s);
    if (rng() % 8 == 0) s += "'s";
  }
  return s;
}

TEST(PreTokenizeTest, MatchesReferenceFixture) {
  const std::string path = std::string(SAMBAY_SOURCE_DIR) + "/tests/data/tokenizer/splits.json";
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << path;
  const nlohmann::json doc = nlohmann::json::parse(in);
  const nlohmann::json& cases = doc.at("cases");
  ASSERT_GE(cases.size(), 300u);
  int mismatches = 0;
  for (const nlohmann::json& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    const std::vector<std::string> want = c.at("pieces").get<std::vector<std::string>>();
    const std::vector<std::string> got = Split(text);
    if (got != want && ++mismatches <= 20) {
      ADD_FAILURE() << "text " << nlohmann::json(text).dump() << "\n want "
                    << nlohmann::json(want).dump() << "\n  got " << nlohmann::json(got).dump();
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << cases.size() << " cases";
}

TEST(PreTokenizeTest, KnownSplits) {
  EXPECT_THAT(Split(""), ElementsAre());
  EXPECT_THAT(Split("Hello world"), ElementsAre("Hello", " world"));
  // \s+(?!\S) leaves the last space for the word.
  EXPECT_THAT(Split("a   b"), ElementsAre("a", "  ", " b"));
  EXPECT_THAT(Split("a   "), ElementsAre("a", "   "));
  EXPECT_THAT(Split(" 123"), ElementsAre(" ", "123"));
  EXPECT_THAT(Split("1234567"), ElementsAre("123", "456", "7"));
  // \s*[\r\n]+ ends at the last newline of the run.
  EXPECT_THAT(Split("x  \n  \n  y"), ElementsAre("x", "  \n  \n", " ", " y"));
  EXPECT_THAT(Split("x\r\n\r\n"), ElementsAre("x", "\r\n\r\n"));
  // Contractions, case-insensitive, ASCII apostrophe only.
  EXPECT_THAT(Split("I'M you'Re it's"), ElementsAre("I'M", " you'Re", " it's"));
  EXPECT_THAT(Split("can't WE'LL"), ElementsAre("can't", " WE'LL"));
  EXPECT_THAT(Split("it\xE2\x80\x99s"), ElementsAre("it", "\xE2\x80\x99s"));
  EXPECT_THAT(Split("x'\xC5\xBF"), ElementsAre("x'\xC5\xBF"));  // U+017F folds to s
  // Case runs: U* gives back a letter that is also in the lower class.
  EXPECT_THAT(Split("HTTPServer"), ElementsAre("HTTPServer"));
  EXPECT_THAT(Split("helloWorld"), ElementsAre("hello", "World"));
  EXPECT_THAT(Split("ABC"), ElementsAre("ABC"));
  // "A" U+02B0 (Lm) "B": A1 matches "A" + U+02B0, then "B" by A2.
  EXPECT_THAT(Split("A\xCA\xB0"
                    "B"),
              ElementsAre("A\xCA\xB0", "B"));
  // A lone combining mark, and one after a space (the prefix).
  EXPECT_THAT(Split("\xCC\x81"), ElementsAre("\xCC\x81"));
  EXPECT_THAT(Split(" \xCC\x81"), ElementsAre(" \xCC\x81"));
  // Punctuation with trailing newlines and slashes.
  EXPECT_THAT(Split("a.\n/b"), ElementsAre("a", ".\n/", "b"));
  EXPECT_THAT(Split(" <|endoftext|>"), ElementsAre(" <|", "endoftext", "|>"));
  EXPECT_THAT(Split("\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x81"),
              ElementsAre("\xE4\xBD\xA0\xE5\xA5\xBD", "\xEF\xBC\x81"));
}

TEST(PreTokenizeTest, AppendsToExistingPieces) {
  std::vector<std::string_view> pieces = {"keep"};
  ASSERT_TRUE(SplitO200k("a b", &pieces).ok());
  EXPECT_THAT(pieces, ElementsAre("keep", "a", " b"));
}

TEST(PreTokenizeTest, RandomTextIsCoveredExactly) {
  std::mt19937 rng(kSeed);
  for (int iter = 0; iter < 10000; ++iter) {
    const std::string text = RandomText(rng);
    ASSERT_TRUE(ValidateUtf8(text).ok()) << iter;
    std::vector<std::string_view> pieces;
    ASSERT_TRUE(SplitO200k(text, &pieces).ok()) << iter;
    size_t pos = 0;
    for (std::string_view p : pieces) {
      ASSERT_FALSE(p.empty()) << iter;
      ASSERT_EQ(p.data(), text.data() + pos) << iter;  // views into the input, in order
      pos += p.size();
    }
    ASSERT_EQ(pos, text.size()) << iter;
    ASSERT_EQ(Concat(pieces), text) << iter;
  }
}

TEST(PreTokenizeTest, ValidateUtf8AcceptsEveryScalarValue) {
  std::string all;
  for (uint32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    if (cp >= 0xD800 && cp < 0xE000) continue;
    AppendUtf8(cp, &all);
  }
  EXPECT_TRUE(ValidateUtf8(all).ok());
  std::vector<std::string_view> pieces;
  ASSERT_TRUE(SplitO200k(all, &pieces).ok());
  EXPECT_EQ(Concat(pieces), all);
}

TEST(PreTokenizeTest, ValidateUtf8RejectsWithOffset) {
  struct Case {
    std::string bytes;
    size_t offset;
  };
  const Case kCases[] = {
      {"\xC3", 0},                          // truncated 2-byte at end
      {"ab\xE2\x82", 2},                    // truncated 3-byte at end
      {"abc\xF0\x9F\x98", 3},               // truncated 4-byte at end
      {"a\xE2\x82z", 1},                    // truncated 3-byte mid-text
      {"\xC0\x80", 0},                      // overlong NUL
      {"xy\xC1\xBF", 2},                    // overlong
      {"\xE0\x80\x80", 0},                  // overlong 3-byte
      {"0123456789\xE0\x9F\xBF", 10},       // overlong 3-byte (U+07FF)
      {"\xF0\x8F\xBF\xBF", 0},              // overlong 4-byte
      {"ok\xED\xA0\x80", 2},                // surrogate U+D800
      {"\xED\xBF\xBF", 0},                  // surrogate U+DFFF
      {"12345678\xF4\x90\x80\x80", 8},      // U+110000
      {"\xF5\x80\x80\x80", 0},              // lead byte beyond U+10FFFF
      {"\xFF", 0},                          // never valid
      {"\x80", 0},                          // stray continuation
      {"abcdefghijklmnop\xBF", 16},         // stray continuation after the ASCII fast path
      {"\xC3\xA9\x80", 2},                  // continuation after a complete sequence
      {"\xE4\xBD\xA0\xE5\xA5\xBD\xA5", 6},  // continuation after CJK
  };
  for (const Case& c : kCases) {
    const absl::Status st = ValidateUtf8(c.bytes);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << absl::CEscape(c.bytes);
    EXPECT_THAT(st.message(), HasSubstr(absl::StrCat("byte offset ", c.offset, ":")))
        << absl::CEscape(c.bytes) << ": " << st;
    EXPECT_EQ(RefFirstInvalid(c.bytes), static_cast<int64_t>(c.offset)) << absl::CEscape(c.bytes);
    std::vector<std::string_view> pieces;
    const absl::Status split = SplitO200k(c.bytes, &pieces);
    EXPECT_EQ(split.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(pieces.empty());
  }
}

TEST(PreTokenizeTest, ValidateUtf8MatchesDefinitionOnMutatedText) {
  std::mt19937 rng(kSeed + 1);
  int invalid = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string s = RandomText(rng);
    const int edits = static_cast<int>(rng() % 3);
    for (int k = 0; k < edits && !s.empty(); ++k) {
      const size_t at = rng() % s.size();
      switch (rng() % 3) {
        case 0:
          s[at] = static_cast<char>(rng() & 0xFF);  // random byte
          break;
        case 1:
          s.erase(at, 1);  // drop a byte
          break;
        default:
          s.insert(at, 1, static_cast<char>(0x80 | (rng() & 0x7F)));  // high byte
      }
    }
    const int64_t want = RefFirstInvalid(s);
    const absl::Status st = ValidateUtf8(s);
    if (want < 0) {
      ASSERT_TRUE(st.ok()) << absl::CEscape(s) << ": " << st;
    } else {
      ++invalid;
      ASSERT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << absl::CEscape(s);
      ASSERT_THAT(st.message(), HasSubstr(absl::StrCat("byte offset ", want, ":")))
          << absl::CEscape(s);
    }
  }
  EXPECT_GT(invalid, 1000);
}

// Prints throughput on English prose; never asserts timing.
TEST(PreTokenizeTest, ThroughputEnglishProse) {
  const std::string para =
      "It is a truth universally acknowledged, that a single man in possession of a good "
      "fortune, must be in want of a wife. However little known the feelings or views of such "
      "a man may be on his first entering a neighbourhood, this truth is so well fixed in the "
      "minds of the surrounding families, that he is considered the rightful property of some "
      "one or other of their daughters.\n\n\"My dear Mr. Bennet,\" said his lady to him one "
      "day, \"have you heard that Netherfield Park is let at last?\" Mr. Bennet replied that "
      "he had not. \"But it is,\" returned she; \"for Mrs. Long has just been here, and she "
      "told me all about it.\" Mr. Bennet made no answer. \"Don't you want to know who has "
      "taken it?\" cried his wife impatiently. \"You want to tell me, and I have no objection "
      "to hearing it.\" This was invitation enough.\n";
  std::string text;
  while (text.size() < (8u << 20)) text += para;
  std::vector<std::string_view> pieces;
  pieces.reserve(text.size() / 4);
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    pieces.clear();
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(SplitO200k(text, &pieces).ok());
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  std::printf(
      "[ throughput ] SplitO200k English prose: %.1f MB/s (%zu bytes, %zu pieces, best "
      "of 5)\n",
      text.size() / best / 1e6, text.size(), pieces.size());
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(ValidateUtf8(text).ok());
  const double v = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ throughput ] ValidateUtf8 English prose: %.1f MB/s\n", text.size() / v / 1e6);
}

}  // namespace
}  // namespace sambay
