#include "worker/gpu_plugin.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"

namespace sambay {
namespace {

#ifdef SAMBAY_HAVE_CUDA
// The directory of the running executable, with a trailing '/', or "" if unknown.
std::string ExecutableDir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  const std::string path(buf, static_cast<size_t>(n));
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash + 1);
}
#endif

absl::StatusOr<const GpuPluginApi*> Load() {
#ifndef SAMBAY_HAVE_CUDA
  return absl::FailedPreconditionError(
      "--device cuda: this sambay-worker was built without the CUDA backend (configure with "
      "-DSAMBAY_CUDA=ON on a machine with the CUDA toolkit)");
#else
  const char* env = std::getenv("SAMBAY_CUDA_PLUGIN");
  const std::string path = env != nullptr && *env != '\0' ? env : ExecutableDir() + kGpuPluginFile;
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) {
    const char* err = dlerror();
    return absl::FailedPreconditionError(absl::StrCat("--device cuda: cannot load the CUDA plugin ",
                                                      path, ": ", err != nullptr ? err : "?"));
  }
  using EntryFn = const GpuPluginApi* (*)();
  auto entry = reinterpret_cast<EntryFn>(dlsym(h, kGpuPluginSymbol));
  const GpuPluginApi* api = entry != nullptr ? entry() : nullptr;
  if (api == nullptr || api->abi != kGpuPluginAbi || api->device_count == nullptr ||
      api->create == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device cuda: ", path, " is not a CUDA plugin of this sambay-worker (ABI ",
                     api != nullptr ? api->abi : -1, ", want ", kGpuPluginAbi, ")"));
  }
  return api;  // h stays open for the life of the process
#endif
}

}  // namespace

absl::StatusOr<const GpuPluginApi*> LoadGpuPlugin() {
  static std::once_flag once;
  static absl::StatusOr<const GpuPluginApi*>* result = nullptr;
  std::call_once(once, [] { result = new absl::StatusOr<const GpuPluginApi*>(Load()); });
  return *result;
}

}  // namespace sambay
