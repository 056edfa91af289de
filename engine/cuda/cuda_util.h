// CUDA plumbing of the CUDA backend: error checks returning absl::Status, an RAII device buffer,
// and CudaContext (device, stream, cuBLASLt handle and workspace).
//
// Every CUDA runtime / cuBLASLt call in engine/cuda goes through SAMBAY_CUDA_RETURN_IF_ERROR or
// CudaStatus, so an error becomes an absl::Status naming the call (Internal; ResourceExhausted
// for out-of-memory).
//
// Ownership: DeviceBuffer owns its allocation (move-only). CudaContext owns its stream, handle
// and workspace. Thread-safety: a CudaContext and the buffers used with it are used by one
// thread at a time; DeviceCount() is thread-safe.
#ifndef SAMBAY_ENGINE_CUDA_CUDA_UTIL_H_
#define SAMBAY_ENGINE_CUDA_CUDA_UTIL_H_

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sambay::cuda {

// OK for cudaSuccess; otherwise Internal (ResourceExhausted for cudaErrorMemoryAllocation)
// with "what: <cuda error name>: <message>".
absl::Status CudaStatus(cudaError_t e, const char* what);
absl::Status CublasStatus(cublasStatus_t s, const char* what);

#define SAMBAY_CUDA_RETURN_IF_ERROR(call)                                                 \
  do {                                                                                    \
    const ::absl::Status sambay_cuda_status_ = ::sambay::cuda::CudaStatus((call), #call); \
    if (!sambay_cuda_status_.ok()) return sambay_cuda_status_;                            \
  } while (0)

#define SAMBAY_CUBLAS_RETURN_IF_ERROR(call)                                                 \
  do {                                                                                      \
    const ::absl::Status sambay_cuda_status_ = ::sambay::cuda::CublasStatus((call), #call); \
    if (!sambay_cuda_status_.ok()) return sambay_cuda_status_;                              \
  } while (0)

// Number of usable CUDA devices; 0 when there is no driver, no device, or any error (never
// fails, so tests can GTEST_SKIP on 0).
int DeviceCount();

// A device allocation of `bytes` bytes (cudaMalloc). Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> Alloc(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

  // Synchronous copies (cudaMemcpy on the legacy default stream, which waits for work on
  // CudaContext streams: those are blocking streams); bytes must fit.
  absl::Status CopyFromHost(const void* src, size_t bytes, size_t offset = 0);
  absl::Status CopyToHost(void* dst, size_t bytes, size_t offset = 0) const;
  absl::Status Zero();

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Device, stream, cuBLASLt handle and a 64 MiB workspace for one thread's work on one GPU.
class CudaContext {
 public:
  static absl::StatusOr<std::unique_ptr<CudaContext>> Create(int device = 0);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cublasLtHandle_t lt() const { return lt_; }
  void* workspace() const { return workspace_.data(); }
  size_t workspace_bytes() const { return workspace_.bytes(); }
  int sm_count() const { return sm_count_; }
  const std::string& device_name() const { return name_; }

  // Makes device() current on the calling thread.
  absl::Status Activate() const;
  absl::Status Synchronize() const;

 private:
  CudaContext() = default;
  int device_ = 0;
  int sm_count_ = 0;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  DeviceBuffer workspace_;
};

}  // namespace sambay::cuda

#endif  // SAMBAY_ENGINE_CUDA_CUDA_UTIL_H_
