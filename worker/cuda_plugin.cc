// libsambay_worker_cuda.so: the CUDA backend behind GpuPluginApi (worker/gpu_plugin.h).
#include "engine/cuda/cuda_util.h"
#include "worker/cuda_backend.h"
#include "worker/gpu_plugin.h"

namespace sambay {
namespace {

absl::StatusOr<std::unique_ptr<EngineBackend>> Create(const Model& cpu,
                                                      const GpuBackendOptions& o) {
  cuda::CudaModelOptions co;
  co.device = o.devices.empty() ? 0 : o.devices[0];
  co.max_slots = o.max_slots;
  co.max_context = o.max_context;
  co.kv_blocks = o.kv_blocks;
  co.block_tokens = o.block_tokens;
  co.max_chunk = o.max_chunk;
  co.max_logits_rows = o.max_logits_rows;
  co.cuda_graphs = o.cuda_graphs;
  auto b = CudaBackend::Create(cpu, co, o.devices);
  if (!b.ok()) return b.status();
  return std::unique_ptr<EngineBackend>(std::move(*b));
}

int DeviceCount() { return cuda::DeviceCount(); }

}  // namespace
}  // namespace sambay

extern "C" __attribute__((visibility("default"))) const sambay::GpuPluginApi* SambayGpuPlugin() {
  static const sambay::GpuPluginApi api{sambay::kGpuPluginAbi, &sambay::DeviceCount,
                                        &sambay::Create};
  return &api;
}
