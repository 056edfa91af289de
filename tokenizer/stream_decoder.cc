#include "tokenizer/stream_decoder.h"

#include "common/status_macros.h"

namespace sambay {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

// Length of the valid UTF-8 sequence at s[i..), 0 if invalid, -1 if valid so far but cut off.
int SequenceLength(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  int len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;  // no overlongs
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;  // <= U+10FFFF
  } else {
    return 0;
  }
  for (int k = 1; k < len; ++k) {
    if (i + k >= s.size()) return -1;
    const unsigned char ck = b(i + k);
    if (k == 1 ? (ck < lo || ck > hi) : (ck < 0x80 || ck > 0xBF)) return 0;
  }
  return len;
}

}  // namespace

std::string StreamDecoder::Drain(bool final) {
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const int len = SequenceLength(pending_, i);
    if (len > 0) {
      out.append(pending_, i, len);
      i += len;
    } else if (len == 0) {
      out.append(kReplacement);
      ++i;
    } else if (final) {  // cut off at the end of the stream
      out.append(kReplacement);
      i = pending_.size();
    } else {
      break;  // wait for more bytes
    }
  }
  pending_.erase(0, i);
  return out;
}

absl::StatusOr<std::string> StreamDecoder::Push(int32_t id) {
  SAMBAY_RETURN_IF_ERROR(tok_.AppendTokenBytes(id, &pending_));
  return Drain(/*final=*/false);
}

std::string StreamDecoder::Finish() { return Drain(/*final=*/true); }

}  // namespace sambay
