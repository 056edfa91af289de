#include "engine/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace sambay {
namespace {

using json = nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";
constexpr int64_t kMaxIndexBytes = int64_t{100} << 20;  // 100 MiB

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return absl::StrCat(dir, "/", name);
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Reads a whole (small) file into *out.
absl::Status ReadSmallFile(const std::string& path, std::string* out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  out->clear();
  char buf[1 << 16];
  absl::Status status;
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      status = absl::ErrnoToStatus(errno, absl::StrCat("cannot read ", path));
      break;
    }
    if (n == 0) break;
    out->append(buf, static_cast<size_t>(n));
    if (static_cast<int64_t>(out->size()) > kMaxIndexBytes) {
      status = absl::InvalidArgumentError(
          absl::StrCat(path, ": larger than the limit of ", kMaxIndexBytes, " bytes"));
      break;
    }
  }
  ::close(fd);
  return status;
}

// A plain file name: non-empty, no '/', no "..", no NUL.
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name.find('/') == std::string::npos &&
         name.find("..") == std::string::npos && name.find('\0') == std::string::npos;
}

// Parses the index's weight_map into tensor -> file name.
absl::Status ParseIndex(const std::string& index_path, const std::string& text,
                        std::map<std::string, std::string>* weight_map) {
  try {
    const json index = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": not valid JSON"));
    }
    if (!index.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": not a JSON object"));
    }
    const auto it = index.find("weight_map");
    if (it == index.end()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": missing 'weight_map'"));
    }
    if (!it->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": 'weight_map' is not a JSON object"));
    }
    if (it->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": 'weight_map' is empty"));
    }
    for (const auto& [tensor, file] : it->items()) {
      if (!file.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path, ": 'weight_map' entry for tensor '", tensor, "' is not a string"));
      }
      const std::string& name = file.get_ref<const std::string&>();
      if (!IsPlainFileName(name)) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor '", tensor,
                                                       "' maps to '", name,
                                                       "', which is not a plain file name"));
      }
      (*weight_map)[tensor] = name;
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": bad index: ", e.what()));
  }
  return absl::OkStatus();
}

// Writes `contents` to path via path + ".tmp" and a rename.
absl::Status WriteSmallFile(const std::string& path, const std::string& contents) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", tmp));
  absl::Status status;
  const char* p = contents.data();
  size_t left = contents.size();
  while (left > 0) {
    const ssize_t w = ::write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      status = w < 0 ? absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", tmp))
                     : absl::DataLossError(absl::StrCat("short write to ", tmp));
      break;
    }
    p += w;
    left -= static_cast<size_t>(w);
  }
  if (::close(fd) != 0 && status.ok()) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("cannot close ", tmp));
  }
  if (status.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  if (!status.ok()) ::unlink(tmp.c_str());
  return status;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  const std::string index_path = JoinPath(dir, kIndexFile);
  const std::string single_path = JoinPath(dir, kSingleFile);

  if (IsRegularFile(index_path)) {
    std::string text;
    SAMBAY_RETURN_IF_ERROR(ReadSmallFile(index_path, &text));
    std::map<std::string, std::string> weight_map;
    SAMBAY_RETURN_IF_ERROR(ParseIndex(index_path, text, &weight_map));
    std::map<std::string, std::set<std::string>> by_file;  // file name -> tensors
    for (const auto& [tensor, file] : weight_map) by_file[file].insert(tensor);

    for (const auto& [file_name, expected] : by_file) {
      const std::string path = JoinPath(dir, file_name);
      SAMBAY_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
      for (const std::string& tensor : expected) {
        if (file->tensors().count(tensor) == 0) {
          return absl::NotFoundError(absl::StrCat("tensor '", tensor, "' is mapped by ", index_path,
                                                  " to ", path, ", which does not contain it"));
        }
      }
      for (const auto& [tensor, info] : file->tensors()) {
        if (expected.count(tensor) != 0) continue;
        const auto it = weight_map.find(tensor);
        if (it != weight_map.end()) {
          return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor, "' is in both ", path,
                                                         " and ", JoinPath(dir, it->second), " (",
                                                         index_path, " maps it to the latter)"));
        }
        return absl::InvalidArgumentError(absl::StrCat(path, " contains tensor '", tensor,
                                                       "', which ", index_path, " does not list"));
      }
      ckpt->files_.push_back(std::move(file));
    }
  } else if (IsRegularFile(single_path)) {
    SAMBAY_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                            SafetensorsFile::Open(single_path));
    ckpt->files_.push_back(std::move(file));
  } else {
    return absl::NotFoundError(absl::StrCat("no ", kSingleFile, " or ", kIndexFile, " in ", dir));
  }

  for (const auto& file : ckpt->files_) {
    for (const auto& [name, info] : file->tensors()) {
      const auto [it, inserted] = ckpt->tensors_.emplace(name, &info);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is in both ",
                                                       it->second->file, " and ", file->path()));
      }
    }
  }
  return ckpt;
}

const TensorInfo* Checkpoint::Find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second;
}

int64_t Checkpoint::total_bytes() const {
  int64_t total = 0;
  for (const auto& [name, info] : tensors_) total += info->nbytes;
  return total;
}

absl::Status WriteCheckpoint(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                             int num_shards) {
  const int64_t n = static_cast<int64_t>(tensors.size());
  if (num_shards < 1 || num_shards > n) {
    return absl::InvalidArgumentError(absl::StrCat("cannot write checkpoint ", dir, ": ",
                                                   num_shards, " shards for ", n, " tensors"));
  }
  std::set<std::string> names;
  // cum[i] = bytes of tensors[0, i).
  std::vector<int64_t> cum(static_cast<size_t>(n) + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const TensorToWrite& t = tensors[static_cast<size_t>(i)];
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write checkpoint ", dir, ": duplicate tensor '", t.name, "'"));
    }
    int64_t bytes = DTypeSize(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0 || __builtin_mul_overflow(bytes, d, &bytes)) {
        return absl::InvalidArgumentError(absl::StrCat("cannot write checkpoint ", dir,
                                                       ": tensor '", t.name, "' has shape ",
                                                       ShapeString(t.shape)));
      }
    }
    if (__builtin_add_overflow(cum[i], bytes, &cum[i + 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write checkpoint ", dir, ": total size overflows"));
    }
  }

  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create directory ", dir, ": ", ec.message()));
  }
  const std::string index_path = JoinPath(dir, kIndexFile);

  if (num_shards == 1) {
    SAMBAY_RETURN_IF_ERROR(WriteSafetensors(JoinPath(dir, kSingleFile), tensors, {}));
    // A stale index would take precedence over the file just written.
    if (::unlink(index_path.c_str()) != 0 && errno != ENOENT) {
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot remove stale ", index_path));
    }
    return absl::OkStatus();
  }

  // Split in order into num_shards contiguous non-empty groups, each boundary placed where the
  // cumulative size is closest to k/num_shards of the total.
  const int64_t total = cum[static_cast<size_t>(n)];
  json weight_map = json::object();
  int64_t start = 0;
  for (int k = 0; k < num_shards; ++k) {
    int64_t end = n;
    if (k < num_shards - 1) {
      const __int128 target = static_cast<__int128>(total) * (k + 1) / num_shards;
      const int64_t max_end = n - (num_shards - 1 - k);  // leave one tensor per later shard
      end = start + 1;
      auto dist = [&](int64_t e) {
        const __int128 d = static_cast<__int128>(cum[static_cast<size_t>(e)]) - target;
        return d < 0 ? -d : d;
      };
      while (end < max_end && dist(end + 1) < dist(end)) ++end;
    }
    const std::string file_name =
        absl::StrFormat("model-%05d-of-%05d.safetensors", k + 1, num_shards);
    std::vector<TensorToWrite> group(tensors.begin() + start, tensors.begin() + end);
    for (const TensorToWrite& t : group) weight_map[t.name] = file_name;
    SAMBAY_RETURN_IF_ERROR(WriteSafetensors(JoinPath(dir, file_name), group, {}));
    start = end;
  }

  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", std::move(weight_map)}};
  std::string text;
  try {
    text = index.dump(2) + "\n";
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot write ", index_path, ": ", e.what()));
  }
  return WriteSmallFile(index_path, text);
}

}  // namespace sambay
