#include "engine/tp/cpu_communicator.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/mutex.h"
#include "engine/dtype.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace sambay {
namespace {

enum class Op : uint8_t { kAllReduceSum, kAllGather, kBroadcast, kBarrier };

const char* OpName(Op op) {
  switch (op) {
    case Op::kAllReduceSum:
      return "AllReduceSum";
    case Op::kAllGather:
      return "AllGather";
    case Op::kBroadcast:
      return "Broadcast";
    case Op::kBarrier:
      return "Barrier";
  }
  return "?";
}

const char* DtypeName(CommDtype d) { return d == CommDtype::kF32 ? "f32" : "bf16"; }
size_t ElementBytes(CommDtype d) { return d == CommDtype::kF32 ? 4 : 2; }

// The arguments one rank passed to a collective.
struct Call {
  Op op = Op::kBarrier;
  const void* in = nullptr;  // AllGather input
  void* out = nullptr;       // AllReduceSum / Broadcast buffer, AllGather output
  size_t count = 0;
  CommDtype dtype = CommDtype::kF32;
  int root = 0;
};

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// Elements per block of the reduction loop (fp32 accumulator on the stack).
constexpr size_t kReduceBlock = 2048;
// Rank slices are multiples of this many elements (64 bytes of fp32), so two ranks never write
// the same cache line of a buffer except at its ends.
constexpr size_t kSliceAlign = 16;
constexpr int kSpinIterations = 256;

}  // namespace

class CpuCommGroup {
 public:
  explicit CpuCommGroup(int size) : size_(size), slots_(static_cast<size_t>(size)) {}

  int size() const { return size_; }

  absl::Status Run(int rank, const Call& call) {
    if (word_.load() & kAbortBit) return AbortStatus();
    if (size_ == 1) {
      slots_[0].call = call;
      absl::Status st = CheckCalls();
      if (st.ok()) Work(0);
      return st;
    }
    slots_[rank].call = call;
    if (!Wait(/*abortable=*/true)) return AbortStatus();
    // Every rank inspects the same published calls, so all reach the same verdict.
    absl::Status st = CheckCalls();
    if (st.ok()) Work(rank);
    // Not abortable: every rank passed the first barrier, so all come here in bounded time, and
    // no rank may return (and free its buffers) while another still works on them.
    Wait(/*abortable=*/false);
    return st;
  }

  void Abort(const absl::Status& why) ABSL_LOCKS_EXCLUDED(abort_mu_) {
    {
      MutexLock lock(&abort_mu_);
      if (abort_status_.ok()) {
        abort_status_ = why.ok() ? absl::AbortedError("communicator group aborted") : why;
      }
    }
    word_.fetch_or(kAbortBit);
    word_.notify_all();
  }

 private:
  // The barrier word: [abort flag:1][generation:22][ranks arrived:9]. One atomic word, so an
  // arrival, the completion (count -> 0, generation + 1) and a withdrawal are each one CAS.
  static constexpr uint32_t kAbortBit = 1u << 31;
  static constexpr int kCountBits = 9;  // up to 511 >= kMaxCpuCommRanks
  static constexpr uint32_t kCountMask = (1u << kCountBits) - 1;
  static constexpr uint32_t kGenMask = (kAbortBit - 1) & ~kCountMask;
  static_assert(kMaxCpuCommRanks <= static_cast<int>(kCountMask));
  static uint32_t Gen(uint32_t w) { return w & kGenMask; }

  absl::Status AbortStatus() ABSL_LOCKS_EXCLUDED(abort_mu_) {
    MutexLock lock(&abort_mu_);
    return abort_status_;
  }

  // Group barrier. A rank's writes before Wait() are visible to every rank after it returns
  // (every transition is a seq_cst RMW of the one word). Returns false only when `abortable`
  // and the group was aborted before the barrier completed: the rank then withdrew its arrival,
  // so the barrier never completes without it (all-or-nothing for the whole group).
  bool Wait(bool abortable) {
    uint32_t w = word_.load();
    uint32_t gen;
    for (;;) {
      if (abortable && (w & kAbortBit)) return false;
      const uint32_t count = (w & kCountMask) + 1;
      const bool last = count == static_cast<uint32_t>(size_);
      const uint32_t next = last ? (w & kAbortBit) | ((w + (1u << kCountBits)) & kGenMask) : w + 1;
      if (word_.compare_exchange_weak(w, next)) {
        if (last) {
          word_.notify_all();
          return true;
        }
        gen = Gen(w);
        break;
      }
    }
    for (int i = 0;; ++i) {
      w = word_.load();
      if (Gen(w) != gen) return true;
      if (abortable && (w & kAbortBit)) {
        // Withdraw the arrival unless the barrier completed meanwhile (then w changed).
        if (word_.compare_exchange_strong(w, w - 1)) return false;
        continue;
      }
      if (i < kSpinIterations) {
        CpuRelax();
      } else {
        word_.wait(w);
      }
    }
  }

  absl::Status CheckCalls() const {
    const Call& c0 = slots_[0].call;
    for (int r = 1; r < size_; ++r) {
      const Call& c = slots_[r].call;
      const auto who = [&] { return absl::StrCat("rank 0 called ", OpName(c0.op), ", rank ", r); };
      if (c.op != c0.op) {
        return absl::InternalError(
            absl::StrCat("collective mismatch: ", who(), " called ", OpName(c.op)));
      }
      if (c.count != c0.count) {
        return absl::InternalError(absl::StrCat("collective mismatch: ", who(), " passed count ",
                                                c.count, " instead of ", c0.count));
      }
      if (c.dtype != c0.dtype) {
        return absl::InternalError(absl::StrCat("collective mismatch: ", who(), " passed dtype ",
                                                DtypeName(c.dtype), " instead of ",
                                                DtypeName(c0.dtype)));
      }
      if (c.op == Op::kBroadcast && c.root != c0.root) {
        return absl::InternalError(absl::StrCat("collective mismatch: ", who(), " passed root ",
                                                c.root, " instead of ", c0.root));
      }
    }
    if (c0.op == Op::kBroadcast && (c0.root < 0 || c0.root >= size_)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Broadcast: root ", c0.root, " is outside [0, ", size_, ")"));
    }
    if (c0.count > std::numeric_limits<size_t>::max() / (ElementBytes(c0.dtype) * size_)) {
      return absl::InvalidArgumentError(
          absl::StrCat(OpName(c0.op), ": count ", c0.count, " is too large"));
    }
    if (c0.count == 0 || c0.op == Op::kBarrier) return absl::OkStatus();
    for (int r = 0; r < size_; ++r) {
      const Call& c = slots_[r].call;
      if (c.out == nullptr || (c.op == Op::kAllGather && c.in == nullptr)) {
        return absl::InvalidArgumentError(
            absl::StrCat(OpName(c.op), ": rank ", r, " passed a null buffer with count ", c.count));
      }
    }
    return absl::OkStatus();
  }

  void Work(int rank) {
    const Call& me = slots_[rank].call;
    const size_t bytes = me.count * ElementBytes(me.dtype);
    switch (me.op) {
      case Op::kAllReduceSum:
        if (size_ > 1) ReduceSlice(rank);
        break;
      case Op::kAllGather:
        for (int j = 0; j < size_; ++j) {
          const void* src = slots_[j].call.in;
          void* dst = static_cast<char*>(me.out) + j * bytes;
          if (src != dst && bytes > 0) std::memcpy(dst, src, bytes);
        }
        break;
      case Op::kBroadcast:
        if (rank != me.root && bytes > 0 && me.out != slots_[me.root].call.out) {
          std::memcpy(me.out, slots_[me.root].call.out, bytes);
        }
        break;
      case Op::kBarrier:
        break;
    }
  }

  // Sums rank `rank`'s slice of the elements over all ranks, in rank order, and writes the sum
  // into every rank's buffer.
  void ReduceSlice(int rank) {
    const size_t count = slots_[0].call.count;
    const CommDtype dtype = slots_[0].call.dtype;
    size_t per = (count + size_ - 1) / size_;
    per = (per + kSliceAlign - 1) / kSliceAlign * kSliceAlign;
    const size_t lo = std::min(count, static_cast<size_t>(rank) * per);
    const size_t hi = std::min(count, lo + per);
    float acc[kReduceBlock];
    for (size_t b = lo; b < hi; b += kReduceBlock) {
      const size_t m = std::min(kReduceBlock, hi - b);
      if (dtype == CommDtype::kF32) {
        const float* x0 = static_cast<const float*>(slots_[0].call.out) + b;
        for (size_t i = 0; i < m; ++i) acc[i] = x0[i];
        for (int r = 1; r < size_; ++r) {
          const float* x = static_cast<const float*>(slots_[r].call.out) + b;
          for (size_t i = 0; i < m; ++i) acc[i] += x[i];
        }
        for (int r = 0; r < size_; ++r) {
          std::memcpy(static_cast<float*>(slots_[r].call.out) + b, acc, m * sizeof(float));
        }
      } else {
        const uint16_t* x0 = static_cast<const uint16_t*>(slots_[0].call.out) + b;
        for (size_t i = 0; i < m; ++i) acc[i] = Bf16ToF32(x0[i]);
        for (int r = 1; r < size_; ++r) {
          const uint16_t* x = static_cast<const uint16_t*>(slots_[r].call.out) + b;
          for (size_t i = 0; i < m; ++i) acc[i] += Bf16ToF32(x[i]);
        }
        for (int r = 0; r < size_; ++r) {
          uint16_t* y = static_cast<uint16_t*>(slots_[r].call.out) + b;
          for (size_t i = 0; i < m; ++i) y[i] = F32ToBf16(acc[i]);
        }
      }
    }
  }

  // Immutable after construction.
  const int size_;

  std::atomic<uint32_t> word_{0};  // the barrier word (see Wait)

  Mutex abort_mu_;
  absl::Status abort_status_ ABSL_GUARDED_BY(abort_mu_);  // non-OK once aborted

  // slots_[r] is written only by rank r, before the first barrier of a collective, and read by
  // all ranks between the two barriers.
  struct alignas(64) Slot {
    Call call;
  };
  std::vector<Slot> slots_;
};

CpuCommunicator::CpuCommunicator(std::shared_ptr<CpuCommGroup> group, int rank)
    : group_(std::move(group)), rank_(rank) {
  SAMBAY_CHECK(group_ != nullptr && rank_ >= 0 && rank_ < group_->size());
}

CpuCommunicator::~CpuCommunicator() = default;

int CpuCommunicator::size() const { return group_->size(); }

absl::Status CpuCommunicator::AllReduceSum(void* buf, size_t count, CommDtype dtype) {
  Call c;
  c.op = Op::kAllReduceSum;
  c.out = buf;
  c.count = count;
  c.dtype = dtype;
  return group_->Run(rank_, c);
}

absl::Status CpuCommunicator::AllGather(const void* in, void* out, size_t count, CommDtype dtype) {
  Call c;
  c.op = Op::kAllGather;
  c.in = in;
  c.out = out;
  c.count = count;
  c.dtype = dtype;
  return group_->Run(rank_, c);
}

absl::Status CpuCommunicator::Broadcast(void* buf, size_t count, CommDtype dtype, int root) {
  Call c;
  c.op = Op::kBroadcast;
  c.out = buf;
  c.count = count;
  c.dtype = dtype;
  c.root = root;
  return group_->Run(rank_, c);
}

absl::Status CpuCommunicator::Barrier() {
  Call c;
  c.op = Op::kBarrier;
  return group_->Run(rank_, c);
}

void CpuCommunicator::Abort(const absl::Status& why) { group_->Abort(why); }

absl::StatusOr<std::vector<std::unique_ptr<CpuCommunicator>>> CreateCpuCommunicators(int size) {
  if (size < 1 || size > kMaxCpuCommRanks) {
    return absl::InvalidArgumentError(
        absl::StrCat("communicator group size must be in [1, ", kMaxCpuCommRanks, "], got ", size));
  }
  auto group = std::make_shared<CpuCommGroup>(size);
  std::vector<std::unique_ptr<CpuCommunicator>> out;
  for (int r = 0; r < size; ++r) out.push_back(std::make_unique<CpuCommunicator>(group, r));
  return out;
}

}  // namespace sambay
