// NCCL loaded at run time: dlopen of libnccl.so.2 (or $SAMBAY_NCCL_LIBRARY) at the first
// NcclCommunicator::CreateGroup, not linked. A CUDA build then starts, and runs single-GPU work,
// on a machine without NCCL; only a tensor-parallel group over NCCL fails, with an error naming
// the library.
//
// Built only with CUDA and the NCCL header (SAMBAY_HAVE_NCCL). Ownership: the library stays
// loaded for the life of the process. Thread-safety: LoadNccl is safe from any thread (loads
// once); LoadNcclFrom has no shared state.
#ifndef SAMBAY_ENGINE_TP_NCCL_LOADER_H_
#define SAMBAY_ENGINE_TP_NCCL_LOADER_H_

#include <nccl.h>

#include <string>

#include "absl/status/statusor.h"

namespace sambay {

// The NCCL entry points the communicator uses.
struct NcclApi {
  decltype(&::ncclCommInitAll) CommInitAll = nullptr;
  decltype(&::ncclCommDestroy) CommDestroy = nullptr;
  decltype(&::ncclCommAbort) CommAbort = nullptr;
  decltype(&::ncclAllReduce) AllReduce = nullptr;
  decltype(&::ncclAllGather) AllGather = nullptr;
  decltype(&::ncclBroadcast) Broadcast = nullptr;
  decltype(&::ncclGetErrorString) GetErrorString = nullptr;
};

// Loads `path` (a file name is searched like any shared library) and resolves every entry point;
// FailedPrecondition naming the library and the loader's error otherwise.
absl::StatusOr<NcclApi> LoadNcclFrom(const std::string& path);

// The process's NCCL: $SAMBAY_NCCL_LIBRARY, else libnccl.so.2; loaded once, the result (or
// the error) kept.
absl::StatusOr<const NcclApi*> LoadNccl();

}  // namespace sambay

#endif  // SAMBAY_ENGINE_TP_NCCL_LOADER_H_
