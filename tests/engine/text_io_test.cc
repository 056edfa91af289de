// Byte tokenizer, streaming detokenization, chat format and stop tokens.
#include <random>

#include "tests/engine/test_util.h"
#include "tokenizer/chat.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"

namespace sambay {
namespace {

using sambay::testing::TempDir;
using sambay::testing::WriteFileBytes;

const std::map<std::string, int32_t> kSpecials = {{"<|endoftext|>", 256},
                                                  {"<|system|>", 257},
                                                  {"<|user|>", 258},
                                                  {"<|assistant|>", 259},
                                                  {"<|end|>", 260}};

TEST(ByteTokenizerTest, BytesAndSpecials) {
  auto tok = MakeByteTokenizer(kSpecials);
  EXPECT_EQ(tok->vocab_size(), 261);
  auto ids = tok->Encode("h\xC3\xA9<|end|>", /*allow_special=*/true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{'h', 0xC3, 0xA9, 260}));
  ids = tok->Encode("<|end|>", /*allow_special=*/false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->size(), 7u);
  auto text = tok->Decode({'h', 0xC3, 0xA9, 260});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "h\xC3\xA9<|end|>");
  EXPECT_EQ(tok->Decode({261}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tok->Encode("\xC3", true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*tok->SpecialTokenId("<|user|>"), 258);
  EXPECT_FALSE(tok->SpecialTokenId("<|nope|>").has_value());
}

// Feeds ids one at a time; every piece must be valid UTF-8.
std::string StreamAll(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  StreamDecoder d(tok);
  std::string all;
  for (int32_t id : ids) {
    auto piece = d.Push(id);
    EXPECT_TRUE(piece.ok());
    EXPECT_TRUE(ValidateUtf8(*piece).ok()) << "piece not valid UTF-8";
    all += *piece;
  }
  const std::string rest = d.Finish();
  EXPECT_TRUE(ValidateUtf8(rest).ok());
  return all + rest;
}

TEST(StreamDecoderTest, HoldsBackIncompleteCharacters) {
  auto tok = MakeByteTokenizer(kSpecials);
  // "é" = C3 A9: the first byte alone yields nothing, the second completes it.
  StreamDecoder d(*tok);
  EXPECT_EQ(*d.Push(0xC3), "");
  EXPECT_EQ(*d.Push(0xA9), "\xC3\xA9");
  // 4-byte emoji split over four tokens.
  EXPECT_EQ(*d.Push(0xF0), "");
  EXPECT_EQ(*d.Push(0x9F), "");
  EXPECT_EQ(*d.Push(0x98), "");
  EXPECT_EQ(*d.Push(0x80), "\xF0\x9F\x98\x80");
  EXPECT_EQ(*d.Push(260), "<|end|>");
  EXPECT_EQ(d.Finish(), "");
  EXPECT_EQ(d.Push(999).status().code(), absl::StatusCode::kNotFound);
}

TEST(StreamDecoderTest, ConcatenationEqualsDecodeForValidText) {
  auto tok = MakeByteTokenizer(kSpecials);
  const std::vector<std::string> corpus = {"plain ascii",
                                           "caf\xC3\xA9 na\xC3\xAFve",
                                           "\xE4\xB8\xAD\xE6\x96\x87\xE6\xB5\x8B\xE8\xAF\x95",
                                           "\xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7",
                                           "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",
                                           "e\xCC\x81 combining",
                                           "<|user|>hi<|end|>"};
  for (const std::string& s : corpus) {
    auto ids = tok->Encode(s, true);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(StreamAll(*tok, *ids), *tok->Decode(*ids));
    EXPECT_EQ(*tok->Decode(*ids), s);
  }
  // Random valid UTF-8 (code points from all planes, no surrogates).
  std::mt19937 rng(7);
  for (int n = 0; n < 500; ++n) {
    std::string s;
    for (int k = 0; k < 20; ++k) {
      uint32_t cp = rng() % 0x110000;
      if (cp >= 0xD800 && cp < 0xE000) cp = 0x41;
      if (cp < 0x80) {
        s += static_cast<char>(cp);
      } else if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      } else if (cp < 0x10000) {
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        s += static_cast<char>(0xF0 | (cp >> 18));
        s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      }
    }
    auto ids = tok->Encode(s, false);
    ASSERT_TRUE(ids.ok());
    ASSERT_EQ(StreamAll(*tok, *ids), s);
  }
}

TEST(StreamDecoderTest, InvalidBytesBecomeReplacementCharacters) {
  auto tok = MakeByteTokenizer(kSpecials);
  // A stray continuation byte, an overlong start, and a truncated sequence at the end.
  EXPECT_EQ(StreamAll(*tok, {'a', 0x80, 'b', 0xC0, 0xAF, 'c', 0xE2, 0x82}),
            "a\xEF\xBF\xBD"
            "b\xEF\xBF\xBD\xEF\xBF\xBD"
            "c\xEF\xBF\xBD");
}

TEST(ChatTest, Phi4Layout) {
  auto tok = MakeByteTokenizer(kSpecials);
  const std::vector<ChatMessage> msgs = {{"system", "S"}, {"user", "Hi <|end|>"}};
  EXPECT_EQ(*FormatChat(msgs), "<|system|>S<|end|><|user|>Hi <|end|><|end|><|assistant|>");
  auto ids = EncodeChat(*tok, msgs);
  ASSERT_TRUE(ids.ok()) << ids.status();
  std::vector<int32_t> want = {257, 'S', 260, 258, 'H', 'i', ' '};
  for (char c : std::string("<|end|>")) want.push_back(static_cast<unsigned char>(c));  // plain
  want.insert(want.end(), {260, 259});
  EXPECT_EQ(*ids, want);
  auto bad = EncodeChat(*tok, {{"robot", "x"}});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("messages[0].role"), std::string::npos);
  EXPECT_EQ(EncodeChat(*tok, {}).status().code(), absl::StatusCode::kInvalidArgument);
  auto no_markers = MakeByteTokenizer({});
  EXPECT_EQ(EncodeChat(*no_markers, msgs).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ChatTest, StopTokensFromGenerationConfigOrDefaults) {
  auto tok = MakeByteTokenizer(kSpecials);
  TempDir dir;
  auto ids = LoadStopTokenIds(dir.path(), *tok);  // no file: <|end|>, <|endoftext|>
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{260, 256}));
  WriteFileBytes(dir.Sub("generation_config.json"), "{\"eos_token_id\": 256}");
  EXPECT_EQ(*LoadStopTokenIds(dir.path(), *tok), (std::vector<int32_t>{256}));
  WriteFileBytes(dir.Sub("generation_config.json"), "{\"eos_token_id\": [260, 999]}");
  EXPECT_EQ(LoadStopTokenIds(dir.path(), *tok).status().code(), absl::StatusCode::kInvalidArgument);
  WriteFileBytes(dir.Sub("generation_config.json"), "{\"eos_token_id\": ");
  EXPECT_EQ(LoadStopTokenIds(dir.path(), *tok).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChatTest, TinyModelDirectoryHasAByteTokenizer) {
  auto tiny = sambay::testing::MakeTiny(3);
  auto tok = LoadTokenizer(tiny->dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->name(), "byte-level");
  EXPECT_EQ(*(*tok)->SpecialTokenId("<|assistant|>"), 259);
  EXPECT_EQ(*LoadStopTokenIds(tiny->dir.path(), **tok), (std::vector<int32_t>{260, 256}));
}

}  // namespace
}  // namespace sambay
