// Compiled only into sambay_cuda with NCCL (SAMBAY_HAVE_NCCL): empty elsewhere, so a glob of
// engine/tp/*.cc into the CPU engine stays harmless.
#if defined(SAMBAY_HAVE_NCCL)

#include "engine/tp/nccl_communicator.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "engine/tp/nccl_loader.h"

namespace sambay {
namespace {

ncclDataType_t NcclType(CommDtype t) { return t == CommDtype::kF32 ? ncclFloat32 : ncclBfloat16; }

// The loaded NCCL: a communicator exists only after CreateGroup loaded it.
const NcclApi& Api() { return **LoadNccl(); }

absl::Status NcclStatus(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, ": ", Api().GetErrorString(r));
  if (r == ncclInvalidArgument || r == ncclInvalidUsage) return absl::InvalidArgumentError(msg);
  return absl::InternalError(msg);
}

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<NcclCommunicator>>> NcclCommunicator::CreateGroup(
    const std::vector<int>& devices) {
  if (devices.empty()) return absl::InvalidArgumentError("devices: empty group");
  int present = 0;
  if (cudaGetDeviceCount(&present) != cudaSuccess) {
    (void)cudaGetLastError();
    present = 0;
  }
  std::set<int> seen;
  for (int d : devices) {
    if (d < 0 || d >= present) {
      return absl::InvalidArgumentError(
          absl::StrCat("devices: device ", d, " is not present (", present, " device(s))"));
    }
    if (!seen.insert(d).second) {
      return absl::InvalidArgumentError(absl::StrCat("devices: device ", d, " appears twice"));
    }
  }
  absl::StatusOr<const NcclApi*> api = LoadNccl();
  if (!api.ok()) return api.status();
  const int n = static_cast<int>(devices.size());
  std::vector<ncclComm_t> comms(n, nullptr);
  absl::Status s =
      NcclStatus(Api().CommInitAll(comms.data(), n, devices.data()), "ncclCommInitAll");
  if (!s.ok()) return s;
  std::vector<std::unique_ptr<NcclCommunicator>> out;
  for (int i = 0; i < n; ++i) {
    cudaStream_t stream = nullptr;
    void* buf = nullptr;
    s = CudaStatus(cudaSetDevice(devices[i]), "cudaSetDevice");
    if (s.ok()) s = CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    if (s.ok()) s = CudaStatus(cudaMalloc(&buf, sizeof(float)), "cudaMalloc");
    if (s.ok()) s = CudaStatus(cudaMemset(buf, 0, sizeof(float)), "cudaMemset");
    if (!s.ok()) {
      if (stream != nullptr) (void)cudaStreamDestroy(stream);
      for (int j = i; j < n; ++j) (void)Api().CommDestroy(comms[j]);
      return s;  // the ranks made so far are destroyed by `out`
    }
    out.emplace_back(new NcclCommunicator(i, n, devices[i], comms[i], stream, buf));
  }
  return out;
}

NcclCommunicator::~NcclCommunicator() {
  (void)cudaSetDevice(device_);
  if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
  if (comm_ != nullptr && !aborted_.load()) (void)Api().CommDestroy(comm_);
  if (barrier_buf_ != nullptr) (void)cudaFree(barrier_buf_);
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}

void NcclCommunicator::Abort() {
  std::call_once(abort_once_, [this] {
    aborted_.store(true);
    (void)Api().CommAbort(comm_);  // frees the communicator; pending operations end
  });
}

absl::Status NcclCommunicator::Finish(ncclResult_t r, const char* what) {
  absl::Status s = NcclStatus(r, what);
  if (!s.ok()) return s;
  return CudaStatus(cudaStreamSynchronize(stream()), what);
}

absl::Status NcclCommunicator::AllReduceSum(void* buf, size_t count, CommDtype dtype) {
  if (count == 0) return absl::OkStatus();
  if (buf == nullptr) return absl::InvalidArgumentError("AllReduceSum: buf is null");
  if (aborted_.load()) return absl::InternalError("NCCL group aborted");
  absl::Status s = CudaStatus(cudaSetDevice(device_), "cudaSetDevice");
  if (!s.ok()) return s;
  return Finish(Api().AllReduce(buf, buf, count, NcclType(dtype), ncclSum, comm_, stream()),
                "ncclAllReduce");
}

absl::Status NcclCommunicator::AllGather(const void* in, void* out, size_t count, CommDtype dtype) {
  if (count == 0) return absl::OkStatus();
  if (in == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("AllGather: in or out is null");
  }
  if (aborted_.load()) return absl::InternalError("NCCL group aborted");
  absl::Status s = CudaStatus(cudaSetDevice(device_), "cudaSetDevice");
  if (!s.ok()) return s;
  return Finish(Api().AllGather(in, out, count, NcclType(dtype), comm_, stream()), "ncclAllGather");
}

absl::Status NcclCommunicator::Broadcast(void* buf, size_t count, CommDtype dtype, int root) {
  if (root < 0 || root >= size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("Broadcast: root ", root, " is outside [0, ", size_, ")"));
  }
  if (count == 0) return absl::OkStatus();
  if (buf == nullptr) return absl::InvalidArgumentError("Broadcast: buf is null");
  if (aborted_.load()) return absl::InternalError("NCCL group aborted");
  absl::Status s = CudaStatus(cudaSetDevice(device_), "cudaSetDevice");
  if (!s.ok()) return s;
  return Finish(Api().Broadcast(buf, buf, count, NcclType(dtype), root, comm_, stream()),
                "ncclBroadcast");
}

absl::Status NcclCommunicator::Barrier() {
  if (aborted_.load()) return absl::InternalError("NCCL group aborted");
  absl::Status s = CudaStatus(cudaSetDevice(device_), "cudaSetDevice");
  if (!s.ok()) return s;
  return Finish(
      Api().AllReduce(barrier_buf_, barrier_buf_, 1, ncclFloat32, ncclSum, comm_, stream()),
      "ncclAllReduce (barrier)");
}

absl::Status NcclCommunicator::EnqueueAllReduceSumF32(float* buf, size_t count,
                                                      cudaStream_t stream) {
  if (aborted_.load()) return absl::InternalError("EnqueueAllReduceSumF32: NCCL group aborted");
  if (count == 0) return absl::OkStatus();
  if (buf == nullptr) return absl::InvalidArgumentError("EnqueueAllReduceSumF32: buf is null");
  return NcclStatus(Api().AllReduce(buf, buf, count, ncclFloat32, ncclSum, comm_, stream),
                    "ncclAllReduce");
}

absl::Status NcclCommunicator::EnqueueAllGatherF32(const float* in, float* out, size_t count,
                                                   cudaStream_t stream) {
  if (aborted_.load()) return absl::InternalError("EnqueueAllGatherF32: NCCL group aborted");
  if (count == 0) return absl::OkStatus();
  if (in == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("EnqueueAllGatherF32: in or out is null");
  }
  return NcclStatus(Api().AllGather(in, out, count, ncclFloat32, comm_, stream), "ncclAllGather");
}

}  // namespace sambay

#endif  // SAMBAY_HAVE_NCCL
