// CUDA ops (engine/cuda/ops.h, gemm.h) against the CPU ops (engine/cpu/*, DiffAttendRow) or a
// plain reference loop, on random inputs at odd sizes with per-dtype tolerances. Outputs are
// poisoned (NaN) before each launch so an unwritten element fails. Fixed seeds.
// Every test skips without a CUDA device.
#include "engine/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/attention.h"
#include "engine/config.h"
#include "engine/cpu/vec.h"
#include "engine/cuda/gemm.h"
#include "engine/cuda/ops.h"
#include "engine/weights.h"
#include "tests/cuda/cuda_test_util.h"

namespace sambay::cuda {
namespace {

using testing::AllClose;
using testing::Bf;
using testing::Download;
using testing::DownloadBf16;
using testing::kBf16Rtol;
using testing::Poisoned;
using testing::RandBf16;
using testing::RandF32;
using testing::RelErr;
using testing::Upload;

using testing::DevSegs;
using testing::MakeSegs;

TEST(CudaOpsTest, LayerNormMatchesCpu) {
  SAMBAY_REQUIRE_GPU();
  std::mt19937_64 rng(11);
  for (int64_t dim : {1, 37, 333, 2560}) {
    const int64_t rows = 7;
    std::vector<uint16_t> bits;
    std::vector<float> x = RandBf16(rows * dim, rng, 3.0f, &bits);  // bf16-exact inputs
    for (int64_t i = 0; i < rows * dim; i += 3) x[i] += 1.5f;       // non-zero mean
    for (auto& v : x) v = Bf16ToF32(F32ToBf16(v));
    std::vector<float> w = RandF32(dim, rng, 0.5f, 1.5f), b = RandF32(dim, rng, -0.5f, 0.5f);
    std::vector<float> ref(rows * dim);
    cpu::LayerNorm(x.data(), rows, dim, w.data(), b.data(), 1e-5, ref.data());
    DeviceBuffer dx = Upload(x), dw = Upload(w), db = Upload(b),
                 dy = Poisoned<uint16_t>(rows * dim);
    ASSERT_TRUE(
        LayerNorm(nullptr, dx.as<float>(), rows, dim, dw.as<float>(), db.as<float>(), 1e-5f, Bf(dy))
            .ok());
    if (dim == 1) {  // variance 0: output is the bias
      EXPECT_TRUE(AllClose(DownloadBf16(dy, rows * dim), ref, 1e-2, kBf16Rtol));
    } else {
      EXPECT_TRUE(AllClose(DownloadBf16(dy, rows * dim), ref, 2e-3, 2 * kBf16Rtol))
          << "dim " << dim;
    }
  }
}

TEST(CudaOpsTest, EmbeddingIsExact) {
  SAMBAY_REQUIRE_GPU();
  std::mt19937_64 rng(12);
  const int64_t vocab = 101, dim = 77;
  std::vector<uint16_t> bits;
  std::vector<float> table = RandBf16(vocab * dim, rng, 1.0f, &bits);
  std::vector<int32_t> ids = {0, 100, 5, 5, 63};
  DeviceBuffer dt = Upload(bits), di = Upload(ids), dx = Poisoned<float>(ids.size() * dim);
  ASSERT_TRUE(Embedding(nullptr, Bf(dt), vocab, dim, ids, di.as<int32_t>(), dx.as<float>()).ok());
  std::vector<float> got = Download<float>(dx, ids.size() * dim);
  for (size_t r = 0; r < ids.size(); ++r) {
    for (int64_t j = 0; j < dim; ++j) ASSERT_EQ(got[r * dim + j], table[ids[r] * dim + j]);
  }
}

// Reference conv over segments (engine/mamba.cc semantics), states [slots, K-1, di] float.
void RefConv(const std::vector<float>& x, int64_t ldx, const Segments& s, std::vector<float>& st,
             const std::vector<float>& w, const std::vector<float>& b, int64_t di, int K,
             std::vector<float>& y) {
  for (const SegDev& d : s.host) {
    float* conv = st.data() + d.slot * (K - 1) * di;
    for (int64_t t = 0; t < d.len; ++t) {
      for (int64_t c = 0; c < di; ++c) {
        double acc = b[c];
        for (int k = 0; k < K; ++k) {
          const int64_t src = t - (K - 1) + k;
          const float v = src >= 0 ? x[(d.row0 + src) * ldx + c] : conv[(t + k) * di + c];
          acc += static_cast<double>(w[c * K + k]) * v;
        }
        y[(d.row0 + t) * di + c] = cpu::Silu(static_cast<float>(acc));
      }
    }
    for (int j = 0; j < K - 1; ++j) {
      const int64_t src = d.len - (K - 1) + j;
      for (int64_t c = 0; c < di; ++c) {
        conv[j * di + c] = src >= 0 ? x[(d.row0 + src) * ldx + c] : conv[(j + d.len) * di + c];
      }
    }
  }
}

TEST(CudaOpsTest, CausalConv1dPrefillAndUpdateMatchReference) {
  SAMBAY_REQUIRE_GPU();
  std::mt19937_64 rng(13);
  const int64_t di = 37, ldx = 2 * di + 3, slots = 4;
  const int K = 4;
  for (bool update : {false, true}) {
    SCOPED_TRACE(update ? "update" : "prefill");
    DevSegs ds;
    if (update) {
      MakeSegs({2, 0, 3}, {9, 1, 0}, {1, 1, 1}, &ds);
    } else {
      MakeSegs({2, 0, 3}, {4, 0, 11}, {5, 1, 9}, &ds);
    }
    const int64_t rows = ds.s.rows();
    std::vector<uint16_t> xb, sb;
    std::vector<float> x = RandBf16(rows * ldx, rng, 2.0f, &xb);
    std::vector<float> st = RandBf16(slots * (K - 1) * di, rng, 2.0f, &sb);
    std::vector<float> w = RandF32(di * K, rng, -0.5f, 0.5f), b = RandF32(di, rng, -0.2f, 0.2f);
    DeviceBuffer dx = Upload(xb), dst = Upload(sb), dw = Upload(w), dbias = Upload(b);
    DeviceBuffer dy = Poisoned<uint16_t>(rows * di);
    std::vector<int32_t> sl;
    for (const SegDev& d : ds.s.host) sl.push_back(d.slot);
    DeviceBuffer dsl = Upload(sl);
    ConvArgs a;
    a.x = Bf(dx);
    a.ldx = ldx;
    a.conv_state = Bf(dst);
    a.w = dw.as<float>();
    a.bias = dbias.as<float>();
    a.di = di;
    a.K = K;
    a.y = Bf(dy);
    if (update) {
      a.slots = dsl.as<int32_t>();
      ASSERT_TRUE(CausalConv1dUpdate(nullptr, a, sl, slots).ok());
    } else {
      ASSERT_TRUE(CausalConv1d(nullptr, a, ds.s, slots).ok());
    }
    std::vector<float> ref_y(rows * di);
    RefConv(x, ldx, ds.s, st, w, b, di, K, ref_y);
    EXPECT_TRUE(AllClose(DownloadBf16(dy, rows * di), ref_y, 1e-3, kBf16Rtol));
    EXPECT_TRUE(AllClose(DownloadBf16(dst, st.size()), st, 0, 0));  // copies: exact
  }
}

// Reference scan over segments with cpu::ScanStep; state fp32 [slots, di, S].
void RefScan(const Segments& s, int64_t di, int S, int64_t R, const std::vector<float>& xc,
             const std::vector<float>& dt, const std::vector<float>& dt_bias,
             const std::vector<float>& A, const std::vector<float>& bc, int64_t ld_bc,
             const std::vector<float>& D, const std::vector<float>& z, int64_t ldz,
             std::vector<float>& state, std::vector<float>& yg, std::vector<float>& mem) {
  std::vector<float> delta(di), y(di);
  for (const SegDev& d : s.host) {
    float* h = state.data() + d.slot * di * S;
    for (int64_t t = 0; t < d.len; ++t) {
      const int64_t r = d.row0 + t;
      for (int64_t c = 0; c < di; ++c) delta[c] = cpu::Softplus(dt[r * di + c] + dt_bias[c]);
      cpu::ScanStep(0, di, S, delta.data(), A.data(), bc.data() + r * ld_bc + R,
                    bc.data() + r * ld_bc + R + S, D.data(), xc.data() + r * di, h, y.data());
      for (int64_t c = 0; c < di; ++c) {
        mem[r * di + c] = y[c];
        yg[r * di + c] = y[c] * cpu::Silu(z[r * ldz + c]);
      }
    }
  }
}

TEST(CudaOpsTest, SelectiveScanMatchesCpuScanStep) {
  SAMBAY_REQUIRE_GPU();
  std::mt19937_64 rng(14);
  const int64_t slots = 5, R = 7;
  for (int S : {16, 5}) {
    for (bool state_bf16 : {false, true}) {
      for (bool update : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << "S=" << S << " bf16 state=" << state_bf16 << " update=" << update);
        const int64_t di = 45, ld_bc = R + 2 * S + 1, ldz = 2 * di;
        DevSegs ds;
        if (update) {
          MakeSegs({4, 1}, {3, 8}, {1, 1}, &ds);
        } else {
          MakeSegs({4, 1, 0}, {0, 8, 2}, {6, 1, 13}, &ds);
        }
        const int64_t rows = ds.s.rows();
        std::vector<uint16_t> xcb, bcb, zb;
        std::vector<float> xc = RandBf16(rows * di, rng, 2.0f, &xcb);
        std::vector<float> bc = RandBf16(rows * ld_bc, rng, 1.0f, &bcb);
        std::vector<float> z = RandBf16(rows * ldz, rng, 3.0f, &zb);
        std::vector<float> dt = RandF32(rows * di, rng, -6.0f, 1.0f);
        std::vector<float> dt_bias = RandF32(di, rng, -1.0f, 1.0f);
        std::vector<float> A(di * S), D = RandF32(di, rng, 0.5f, 1.5f);
        for (int64_t c = 0; c < di; ++c) {
          for (int n = 0; n < S; ++n) A[c * S + n] = -static_cast<float>(n + 1);
        }
        std::vector<float> state = RandF32(slots * di * S, rng, -1.0f, 1.0f);
        std::vector<uint16_t> state_bits(state.size());
        for (size_t i = 0; i < state.size(); ++i) {
          state_bits[i] = F32ToBf16(state[i]);
          if (state_bf16) state[i] = Bf16ToF32(state_bits[i]);
        }
        DeviceBuffer dxc = Upload(xcb), dbc = Upload(bcb), dz = Upload(zb), ddt = Upload(dt),
                     ddb = Upload(dt_bias), dA = Upload(A), dD = Upload(D);
        DeviceBuffer dstate = state_bf16 ? Upload(state_bits) : Upload(state);
        DeviceBuffer dy = Poisoned<uint16_t>(rows * di), dm = Poisoned<uint16_t>(rows * di);
        std::vector<int32_t> sl;
        for (const SegDev& d : ds.s.host) sl.push_back(d.slot);
        DeviceBuffer dsl = Upload(sl);
        ScanArgs a;
        a.xc = Bf(dxc);
        a.dt = ddt.as<float>();
        a.dt_bias = ddb.as<float>();
        a.A = dA.as<float>();
        a.bc = Bf(dbc);
        a.ld_bc = ld_bc;
        a.b_off = R;
        a.D = dD.as<float>();
        a.z = Bf(dz);
        a.ldz = ldz;
        a.state = dstate.data();
        a.state_bf16 = state_bf16;
        a.di = di;
        a.S = S;
        a.y_gated = Bf(dy);
        a.memory = Bf(dm);
        a.slots = dsl.as<int32_t>();
        ASSERT_TRUE(SelectiveScan(nullptr, a, update ? nullptr : &ds.s, sl, slots).ok());
        std::vector<float> yg(rows * di), mem(rows * di);
        RefScan(ds.s, di, S, R, xc, dt, dt_bias, A, bc, ld_bc, D, z, ldz, state, yg, mem);
        EXPECT_TRUE(AllClose(DownloadBf16(dy, rows * di), yg, 1e-3, 2 * kBf16Rtol));
        EXPECT_TRUE(AllClose(DownloadBf16(dm, rows * di), mem, 1e-3, 2 * kBf16Rtol));
        std::vector<float> got_state =
            state_bf16 ? DownloadBf16(dstate, state.size()) : Download<float>(dstate, state.size());
        EXPECT_TRUE(AllClose(got_state, state, 1e-4, state_bf16 ? 2 * kBf16Rtol : 1e-4));
      }
    }
  }
}

TEST(CudaOpsTest, ElementwiseOpsMatchCpu) {
  SAMBAY_REQUIRE_GPU();
  std::mt19937_64 rng(15);
  const int64_t rows = 3, n = 1001;
  std::vector<uint16_t> inb, mb;
  std::vector<float> in = RandBf16(rows * 2 * n, rng, 4.0f, &inb);
  std::vector<float> m = RandBf16(rows * n, rng, 2.0f, &mb);
  DeviceBuffer din = Upload(inb), dm = Upload(mb), dout = Poisoned<uint16_t>(rows * n);
  // SwiGLU
  ASSERT_TRUE(SwiGlu(nullptr, Bf(din), rows, n, Bf(dout)).ok());
  std::vector<float> ref(rows * n);
  cpu::SwiGluRows(in.data(), rows, n, ref.data());
  EXPECT_TRUE(AllClose(DownloadBf16(dout, rows * n), ref, 1e-6, kBf16Rtol));
  // GMU gate: silu(g) * m over the first rows*n inputs
  ASSERT_TRUE(GmuGate(nullptr, Bf(din), Bf(dm), rows * n, Bf(dout)).ok());
  for (int64_t i = 0; i < rows * n; ++i) ref[i] = cpu::Silu(in[i]) * m[i];
  EXPECT_TRUE(AllClose(DownloadBf16(dout, rows * n), ref, 1e-6, kBf16Rtol));
  // Bias to bf16, add bias
  std::vector<float> f = RandF32(rows * n, rng, -3, 3), bias = RandF32(n, rng, -1, 1);
  DeviceBuffer df = Upload(f), dbias = Upload(bias);
  ASSERT_TRUE(BiasToBf16(nullptr, df.as<float>(), rows, n, dbias.as<float>(), Bf(dout)).ok());
  for (int64_t i = 0; i < rows * n; ++i) ref[i] = f[i] + bias[i % n];
  EXPECT_TRUE(AllClose(DownloadBf16(dout, rows * n), ref, 1e-6, kBf16Rtol));
  ASSERT_TRUE(AddBias(nullptr, df.as<float>(), rows, n, dbias.as<float>()).ok());
  EXPECT_TRUE(AllClose(Download<float>(df, rows * n), ref, 1e-6, 1e-6));
  // Gather rows, 4-byte and 2-byte elements
  std::vector<int32_t> idx = {2, 0, 2};
  DeviceBuffer didx = Upload(idx), dg4 = Poisoned<float>(3 * n), dg2 = Poisoned<uint16_t>(3 * n);
  ASSERT_TRUE(
      GatherRows(nullptr, df.data(), rows, n, true, idx, didx.as<int32_t>(), dg4.data()).ok());
  ASSERT_TRUE(
      GatherRows(nullptr, dm.data(), rows, n, false, idx, didx.as<int32_t>(), dg2.data()).ok());
  std::vector<float> g4 = Download<float>(dg4, 3 * n), g2 = DownloadBf16(dg2, 3 * n);
  for (int i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      ASSERT_EQ(g4[i * n + j], ref[idx[i] * n + j]);
      ASSERT_EQ(g2[i * n + j], m[idx[i] * n + j]);
    }
  }
}

TEST(CudaOpsTest, GemmMatchesDoubleReference) {
  static_assert(kGemvMinColumns == 1024, "update the shapes below");
  SAMBAY_REQUIRE_GPU();
  auto ctx = CudaContext::Create(0);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  GemmCache cache;
  std::mt19937_64 rng(16);
  struct Shape {
    int64_t M, N, K, lda, ldy;
  };
  // Through Gemm: the first five go to cuBLASLt; the last three (M = 1, N >= kGemvMinColumns)
  // to the engine's GEMV kernel: its scalar path (K = 77, lda = 81) and its 16-byte path.
  for (const Shape& s : {Shape{1, 51, 77, 77, 51}, Shape{13, 64, 128, 130, 70},
                         Shape{300, 257, 96, 96, 257}, Shape{8, 1000, 2560, 2560, 1000},
                         Shape{8, 4096, 2560, 2560, 4100}, Shape{1, 2051, 77, 81, 2051},
                         Shape{1, 1536, 256, 264, 1600}, Shape{1, 1024, 5120, 5120, 1032}}) {
    for (GemmOut out : {GemmOut::kBf16, GemmOut::kF32}) {
      for (float beta : {0.0f, 1.0f}) {
        if (beta != 0 && out != GemmOut::kF32) continue;
        SCOPED_TRACE(::testing::Message() << "M=" << s.M << " N=" << s.N << " K=" << s.K
                                          << " f32=" << (out == GemmOut::kF32) << " beta=" << beta);
        std::vector<uint16_t> xb, wb;
        std::vector<float> x = RandBf16(s.M * s.lda, rng, 1.0f, &xb);
        std::vector<float> w = RandBf16(s.N * s.K, rng, 1.0f, &wb);
        std::vector<float> y0 = RandF32(s.M * s.ldy, rng, -1, 1);
        std::vector<float> ref(s.M * s.N);
        for (int64_t m = 0; m < s.M; ++m) {
          for (int64_t n = 0; n < s.N; ++n) {
            double acc = beta != 0 ? y0[m * s.ldy + n] : 0.0;
            for (int64_t k = 0; k < s.K; ++k) {
              acc += static_cast<double>(x[m * s.lda + k]) * w[n * s.K + k];
            }
            ref[m * s.N + n] = static_cast<float>(acc);
          }
        }
        DeviceBuffer dx = Upload(xb), dw = Upload(wb);
        DeviceBuffer dy = out == GemmOut::kF32
                              ? (beta != 0 ? Upload(y0) : Poisoned<float>(s.M * s.ldy))
                              : Poisoned<uint16_t>(s.M * s.ldy);
        GemmArgs a;
        a.x = Bf(dx);
        a.lda = s.lda;
        a.M = s.M;
        a.K = s.K;
        a.w = Bf(dw);
        a.N = s.N;
        a.y = dy.data();
        a.out = out;
        a.ldy = s.ldy;
        a.beta = beta;
        const absl::Status st = Gemm(**ctx, cache, a);
        if (!st.ok() && (s.K * 2) % 16 != 0) {
          // A row stride that is not 16-byte aligned may have no cuBLASLt algorithm: then the
          // error must say so and name the shape (the engine's shapes are all aligned).
          std::printf("Gemm M=%lld N=%lld K=%lld: %s\n", (long long)s.M, (long long)s.N,
                      (long long)s.K, st.ToString().c_str());
          EXPECT_NE(st.message().find("no algorithm"), std::string::npos) << st;
          EXPECT_NE(st.message().find(absl::StrCat("K=", s.K)), std::string::npos) << st;
          continue;
        }
        ASSERT_TRUE(st.ok()) << st;
        std::vector<float> full =
            out == GemmOut::kF32 ? Download<float>(dy, s.M * s.ldy) : DownloadBf16(dy, s.M * s.ldy);
        std::vector<float> got(s.M * s.N);
        for (int64_t m = 0; m < s.M; ++m) {
          for (int64_t n = 0; n < s.N; ++n) got[m * s.N + n] = full[m * s.ldy + n];
        }
        const double err = RelErr(got, ref);
        EXPECT_LT(err, out == GemmOut::kF32 ? 1e-5 : 5e-3);
        EXPECT_TRUE(AllClose(got, ref, 1e-3 * std::sqrt(static_cast<double>(s.K)),
                             out == GemmOut::kF32 ? 1e-4 : kBf16Rtol));
      }
    }
  }
}

}  // namespace
}  // namespace sambay::cuda
