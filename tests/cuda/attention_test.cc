// CUDA differential attention (ring, blocks, split-K), K/V stores and sampling against the CPU
// DiffAttendRow and plain reference loops. Every test skips without a CUDA device.
#include "engine/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "engine/config.h"
#include "engine/cuda/ops.h"
#include "engine/sampler.h"
#include "engine/weights.h"
#include "tests/cuda/cuda_test_util.h"

namespace sambay::cuda {
namespace {

using testing::AllClose;
using testing::Bf;
using testing::Download;
using testing::DownloadBf16;
using testing::Poisoned;
using testing::RandBf16;
using testing::RandF32;
using testing::RelErr;
using testing::Upload;

using testing::DevSegs;
using testing::MakeSegs;

struct AttnCase {
  int H, G, hd;
  int64_t window;
  int splits;
};

// Blocks source (global / cross layers), optionally windowed, with split-K.
void CheckBlocks(const AttnCase& tc, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "H=" << tc.H << " G=" << tc.G << " hd=" << tc.hd
                                    << " window=" << tc.window << " splits=" << tc.splits);
  std::mt19937_64 rng(seed);
  const int64_t qd = tc.H * tc.hd, kvd = tc.G * tc.hd, ldq = qd + 5;
  const int64_t slots = 3, BT = 8, max_blocks = 6, nblocks = 20;
  std::vector<int32_t> perm(nblocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> table(slots * max_blocks);
  for (size_t i = 0; i < table.size(); ++i) table[i] = perm[i % nblocks];
  for (int64_t b = 0; b < max_blocks; ++b) table[0 * max_blocks + b] = -1;  // slot 0 unused
  std::vector<uint16_t> kb, vb, qb;
  std::vector<float> kp = RandBf16(nblocks * BT * kvd, rng, 1.5f, &kb);
  std::vector<float> vp = RandBf16(nblocks * BT * kvd, rng, 1.0f, &vb);
  DevSegs ds;
  MakeSegs({1, 2}, {19, 0}, {3, 5}, &ds);
  const int64_t rows = ds.s.rows();
  std::vector<float> q = RandBf16(rows * ldq, rng, 1.5f, &qb);

  ModelConfig c;
  c.num_heads = tc.H;
  c.num_kv_heads = tc.G;
  c.head_dim = tc.hd;
  AttentionWeights w;
  w.subln = RandF32(2 * tc.hd, rng, 0.5f, 1.5f);
  w.lambda = 0.37f;
  w.lambda_init = 0.2f;

  DeviceBuffer dk = Upload(kb), dv = Upload(vb), dq = Upload(qb), dt = Upload(table),
               dsub = Upload(w.subln);
  DeviceBuffer dout = Poisoned<uint16_t>(rows * qd);
  const int64_t pbytes = DiffAttentionWorkspaceBytes(rows, tc.H, tc.hd, tc.splits);
  DeviceBuffer dpart = Poisoned<float>(pbytes / 4);
  AttnArgs a;
  a.source = KvSource::kBlocks;
  a.q = Bf(dq);
  a.ldq = ldq;
  a.window = tc.window;
  a.k_pool = Bf(dk);
  a.v_pool = Bf(dv);
  a.block_table = dt.as<int32_t>();
  a.max_blocks = max_blocks;
  a.block_tokens = BT;
  a.num_heads = tc.H;
  a.num_kv_heads = tc.G;
  a.head_dim = tc.hd;
  a.scale = 1.0f / std::sqrt(static_cast<float>(tc.hd));
  a.lambda = w.lambda;
  a.lambda_init = w.lambda_init;
  a.subln = dsub.as<float>();
  a.partial = dpart.as<float>();
  a.splits = tc.splits;
  a.out = Bf(dout);
  a.ldo = qd;
  absl::Status st = DiffAttention(nullptr, a, ds.s, slots, table, nblocks, pbytes);
  ASSERT_TRUE(st.ok()) << st;

  std::vector<float> ref(rows * qd);
  for (const SegDev& d : ds.s.host) {
    for (int64_t t = 0; t < d.len; ++t) {
      const int64_t r = d.row0 + t, p = d.start + t;
      const int64_t lo = tc.window > 0 ? std::max<int64_t>(0, p - tc.window + 1) : 0;
      std::vector<const float*> krows, vrows;
      for (int64_t pos = lo; pos <= p; ++pos) {
        const int64_t off = (table[d.slot * max_blocks + pos / BT] * BT + pos % BT) * kvd;
        krows.push_back(kp.data() + off);
        vrows.push_back(vp.data() + off);
      }
      std::vector<float> scratch(krows.size() + 4 * tc.hd);
      for (int pair = 0; pair < tc.H / 2; ++pair) {
        DiffAttendRow(c, w, q.data() + r * ldq, krows.data(), vrows.data(),
                      static_cast<int64_t>(krows.size()), pair, ref.data() + r * qd,
                      scratch.data());
      }
    }
  }
  const std::vector<float> got = DownloadBf16(dout, rows * qd);
  EXPECT_LT(RelErr(got, ref), 5e-3);
  EXPECT_TRUE(AllClose(got, ref, 2e-2, 2e-2));
}

TEST(CudaAttentionTest, BlocksMatchCpuDiffAttendRow) {
  SAMBAY_REQUIRE_GPU();
  uint64_t seed = 21;
  for (const AttnCase& tc :
       {AttnCase{8, 4, 20, 0, 1}, AttnCase{8, 4, 20, 0, 3}, AttnCase{8, 2, 16, 0, 7},
        AttnCase{4, 2, 128, 0, 2}, AttnCase{8, 4, 20, 6, 1}, AttnCase{4, 4, 64, 5, 4}}) {
    CheckBlocks(tc, seed++);
  }
}

// Ring source (SWA): positions before the segment from the ring, the rest from the new rows.
TEST(CudaAttentionTest, RingMatchesCpuDiffAttendRow) {
  SAMBAY_REQUIRE_GPU();
  std::mt19937_64 rng(31);
  for (int splits : {1, 2}) {
    const int H = 8, G = 4, hd = 24;
    const int64_t W = 6, qd = H * hd, kvd = G * hd, ld = qd + 2 * kvd, slots = 2;
    DevSegs ds;
    MakeSegs({0, 1}, {10, 2}, {4, 9}, &ds);
    const int64_t rows = ds.s.rows();
    std::vector<uint16_t> rkb, rvb, qkvb;
    std::vector<float> rk = RandBf16(slots * W * kvd, rng, 1.5f, &rkb);
    std::vector<float> rv = RandBf16(slots * W * kvd, rng, 1.0f, &rvb);
    std::vector<float> qkv = RandBf16(rows * ld, rng, 1.5f, &qkvb);
    ModelConfig c;
    c.num_heads = H;
    c.num_kv_heads = G;
    c.head_dim = hd;
    AttentionWeights w;
    w.subln = RandF32(2 * hd, rng, 0.5f, 1.5f);
    w.lambda = 0.61f;
    w.lambda_init = 0.35f;
    DeviceBuffer drk = Upload(rkb), drv = Upload(rvb), dqkv = Upload(qkvb), dsub = Upload(w.subln);
    DeviceBuffer dout = Poisoned<uint16_t>(rows * qd);
    const int64_t pbytes = DiffAttentionWorkspaceBytes(rows, H, hd, splits);
    DeviceBuffer dpart = Poisoned<float>(pbytes / 4);
    AttnArgs a;
    a.source = KvSource::kRing;
    a.q = Bf(dqkv);
    a.ldq = ld;
    a.knew = Bf(dqkv) + qd;
    a.vnew = Bf(dqkv) + qd + kvd;
    a.ld_new = ld;
    a.k_ring = Bf(drk);
    a.v_ring = Bf(drv);
    a.window = W;
    a.num_heads = H;
    a.num_kv_heads = G;
    a.head_dim = hd;
    a.scale = 1.0f / std::sqrt(static_cast<float>(hd));
    a.lambda = w.lambda;
    a.lambda_init = w.lambda_init;
    a.subln = dsub.as<float>();
    a.partial = dpart.as<float>();
    a.splits = splits;
    a.out = Bf(dout);
    a.ldo = qd;
    absl::Status st = DiffAttention(nullptr, a, ds.s, slots, {}, 0, pbytes);
    ASSERT_TRUE(st.ok()) << st;
    std::vector<float> ref(rows * qd);
    for (const SegDev& d : ds.s.host) {
      for (int64_t t = 0; t < d.len; ++t) {
        const int64_t r = d.row0 + t, p = d.start + t;
        std::vector<const float*> krows, vrows;
        for (int64_t pos = std::max<int64_t>(0, p - W + 1); pos <= p; ++pos) {
          if (pos >= d.start) {
            const float* row = qkv.data() + (d.row0 + pos - d.start) * ld;
            krows.push_back(row + qd);
            vrows.push_back(row + qd + kvd);
          } else {
            krows.push_back(rk.data() + (d.slot * W + pos % W) * kvd);
            vrows.push_back(rv.data() + (d.slot * W + pos % W) * kvd);
          }
        }
        std::vector<float> scratch(krows.size() + 4 * hd);
        for (int pair = 0; pair < H / 2; ++pair) {
          DiffAttendRow(c, w, qkv.data() + r * ld, krows.data(), vrows.data(),
                        static_cast<int64_t>(krows.size()), pair, ref.data() + r * qd,
                        scratch.data());
        }
      }
    }
    const std::vector<float> got = DownloadBf16(dout, rows * qd);
    EXPECT_LT(RelErr(got, ref), 5e-3) << "splits " << splits;
    EXPECT_TRUE(AllClose(got, ref, 2e-2, 2e-2)) << "splits " << splits;
  }
}

TEST(CudaAttentionTest, KvStoresPutRowsWhereTheBelong) {
  SAMBAY_REQUIRE_GPU();
  std::mt19937_64 rng(41);
  const int64_t kvd = 12, k_off = 7, ld = k_off + 2 * kvd + 3, slots = 3, BT = 4, max_blocks = 5;
  const int64_t nblocks = 15, W = 5;
  DevSegs ds;
  MakeSegs({2, 0}, {6, 0}, {3, 11}, &ds);
  const int64_t rows = ds.s.rows();
  std::vector<uint16_t> qb;
  std::vector<float> qkv = RandBf16(rows * ld, rng, 1.0f, &qb);
  std::vector<int32_t> table(slots * max_blocks);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>((i * 7) % nblocks);
  DeviceBuffer dq = Upload(qb), dt = Upload(table);
  DeviceBuffer kpool = Poisoned<uint16_t>(nblocks * BT * kvd),
               vpool = Poisoned<uint16_t>(nblocks * BT * kvd);
  KvStoreArgs a;
  a.qkv = Bf(dq);
  a.ld = ld;
  a.k_off = k_off;
  a.kvd = kvd;
  a.k_pool = Bf(kpool);
  a.v_pool = Bf(vpool);
  a.block_table = dt.as<int32_t>();
  a.max_blocks = max_blocks;
  a.block_tokens = BT;
  ASSERT_TRUE(StoreKvBlocks(nullptr, a, ds.s, slots, table, nblocks).ok());
  DeviceBuffer kring = Poisoned<uint16_t>(slots * W * kvd),
               vring = Poisoned<uint16_t>(slots * W * kvd);
  a.k_ring = Bf(kring);
  a.v_ring = Bf(vring);
  a.window = W;
  ASSERT_TRUE(StoreKvRing(nullptr, a, ds.s, slots).ok());
  const std::vector<float> kp = DownloadBf16(kpool, nblocks * BT * kvd);
  const std::vector<float> vp = DownloadBf16(vpool, nblocks * BT * kvd);
  const std::vector<float> kr = DownloadBf16(kring, slots * W * kvd);
  const std::vector<float> vr = DownloadBf16(vring, slots * W * kvd);
  for (const SegDev& d : ds.s.host) {
    for (int64_t t = 0; t < d.len; ++t) {
      const int64_t p = d.start + t;
      const float* src = qkv.data() + (d.row0 + t) * ld + k_off;
      const int64_t off = (table[d.slot * max_blocks + p / BT] * BT + p % BT) * kvd;
      const bool in_ring = t >= d.len - W;
      const int64_t roff = (d.slot * W + p % W) * kvd;
      for (int64_t j = 0; j < kvd; ++j) {
        ASSERT_EQ(kp[off + j], src[j]);
        ASSERT_EQ(vp[off + j], src[kvd + j]);
        if (in_ring) {
          ASSERT_EQ(kr[roff + j], src[j]);
          ASSERT_EQ(vr[roff + j], src[kvd + j]);
        }
      }
    }
  }
}

TEST(CudaSamplingTest, ArgmaxTiesGoToLowestId) {
  SAMBAY_REQUIRE_GPU();
  std::mt19937_64 rng(51);
  const int64_t rows = 4, vocab = 5003;
  std::vector<float> x = RandF32(rows * vocab, rng, -5, 5);
  x[0 * vocab + 17] = 9;
  x[0 * vocab + 4000] = 9;
  x[1 * vocab + 5002] = 7;
  x[2 * vocab + 0] = 8;
  x[2 * vocab + 1] = 8;
  // Row 3: NaN never wins; the host's rule (GreedyToken) is the reference for every row.
  x[3 * vocab + 0] = NAN;
  x[3 * vocab + 9] = NAN;
  x[3 * vocab + 4444] = 50;
  DeviceBuffer dx = Upload(x), dout = Poisoned<int32_t>(rows);
  ASSERT_TRUE(Argmax(nullptr, dx.as<float>(), rows, vocab, dout.as<int32_t>()).ok());
  const std::vector<int32_t> got = Download<int32_t>(dout, rows);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(got[r], GreedyToken({x.data() + r * vocab, static_cast<size_t>(vocab)}))
        << "row " << r;
  }
  EXPECT_EQ(got[0], 17);
  EXPECT_EQ(got[2], 0);
  EXPECT_EQ(got[3], 4444);
  // All NaN / -inf: 0, like the host.
  std::vector<float> bad(2 * vocab, -INFINITY);
  for (int64_t i = 0; i < vocab; i += 3) bad[vocab + i] = NAN;
  bad[5] = NAN;
  DeviceBuffer db = Upload(bad), dbo = Poisoned<int32_t>(2);
  ASSERT_TRUE(Argmax(nullptr, db.as<float>(), 2, vocab, dbo.as<int32_t>()).ok());
  EXPECT_EQ(Download<int32_t>(dbo, 2), (std::vector<int32_t>{0, 0}));
}

// Reference of LaunchSampleTopKTopP's rule in double precision. Returns the id, and in
// *margin the distance of the running mass from the goal at the chosen boundary (relative).
int32_t RefSample(const float* x, int64_t vocab, float T, int32_t k, float top_p, float u,
                  double* margin) {
  if (T <= 0) return static_cast<int32_t>(std::max_element(x, x + vocab) - x);
  std::vector<float> sorted(x, x + vocab);
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  const double mx = sorted[0];
  const float vk = (k > 0 && k < vocab) ? sorted[k - 1] : sorted.back();
  double total = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (x[i] >= vk) total += std::exp((x[i] - mx) / T);
  }
  float thr = vk;
  if (top_p < 1) {
    double mass = 0;
    for (size_t i = 0; i < sorted.size() && sorted[i] >= vk; ++i) {
      // include all ties of sorted[i] at once
      double group = 0;
      size_t j = i;
      while (j < sorted.size() && sorted[j] == sorted[i]) group += std::exp((sorted[j++] - mx) / T);
      mass += group;
      i = j - 1;
      if (mass >= top_p * total) {
        thr = std::max(vk, sorted[i]);
        break;
      }
    }
  }
  double kept = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (x[i] >= thr) kept += std::exp((x[i] - mx) / T);
  }
  const double goal = u * kept;
  double run = 0;
  int32_t last = -1;
  for (int64_t i = 0; i < vocab; ++i) {
    if (x[i] < thr) continue;
    last = static_cast<int32_t>(i);
    const double before = run;
    run += std::exp((x[i] - mx) / T);
    if (run > goal) {
      *margin = std::min(goal - before, run - goal) / kept;
      return static_cast<int32_t>(i);
    }
  }
  *margin = 0;
  return last;
}

// SampleTopKTopP on the device over x [rows, vocab] with params p; empty (test failed) on error.
std::vector<int32_t> DeviceSample(const std::vector<float>& x, int64_t rows, int64_t vocab,
                                  const SampleParamsHost& p) {
  DeviceBuffer dx = Upload(x), dT = Upload(p.temperature), dk = Upload(p.top_k),
               dp = Upload(p.top_p), du = Upload(p.uniform), dout = Poisoned<int32_t>(rows);
  SampleArgs a;
  a.logits = dx.as<float>();
  a.rows = rows;
  a.vocab = vocab;
  a.temperature = dT.as<float>();
  a.top_k = dk.as<int32_t>();
  a.top_p = dp.as<float>();
  a.uniform = du.as<float>();
  a.out = dout.as<int32_t>();
  const absl::Status st = SampleTopKTopP(nullptr, a, p);
  EXPECT_TRUE(st.ok()) << st;
  return st.ok() ? Download<int32_t>(dout, rows) : std::vector<int32_t>{};
}

TEST(CudaSamplingTest, TopKTopPMatchesReference) {
  SAMBAY_REQUIRE_GPU();
  std::mt19937_64 rng(52);
  const int64_t rows = 64, vocab = 3001;
  std::vector<float> x = RandF32(rows * vocab, rng, -4, 4);
  SampleParamsHost p;
  std::uniform_real_distribution<float> uni(0.0f, 0.999f);
  for (int64_t r = 0; r < rows; ++r) {
    p.temperature.push_back(r % 8 == 0 ? 0.0f : 0.5f + 0.1f * (r % 5));
    p.top_k.push_back(r % 3 == 0 ? 0 : (r % 3 == 1 ? 1 + static_cast<int32_t>(r) : 50));
    p.top_p.push_back(r % 4 == 0 ? 1.0f : 0.3f + 0.15f * (r % 4));
    p.uniform.push_back(uni(rng));
  }
  const std::vector<int32_t> got = DeviceSample(x, rows, vocab, p);
  ASSERT_EQ(got.size(), static_cast<size_t>(rows));
  int exact = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double margin = 1;
    const int32_t want = RefSample(x.data() + r * vocab, vocab, p.temperature[r], p.top_k[r],
                                   p.top_p[r], p.uniform[r], &margin);
    if (got[r] == want) {
      ++exact;
    } else {  // fp32 vs float64 sums can move a boundary: allowed for a couple of rows
      std::printf("row %lld: got %d, want %d (draw margin %.3g)\n", (long long)r, got[r], want,
                  margin);
    }
    ASSERT_GE(got[r], 0);
    ASSERT_LT(got[r], vocab);
  }
  EXPECT_GE(exact, rows - 2);
}

// Edge draws: a temperature so small that 1/T overflows is greedy (not NaN weights), and a draw
// next to 1 never lands on a token whose weight underflowed to 0 (padding-like logits).
TEST(CudaSamplingTest, EdgeDrawsPickTokensWithMass) {
  SAMBAY_REQUIRE_GPU();
  std::mt19937_64 rng(53);
  const int64_t rows = 6, vocab = 4099;
  std::vector<float> x = RandF32(rows * vocab, rng, -3, 3);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = vocab - 500; i < vocab; ++i) x[r * vocab + i] = -1e30f;  // zero mass
  }
  SampleParamsHost p;
  for (int64_t r = 0; r < rows; ++r) {
    p.temperature.push_back(r < 2 ? 1e-40f : 1.0f);  // rows 0, 1: 1/T = inf
    p.top_k.push_back(0);
    p.top_p.push_back(1.0f);
    p.uniform.push_back(r % 2 == 0 ? 0.99999994f : 0.5f);  // the largest float below 1
  }
  const std::vector<int32_t> got = DeviceSample(x, rows, vocab, p);
  ASSERT_EQ(got.size(), static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x.data() + r * vocab;
    ASSERT_GE(got[r], 0);
    ASSERT_LT(got[r], vocab - 500) << "row " << r << " drew a zero-mass token";
    if (r < 2) {
      EXPECT_EQ(got[r], std::max_element(row, row + vocab) - row) << "row " << r;
    }
  }
}

}  // namespace
}  // namespace sambay::cuda
