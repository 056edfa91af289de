// Compiled only into sambay_cuda with the NCCL header (SAMBAY_HAVE_NCCL): empty elsewhere.
#if defined(SAMBAY_HAVE_NCCL)

#include "engine/tp/nccl_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace sambay {
namespace {

template <typename Fn>
absl::Status Resolve(void* lib, const std::string& path, const char* name, Fn* out) {
  dlerror();
  void* sym = dlsym(lib, name);
  if (sym == nullptr) {
    const char* err = dlerror();
    return absl::FailedPreconditionError(
        absl::StrCat("NCCL: ", path, " has no ", name, ": ", err != nullptr ? err : "null"));
  }
  *out = reinterpret_cast<Fn>(sym);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<NcclApi> LoadNcclFrom(const std::string& path) {
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* err = dlerror();
    return absl::FailedPreconditionError(absl::StrCat(
        "NCCL is not available: cannot load ", path, ": ", err != nullptr ? err : "unknown error",
        " (tensor parallelism on GPUs needs libnccl.so.2 on the library path, or "
        "$SAMBAY_NCCL_LIBRARY)"));
  }
  NcclApi api;
  absl::Status s = Resolve(lib, path, "ncclCommInitAll", &api.CommInitAll);
  if (s.ok()) s = Resolve(lib, path, "ncclCommDestroy", &api.CommDestroy);
  if (s.ok()) s = Resolve(lib, path, "ncclCommAbort", &api.CommAbort);
  if (s.ok()) s = Resolve(lib, path, "ncclAllReduce", &api.AllReduce);
  if (s.ok()) s = Resolve(lib, path, "ncclAllGather", &api.AllGather);
  if (s.ok()) s = Resolve(lib, path, "ncclBroadcast", &api.Broadcast);
  if (s.ok()) s = Resolve(lib, path, "ncclGetErrorString", &api.GetErrorString);
  if (!s.ok()) {
    dlclose(lib);
    return s;
  }
  return api;  // the library stays loaded: the pointers refer into it
}

absl::StatusOr<const NcclApi*> LoadNccl() {
  static std::once_flag once;
  static absl::StatusOr<NcclApi>* loaded = nullptr;  // never freed: lives as long as the library
  std::call_once(once, [] {
    const char* env = std::getenv("SAMBAY_NCCL_LIBRARY");
    loaded = new absl::StatusOr<NcclApi>(
        LoadNcclFrom(env != nullptr && env[0] != '\0' ? env : "libnccl.so.2"));
  });
  if (!loaded->ok()) return loaded->status();
  return &**loaded;
}

}  // namespace sambay

#endif  // SAMBAY_HAVE_NCCL
