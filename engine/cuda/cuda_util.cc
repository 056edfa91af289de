#include "engine/cuda/cuda_util.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace sambay::cuda {

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  std::string msg = absl::StrCat(what, ": ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
  if (e == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

absl::Status CublasStatus(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  std::string msg = absl::StrCat(what, ": cuBLAS status ", static_cast<int>(s));
  if (s == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  if (s == CUBLAS_STATUS_INVALID_VALUE || s == CUBLAS_STATUS_NOT_SUPPORTED) {
    return absl::InvalidArgumentError(msg);
  }
  return absl::InternalError(msg);
}

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Alloc(size_t bytes) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  SAMBAY_CUDA_RETURN_IF_ERROR(cudaMalloc(&b.ptr_, bytes));
  b.bytes_ = bytes;
  return b;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) (void)cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

absl::Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes, size_t offset) {
  if (offset + bytes > bytes_) {
    return absl::InvalidArgumentError(absl::StrCat("CopyFromHost: ", bytes, " bytes at offset ",
                                                   offset, " exceed the buffer's ", bytes_));
  }
  if (bytes == 0) return absl::OkStatus();
  SAMBAY_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(static_cast<char*>(ptr_) + offset, src, bytes, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status DeviceBuffer::CopyToHost(void* dst, size_t bytes, size_t offset) const {
  if (offset + bytes > bytes_) {
    return absl::InvalidArgumentError(absl::StrCat("CopyToHost: ", bytes, " bytes at offset ",
                                                   offset, " exceed the buffer's ", bytes_));
  }
  if (bytes == 0) return absl::OkStatus();
  SAMBAY_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(dst, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status DeviceBuffer::Zero() {
  if (bytes_ == 0) return absl::OkStatus();
  SAMBAY_CUDA_RETURN_IF_ERROR(cudaMemset(ptr_, 0, bytes_));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaContext>> CudaContext::Create(int device) {
  const int n = DeviceCount();
  if (device < 0 || device >= n) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", device, " requested but ", n, " device(s) are present"));
  }
  std::unique_ptr<CudaContext> c(new CudaContext());
  c->device_ = device;
  SAMBAY_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  cudaDeviceProp prop;
  SAMBAY_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  c->sm_count_ = prop.multiProcessorCount;
  c->name_ = prop.name;
  SAMBAY_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&c->stream_, cudaStreamDefault));
  SAMBAY_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&c->lt_));
  auto ws = DeviceBuffer::Alloc(size_t{64} << 20);
  if (!ws.ok()) return ws.status();
  c->workspace_ = std::move(*ws);
  return c;
}

CudaContext::~CudaContext() {
  if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
  if (lt_ != nullptr) (void)cublasLtDestroy(lt_);
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}

absl::Status CudaContext::Activate() const {
  SAMBAY_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  return absl::OkStatus();
}

absl::Status CudaContext::Synchronize() const {
  SAMBAY_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

}  // namespace sambay::cuda
