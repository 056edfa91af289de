#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace sambay {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;  // 100 MiB

// Closes a file descriptor on scope exit.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  // Closes now and reports the error, if any; the destructor then does nothing.
  int Close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// Reads a JSON value as a non-negative int64; false for floats, negatives, or > INT64_MAX.
bool GetNonNegativeInt(const json& v, int64_t* out) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < 0) return false;
    *out = i;
    return true;
  }
  return false;
}

// Product of dims times elem_size, or false on overflow.
bool ComputeNbytes(const std::vector<int64_t>& shape, int64_t elem_size, int64_t* out) {
  int64_t n = elem_size;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return false;
  }
  *out = n;
  return true;
}

struct ParsedEntry {
  TensorInfo info;
  int64_t begin = 0;
  int64_t end = 0;
};

// Validates one header entry (everything except range/overlap checks against the data region).
absl::Status ParseEntry(const std::string& path, const std::string& name, const json& v,
                        ParsedEntry* out) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": tensor '", name, "' in safetensors header: ", what));
  };
  if (!v.is_object()) return bad("entry is not a JSON object");
  const auto dtype_it = v.find("dtype");
  const auto shape_it = v.find("shape");
  const auto offsets_it = v.find("data_offsets");
  if (dtype_it == v.end()) return bad("missing 'dtype'");
  if (shape_it == v.end()) return bad("missing 'shape'");
  if (offsets_it == v.end()) return bad("missing 'data_offsets'");

  if (!dtype_it->is_string()) return bad("'dtype' is not a string");
  const std::string& dtype_str = dtype_it->get_ref<const std::string&>();
  const std::optional<DType> dtype = ParseDType(dtype_str);
  if (!dtype.has_value()) {
    return bad(absl::StrCat("unsupported dtype '", dtype_str, "' (supported: F32, BF16, F16)"));
  }

  if (!shape_it->is_array()) return bad("'shape' is not an array");
  std::vector<int64_t> shape;
  shape.reserve(shape_it->size());
  for (const json& d : *shape_it) {
    int64_t dim = 0;
    if (!GetNonNegativeInt(d, &dim)) {
      return bad(absl::StrCat("shape dimension ", d.dump(), " is not a non-negative integer"));
    }
    shape.push_back(dim);
  }
  int64_t nbytes = 0;
  if (!ComputeNbytes(shape, DTypeSize(*dtype), &nbytes)) {
    return bad(absl::StrCat("shape ", ShapeString(shape), " overflows the element count"));
  }

  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    return bad("'data_offsets' is not an array of two integers");
  }
  int64_t begin = 0;
  int64_t end = 0;
  if (!GetNonNegativeInt((*offsets_it)[0], &begin) || !GetNonNegativeInt((*offsets_it)[1], &end)) {
    return bad(
        absl::StrCat("'data_offsets' ", offsets_it->dump(), " are not non-negative integers"));
  }
  if (end < begin) {
    return bad(absl::StrCat("data_offsets end ", end, " is before begin ", begin));
  }
  if (end - begin != nbytes) {
    return bad(absl::StrCat("data_offsets [", begin, ", ", end, "] span ", end - begin,
                            " bytes but ", dtype_str, " ", ShapeString(shape), " needs ", nbytes));
  }
  out->info.name = name;
  out->info.dtype = *dtype;
  out->info.shape = std::move(shape);
  out->info.nbytes = nbytes;
  out->info.file = path;
  out->begin = begin;
  out->end = end;
  return absl::OkStatus();
}

absl::Status ParseMetadata(const std::string& path, const json& v,
                           std::map<std::string, std::string>* out) {
  if (!v.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": '__metadata__' in safetensors header is not a JSON object"));
  }
  for (const auto& [key, value] : v.items()) {
    if (!value.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": '__metadata__' value for key '", key, "' is not a string"));
    }
    (*out)[key] = value.get<std::string>();
  }
  return absl::OkStatus();
}

// Writes all of buf to fd, retrying on EINTR and short writes.
absl::Status WriteAll(int fd, const void* buf, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", path));
    }
    if (w == 0) return absl::DataLossError(absl::StrCat("short write to ", path));
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

absl::Status WriteFileContents(const std::string& tmp, const std::string& header,
                               const std::vector<TensorToWrite>& tensors,
                               const std::vector<int64_t>& nbytes) {
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", tmp));
  FdCloser closer(fd);
  uint8_t len_bytes[8];
  const uint64_t header_len = header.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<uint8_t>(header_len >> (8 * i));
  SAMBAY_RETURN_IF_ERROR(WriteAll(fd, len_bytes, 8, tmp));
  SAMBAY_RETURN_IF_ERROR(WriteAll(fd, header.data(), header.size(), tmp));
  for (size_t i = 0; i < tensors.size(); ++i) {
    SAMBAY_RETURN_IF_ERROR(WriteAll(fd, tensors[i].data, static_cast<size_t>(nbytes[i]), tmp));
  }
  if (closer.Close() != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot close ", tmp));
  }
  return absl::OkStatus();
}

// Maps `path` read-only; sets *map and *size only on success. The file must be a regular file of
// at least 8 bytes.
absl::Status MapFile(const std::string& path, void** map, size_t* size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  FdCloser closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot stat ", path));
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    return absl::DataLossError(absl::StrCat(path, ": file is ", file_size,
                                            " bytes, shorter than the 8-byte header length"));
  }
  void* m = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (m == MAP_FAILED) return absl::ErrnoToStatus(errno, absl::StrCat("cannot mmap ", path));
  *map = m;
  *size = file_size;
  return absl::OkStatus();
}

// The header length stored in the first 8 bytes of a file of `file_size` (>= 8) bytes; it must
// be within kMaxHeaderBytes and the file.
absl::StatusOr<uint64_t> ReadHeaderLength(const std::string& path, const uint8_t* base,
                                          uint64_t file_size) {
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(base[i]) << (8 * i);
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_len,
                                                   " exceeds the limit of ", kMaxHeaderBytes));
  }
  if (header_len > file_size - 8) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", header_len,
                                            " exceeds the file size ", file_size,
                                            " (truncated file?)"));
  }
  return header_len;
}

// Parses the JSON header: tensor entries into *entries, "__metadata__" into *metadata.
absl::Status ParseHeader(const std::string& path, const char* header_begin, uint64_t header_len,
                         std::vector<ParsedEntry>* entries,
                         std::map<std::string, std::string>* metadata) {
  try {
    const json header = json::parse(header_begin, header_begin + header_len, nullptr,
                                    /*allow_exceptions=*/false);
    if (header.is_discarded()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": header is not valid JSON"));
    }
    if (!header.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": header is not a JSON object"));
    }
    entries->reserve(header.size());
    for (const auto& [name, value] : header.items()) {
      if (name == "__metadata__") {
        SAMBAY_RETURN_IF_ERROR(ParseMetadata(path, value, metadata));
        continue;
      }
      ParsedEntry entry;
      SAMBAY_RETURN_IF_ERROR(ParseEntry(path, name, value, &entry));
      entries->push_back(std::move(entry));
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad header: ", e.what()));
  }
  return absl::OkStatus();
}

// Every entry lies inside the data region of `data_size` bytes, and no two non-empty ones overlap.
absl::Status CheckDataRanges(const std::string& path, const std::vector<ParsedEntry>& entries,
                             int64_t data_size) {
  for (const ParsedEntry& e : entries) {
    if (e.end > data_size) {
      return absl::DataLossError(absl::StrCat(path, ": tensor '", e.info.name, "' data_offsets [",
                                              e.begin, ", ", e.end, "] exceed the data region of ",
                                              data_size, " bytes (truncated file?)"));
    }
  }
  // Overlap check: sort non-empty ranges by begin; each must start at or after the previous end.
  std::vector<const ParsedEntry*> order;
  for (const ParsedEntry& e : entries) {
    if (e.end > e.begin) order.push_back(&e);
  }
  std::sort(order.begin(), order.end(),
            [](const ParsedEntry* a, const ParsedEntry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < order.size(); ++i) {
    if (order[i]->begin < order[i - 1]->end) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensors '", order[i - 1]->info.name, "' [", order[i - 1]->begin,
                       ", ", order[i - 1]->end, "] and '", order[i]->info.name, "' [",
                       order[i]->begin, ", ", order[i]->end, "] overlap"));
    }
  }
  return absl::OkStatus();
}

// Points each entry at its data (or at an aligned copy, kept in *aligned_copies, when the data
// is not aligned to the element size) and moves it into *tensors.
void PlaceTensors(const uint8_t* data_begin, std::vector<ParsedEntry>* entries,
                  std::map<std::string, TensorInfo>* tensors,
                  std::vector<std::unique_ptr<uint8_t[]>>* aligned_copies) {
  for (ParsedEntry& e : *entries) {
    const uint8_t* ptr = data_begin + e.begin;
    const size_t align = static_cast<size_t>(DTypeSize(e.info.dtype));
    if (reinterpret_cast<uintptr_t>(ptr) % align != 0) {
      // new[] storage is aligned to at least alignof(max_align_t) >= 4.
      auto copy =
          std::make_unique<uint8_t[]>(static_cast<size_t>(std::max<int64_t>(e.info.nbytes, 1)));
      std::memcpy(copy.get(), ptr, static_cast<size_t>(e.info.nbytes));
      ptr = copy.get();
      aligned_copies->push_back(std::move(copy));
    }
    e.info.data = ptr;
    std::string name = e.info.name;
    tensors->emplace(std::move(name), std::move(e.info));
  }
}

}  // namespace

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  SAMBAY_RETURN_IF_ERROR(MapFile(path, &file->map_, &file->map_size_));
  const uint64_t file_size = file->map_size_;
  const uint8_t* base = static_cast<const uint8_t*>(file->map_);

  SAMBAY_ASSIGN_OR_RETURN(const uint64_t header_len, ReadHeaderLength(path, base, file_size));
  const char* header_begin = reinterpret_cast<const char*>(base + 8);
  const uint8_t* data_begin = base + 8 + header_len;
  const int64_t data_size = static_cast<int64_t>(file_size - 8 - header_len);

  std::vector<ParsedEntry> entries;
  SAMBAY_RETURN_IF_ERROR(ParseHeader(path, header_begin, header_len, &entries, &file->metadata_));
  SAMBAY_RETURN_IF_ERROR(CheckDataRanges(path, entries, data_size));
  PlaceTensors(data_begin, &entries, &file->tensors_, &file->aligned_copies_);
  return file;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<int64_t> nbytes(tensors.size());
  std::set<std::string> names;
  json header = json::object();
  int64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorToWrite& t = tensors[i];
    auto bad = [&](const std::string& what) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write ", path, ": tensor '", t.name, "': ", what));
    };
    if (t.name == "__metadata__") return bad("reserved name");
    if (!names.insert(t.name).second) return bad("duplicate name");
    if (!ComputeNbytes(t.shape, DTypeSize(t.dtype), &nbytes[i])) {
      return bad(absl::StrCat("invalid shape ", ShapeString(t.shape)));
    }
    if (t.data == nullptr && nbytes[i] > 0) return bad("null data");
    if (__builtin_add_overflow(offset, nbytes[i], &offset)) return bad("total size overflows");
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset - nbytes[i], offset}}};
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;

  std::string header_str;
  try {
    header_str = header.dump();
  } catch (const std::exception& e) {  // e.g. a name that is not valid UTF-8
    return absl::InvalidArgumentError(absl::StrCat("cannot write ", path, ": ", e.what()));
  }
  header_str.append((8 - (8 + header_str.size()) % 8) % 8, ' ');

  const std::string tmp = path + ".tmp";
  absl::Status status = WriteFileContents(tmp, header_str, tensors, nbytes);
  if (status.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  if (!status.ok()) ::unlink(tmp.c_str());
  return status;
}

}  // namespace sambay
