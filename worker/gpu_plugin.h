// The CUDA backend as a plugin: `sambay-worker --device cuda` loads libsambay_worker_cuda.so
// (worker/cuda_plugin.cc + worker/cuda_backend.cc + engine/cuda, built only with CUDA) at
// start, so a CPU worker never maps the CUDA libraries. That matters beyond size: libraries
// linked at start put their thread-locals in every thread's stack (cuBLASLt's are ~94 KiB, more
// than a thread created with a small stack can spare), while a dlopen'ed library's thread-locals
// are allocated on first use instead. The executable exports its symbols (ENABLE_EXPORTS), so
// the plugin binds to the worker's own engine code rather than a second copy.
//
// Ownership: the plugin stays loaded for the life of the process (never dlclose'd), so the
// backends and states it creates may live until exit. Thread-safety: LoadGpuPlugin is
// thread-safe (loads once); the API functions are as documented on the backend.
#ifndef SAMBAY_WORKER_GPU_PLUGIN_H_
#define SAMBAY_WORKER_GPU_PLUGIN_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/model.h"

namespace sambay {

// Bumped whenever GpuPluginApi, GpuBackendOptions or EngineBackend's virtual methods change: a
// worker refuses a plugin built from other sources. 3: EngineBackend::ExportTo.
inline constexpr int kGpuPluginAbi = 3;
inline constexpr char kGpuPluginFile[] = "libsambay_worker_cuda.so";
inline constexpr char kGpuPluginSymbol[] = "SambayGpuPlugin";

// What the worker's flags ask of the CUDA backend (cuda::CudaModelOptions without CUDA types).
struct GpuBackendOptions {
  std::vector<int> devices;  // one per tensor-parallel rank
  int max_slots = 8;
  int64_t max_context = 4096;
  int64_t kv_blocks = 0;
  int block_tokens = 256;
  int64_t max_chunk = 1024;
  int64_t max_logits_rows = 64;
  bool cuda_graphs = false;  // decode steps replayed from CUDA graphs
};

struct GpuPluginApi {
  int abi = 0;  // kGpuPluginAbi of the plugin's sources
  // Usable CUDA devices (0 without a driver or device).
  int (*device_count)() = nullptr;
  // The model's weights uploaded to options.devices (CudaBackend::Create).
  absl::StatusOr<std::unique_ptr<EngineBackend>> (*create)(
      const Model& cpu, const GpuBackendOptions& options) = nullptr;
};

// The plugin's API: $SAMBAY_CUDA_PLUGIN if set, else kGpuPluginFile beside the running
// executable. FailedPrecondition (message starting "--device cuda: ") when this worker was
// built without CUDA, the file cannot be loaded (with dlerror()), or its ABI differs.
absl::StatusOr<const GpuPluginApi*> LoadGpuPlugin();

}  // namespace sambay

// The plugin's one exported entry point (kGpuPluginSymbol).
extern "C" const sambay::GpuPluginApi* SambayGpuPlugin();

#endif  // SAMBAY_WORKER_GPU_PLUGIN_H_
