// CpuCommunicator: the in-process Communicator (docs/design.md "Tensor parallelism"): the ranks
// of a group are threads of one process and exchange data through shared memory, so tensor
// parallelism runs and is tested without GPUs.
//
// Every collective is two group barriers around one pass over the ranks' buffers:
//   1. each rank publishes its arguments (op, buffers, count, dtype, root) and waits for all;
//   2. every rank checks that all ranks called the same collective with the same count, dtype
//      and root (a mismatch is an internal error returned on EVERY rank, never a hang or a
//      crash), then does its share of the work, and waits for all again.
// AllReduceSum: rank r reduces the r-th contiguous slice of the elements, summing the ranks'
// values in rank order ((x0 + x1) + x2) + ... in fp32 (bf16 inputs are widened, the sum is
// rounded to bf16 once, to nearest even), and writes the sum into every rank's buffer. The
// result is therefore bit-identical on every rank and across runs, for any thread timing.
// AllGather and Broadcast are plain copies (exact).
//
// Waiting spins briefly, then sleeps on a futex (std::atomic::wait). A group can be poisoned
// with Abort(): ranks waiting for a rank that never arrives wake up and return the abort
// status, and so does every later collective, so a rank that fails outside a collective can
// release the others. A collective that all ranks have entered always finishes first (no rank
// returns while another may still read or write its buffers).
//
// Ownership: CreateCpuCommunicators returns one owned Communicator per rank; the shared group
// state is jointly owned (shared_ptr) by them. Buffers are borrowed for the duration of a call
// and must stay valid until it returns on the calling rank.
// Thread-safety: each Communicator is used by one thread at a time (its rank's thread); the ranks
// call concurrently. Abort() may be called from any thread.
#ifndef SAMBAY_ENGINE_TP_CPU_COMMUNICATOR_H_
#define SAMBAY_ENGINE_TP_CPU_COMMUNICATOR_H_

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/tp/communicator.h"

namespace sambay {

inline constexpr int kMaxCpuCommRanks = 256;

class CpuCommGroup;  // shared state of one group (cpu_communicator.cc)

class CpuCommunicator final : public Communicator {
 public:
  CpuCommunicator(std::shared_ptr<CpuCommGroup> group, int rank);
  ~CpuCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override;

  absl::Status AllReduceSum(void* buf, size_t count, CommDtype dtype) override;
  absl::Status AllGather(const void* in, void* out, size_t count, CommDtype dtype) override;
  absl::Status Broadcast(void* buf, size_t count, CommDtype dtype, int root) override;
  absl::Status Barrier() override;

  // Poisons the whole group: ranks blocked waiting for the others return `why` (an OK status
  // becomes Aborted), and so does every later collective of every rank. The first status wins.
  void Abort(const absl::Status& why);

 private:
  std::shared_ptr<CpuCommGroup> group_;
  int rank_;
};

// A group of `size` ranks (1..kMaxCpuCommRanks): element r is rank r's communicator.
// InvalidArgument for a size out of range.
absl::StatusOr<std::vector<std::unique_ptr<CpuCommunicator>>> CreateCpuCommunicators(int size);

}  // namespace sambay

#endif  // SAMBAY_ENGINE_TP_CPU_COMMUNICATOR_H_
