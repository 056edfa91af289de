#include "engine/cuda/gemm.h"

#include <cstdint>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/cuda/kernels.h"

namespace sambay::cuda {

// Row-major y[M, N] = x[M, K] W[N, K]^T is column-major y^T[N, M] = op(A) B with A = W seen as
// column-major [K, N] (ld K) transposed, B = x seen as column-major [K, M] (ld lda).
struct GemmCache::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};

GemmCache::GemmCache() = default;
GemmCache::~GemmCache() = default;

namespace {

// Largest power of two (<= 256) dividing both the address and the row stride in bytes.
int Alignment(const void* p, int64_t ld_bytes) {
  const uint64_t v = reinterpret_cast<uintptr_t>(p) | static_cast<uint64_t>(ld_bytes) | 256u;
  return static_cast<int>(v & (~v + 1));
}

absl::Status Check(bool ok, const char* arg, const std::string& why) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("Gemm: ", arg, " ", why));
}

// The argument checks of Gemm, in order (lda / ldy already defaulted).
absl::Status ValidateGemm(const GemmArgs& a) {
  absl::Status s;
  if (!(s = Check(a.x != nullptr, "x", "is null")).ok()) return s;
  if (!(s = Check(a.w != nullptr, "w", "is null")).ok()) return s;
  if (!(s = Check(a.y != nullptr, "y", "is null")).ok()) return s;
  if (!(s = Check(a.M > 0 && a.N > 0 && a.K > 0, "M/N/K",
                  absl::StrCat("must be positive, got ", a.M, "/", a.N, "/", a.K)))
           .ok()) {
    return s;
  }
  if (!(s = Check(a.lda >= a.K, "lda", absl::StrCat(a.lda, " < K ", a.K))).ok()) return s;
  if (!(s = Check(a.ldy >= a.N, "ldy", absl::StrCat(a.ldy, " < N ", a.N))).ok()) return s;
  if (!(s = Check(a.beta == 0.0f || a.beta == 1.0f, "beta", "must be 0 or 1")).ok()) return s;
  if (!(s = Check(a.beta == 0.0f || a.out == GemmOut::kF32, "beta", "= 1 needs an fp32 output"))
           .ok()) {
    return s;
  }
  if (!(s = Check(a.M < (int64_t{1} << 31) && a.N < (int64_t{1} << 31) && a.K < (int64_t{1} << 31),
                  "M/N/K", "must be < 2^31"))
           .ok()) {
    return s;
  }
  return absl::OkStatus();
}

// Alignments (bytes) of x, w and y with their row strides: part of the plan key and of the
// algorithm search.
struct GemmAlignments {
  int x = 0;
  int w = 0;
  int y = 0;
};

// The operation descriptor (transposed W, fp32 compute) and matrix layouts of `plan`.
absl::Status DescribeGemm(const GemmArgs& a, GemmCache::Plan* plan) {
  SAMBAY_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  SAMBAY_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  SAMBAY_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const cudaDataType_t ct = a.out == GemmOut::kF32 ? CUDA_R_32F : CUDA_R_16BF;
  SAMBAY_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_16BF, a.K, a.N, a.K));
  SAMBAY_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_16BF, a.K, a.M, a.lda));
  SAMBAY_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->c, ct, a.N, a.M, a.ldy));
  return absl::OkStatus();
}

// The search preferences: workspace, reduction scheme and the operands' alignments (A = W,
// B = x, C = D = y). Stops at the first failure and returns its status.
cublasStatus_t SetPreferences(cublasLtMatmulPreference_t pref, size_t ws,
                              const GemmAlignments& al) {
  const uint32_t ua = static_cast<uint32_t>(al.w), ub = static_cast<uint32_t>(al.x),
                 uc = static_cast<uint32_t>(al.y);
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  // Split-K partial sums in fp32 only: the in-place and output-type schemes add the partials
  // in the output type, which for a bf16 output rounds every partial (seen on the H200: a
  // K = 2560 row off by 4.5 bf16 ulps, CudaOpsTest.GemmMatchesDoubleReference).
  const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                              &schemes, sizeof(schemes));
  }
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ua,
                                              sizeof(ua));
  }
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ub,
                                              sizeof(ub));
  }
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &uc,
                                              sizeof(uc));
  }
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &uc,
                                              sizeof(uc));
  }
  return st;
}

// Asks cuBLASLt's heuristic for the best algorithm of `plan` (described) into plan->algo;
// InternalError when it has none.
absl::Status ChooseAlgo(CudaContext& ctx, const GemmArgs& a, const GemmAlignments& al,
                        GemmCache::Plan* plan) {
  cublasLtMatmulPreference_t pref = nullptr;
  SAMBAY_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  cublasStatus_t st = SetPreferences(pref, ctx.workspace_bytes(), al);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulAlgoGetHeuristic(ctx.lt(), plan->op, plan->a, plan->b, plan->c, plan->c,
                                        pref, 1, &result, &found);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {  // the heuristic's way of saying "none": same error
    st = CUBLAS_STATUS_SUCCESS;
    found = 0;
  }
  SAMBAY_CUBLAS_RETURN_IF_ERROR(st);
  if (found == 0) {
    return absl::InternalError(absl::StrCat("Gemm: cuBLASLt has no algorithm for M=", a.M, " N=",
                                            a.N, " K=", a.K, " lda=", a.lda, " ldy=", a.ldy));
  }
  plan->algo = result.algo;
  return absl::OkStatus();
}

// The cached plan of `a`'s shape and alignments, made (described, algorithm chosen) on first use.
absl::StatusOr<const GemmCache::Plan*> FindPlan(CudaContext& ctx, GemmCache& cache,
                                                const GemmArgs& a) {
  const int out_size = a.out == GemmOut::kF32 ? 4 : 2;
  GemmAlignments al;
  al.x = Alignment(a.x, a.lda * 2);
  al.w = Alignment(a.w, a.K * 2);
  al.y = Alignment(a.y, a.ldy * out_size);
  const GemmCache::Key key{a.M,  a.N,  a.K, a.lda, a.ldy, static_cast<int>(a.out), a.beta != 0.0f,
                           al.x, al.w, al.y};
  auto it = cache.plans().find(key);
  if (it == cache.plans().end()) {
    auto plan = std::make_unique<GemmCache::Plan>();
    SAMBAY_RETURN_IF_ERROR(DescribeGemm(a, plan.get()));
    SAMBAY_RETURN_IF_ERROR(ChooseAlgo(ctx, a, al, plan.get()));
    it = cache.plans().emplace(key, std::move(plan)).first;
  }
  return it->second.get();
}

}  // namespace

absl::Status Gemm(CudaContext& ctx, GemmCache& cache, const GemmArgs& in) {
  GemmArgs a = in;
  if (a.lda == 0) a.lda = a.K;
  if (a.ldy == 0) a.ldy = a.N;
  SAMBAY_RETURN_IF_ERROR(ValidateGemm(a));
  // Batch-1 decode with a wide W: the engine's GEMV reads W once in one launch, where cuBLASLt
  // picks split-K tiles plus a reduce kernel (gemm.h kGemvMinColumns).
  if (a.M == 1 && a.N >= kGemvMinColumns) {
    const cudaError_t e =
        LaunchGemv(a.x, a.K, a.w, a.N, a.y, a.out == GemmOut::kF32, a.beta != 0.0f, ctx.stream());
    if (e != cudaSuccess) return CudaStatus(e, "Gemm: LaunchGemv");
    return absl::OkStatus();
  }
  SAMBAY_ASSIGN_OR_RETURN(const GemmCache::Plan* plan, FindPlan(ctx, cache, a));
  const GemmCache::Plan& p = *plan;
  const float alpha = 1.0f;
  SAMBAY_CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(ctx.lt(), p.op, &alpha, a.w, p.a, a.x, p.b, &a.beta,
                                               a.y, p.c, a.y, p.c, &p.algo, ctx.workspace(),
                                               ctx.workspace_bytes(), ctx.stream()));
  return absl::OkStatus();
}

}  // namespace sambay::cuda
