#include "common/npy.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sambay {

absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape,
                         const float* data) {
  std::string dims;
  int64_t n = 1;
  for (int64_t d : shape) {
    absl::StrAppend(&dims, d, ", ");
    n *= d;
  }
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // "(3,)" keeps the comma for 1-D
  std::string header =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", dims, "), }");
  // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::UnavailableError(absl::StrCat("cannot open ", path, " for writing"));
  const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  out.write(magic, 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  const char len_le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_le, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * 4));
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("short write to ", path));
  return absl::OkStatus();
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string b = ss.str();
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a supported .npy file: ", why));
  };
  if (b.size() < 10 || b.compare(0, 6, "\x93NUMPY") != 0) return bad("bad magic");
  if (b[6] != 1) return bad("only format version 1.0 is supported");
  const size_t hlen = static_cast<unsigned char>(b[8]) | (static_cast<unsigned char>(b[9]) << 8);
  if (10 + hlen > b.size()) return bad("truncated header");
  const std::string header = b.substr(10, hlen);
  int width;
  if (header.find("'descr': '<f4'") != std::string::npos) {
    width = 4;
  } else if (header.find("'descr': '<f8'") != std::string::npos) {
    width = 8;
  } else {
    return bad("dtype must be <f4 or <f8");
  }
  if (header.find("'fortran_order': False") == std::string::npos) return bad("fortran order");
  const size_t open = header.find("'shape': (");
  const size_t close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) return bad("no shape");
  NpyArray a;
  int64_t n = 1;
  for (absl::string_view part :
       absl::StrSplit(header.substr(open + 10, close - open - 10), ',', absl::SkipWhitespace())) {
    int64_t d;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &d) || d < 0) return bad("shape");
    a.shape.push_back(d);
    n *= d;
  }
  const size_t off = 10 + hlen;
  if (b.size() - off != static_cast<size_t>(n) * width) return bad("data size mismatch");
  a.data.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    if (width == 4) {
      std::memcpy(&a.data[i], b.data() + off + i * 4, 4);
    } else {
      double d;
      std::memcpy(&d, b.data() + off + i * 8, 8);
      a.data[i] = static_cast<float>(d);
    }
  }
  return a;
}

}  // namespace sambay
