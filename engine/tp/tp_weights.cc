#include "engine/tp/tp_weights.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <utility>

#include "common/check.h"

namespace sambay {
namespace {

struct Range {
  int64_t begin, end;
};

// Rows [r0, r1) of w, as a view of the same memory.
WeightView RowView(const WeightView& w, int64_t r0, int64_t r1) {
  WeightView v = w;
  v.data = static_cast<const unsigned char*>(w.data) + r0 * w.cols * DTypeSize(w.dtype);
  v.rows = r1 - r0;
  return v;
}

// Cuts matrix slices; copies go into out.owned.
class Slicer {
 public:
  explicit Slicer(ModelWeights& out) : out_(out) {}

  // The rows of each range, concatenated (a view when there is one range).
  WeightView Rows(const WeightView& w, std::initializer_list<Range> ranges) {
    if (ranges.size() == 1) return RowView(w, ranges.begin()->begin, ranges.begin()->end);
    const int64_t row_bytes = w.cols * DTypeSize(w.dtype);
    int64_t rows = 0;
    for (const Range& r : ranges) rows += r.end - r.begin;
    unsigned char* dst = Alloc(rows * row_bytes);
    WeightView v = w;
    v.data = dst;
    v.rows = rows;
    for (const Range& r : ranges) {
      const int64_t n = (r.end - r.begin) * row_bytes;
      std::memcpy(dst, static_cast<const unsigned char*>(w.data) + r.begin * row_bytes,
                  static_cast<size_t>(n));
      dst += n;
    }
    return v;
  }

  // Columns [c0, c1) of every row.
  WeightView Cols(const WeightView& w, int64_t c0, int64_t c1) {
    const int64_t es = DTypeSize(w.dtype);
    const int64_t cols = c1 - c0;
    unsigned char* dst = Alloc(w.rows * cols * es);
    const auto* src = static_cast<const unsigned char*>(w.data);
    for (int64_t r = 0; r < w.rows; ++r) {
      std::memcpy(dst + r * cols * es, src + (r * w.cols + c0) * es,
                  static_cast<size_t>(cols * es));
    }
    WeightView v = w;
    v.data = dst;
    v.cols = cols;
    return v;
  }

 private:
  unsigned char* Alloc(int64_t bytes) {
    out_.owned.emplace_back(new unsigned char[static_cast<size_t>(std::max<int64_t>(1, bytes))]);
    return out_.owned.back().get();
  }
  ModelWeights& out_;
};

// Rows [r0, r1) of a row-major [*, cols] vector.
std::vector<float> VecRows(const std::vector<float>& v, int64_t cols, int64_t r0, int64_t r1) {
  return std::vector<float>(v.begin() + r0 * cols, v.begin() + r1 * cols);
}

}  // namespace

ModelWeights ShardWeights(const ModelConfig& c, const ModelWeights& full, const TpPlan& plan,
                          int rank) {
  SAMBAY_CHECK(rank >= 0 && rank < plan.tp && static_cast<int>(plan.ranks.size()) == plan.tp);
  const TpRankSlice& s = plan.ranks[rank];
  const int64_t di = c.d_inner, qd = c.q_dim(), kvd = c.kv_dim(), f = c.intermediate_size;
  const int64_t di0 = s.d_inner0, di1 = s.d_inner1;
  ModelWeights w;
  Slicer sl(w);
  w.embed = full.embed;
  w.lm_head = RowView(full.lm_head, s.vocab0, s.vocab1);
  w.final_w = full.final_w;
  w.final_b = full.final_b;
  w.layers.resize(full.layers.size());
  for (size_t i = 0; i < full.layers.size(); ++i) {
    const LayerWeights& fl = full.layers[i];
    LayerWeights& l = w.layers[i];
    l.kind = fl.kind;
    l.ln1_w = fl.ln1_w;
    l.ln1_b = fl.ln1_b;
    l.ln2_w = fl.ln2_w;
    l.ln2_b = fl.ln2_b;
    l.fc1 = sl.Rows(fl.fc1, {{s.ffn0, s.ffn1}, {f + s.ffn0, f + s.ffn1}});
    l.fc2 = sl.Cols(fl.fc2, s.ffn0, s.ffn1);
    switch (fl.kind) {
      case LayerKind::kMamba: {
        const MambaWeights& fm = fl.mamba;
        MambaWeights& m = l.mamba;
        m.in_proj = sl.Rows(fm.in_proj, {{di0, di1}, {di + di0, di + di1}});
        m.x_proj = sl.Cols(fm.x_proj, di0, di1);
        m.dt_proj = sl.Rows(fm.dt_proj, {{di0, di1}});
        m.out_proj = sl.Cols(fm.out_proj, di0, di1);
        m.conv_w = VecRows(fm.conv_w, c.d_conv, di0, di1);
        m.conv_b = VecRows(fm.conv_b, 1, di0, di1);
        m.dt_bias = VecRows(fm.dt_bias, 1, di0, di1);
        m.A = VecRows(fm.A, c.d_state, di0, di1);
        m.D = VecRows(fm.D, 1, di0, di1);
        break;
      }
      case LayerKind::kSwa:
      case LayerKind::kGlobal:
      case LayerKind::kCross: {
        const AttentionWeights& fa = fl.attn;
        AttentionWeights& a = l.attn;
        if (fl.kind == LayerKind::kCross) {
          a.wqkv = sl.Rows(fa.wqkv, {{s.q0, s.q1}});
          a.wqkv_bias = VecRows(fa.wqkv_bias, 1, s.q0, s.q1);
        } else {
          const Range q{s.q0, s.q1}, k{qd + s.kv0, qd + s.kv1},
              v{qd + kvd + s.kv0, qd + kvd + s.kv1};
          a.wqkv = sl.Rows(fa.wqkv, {q, k, v});
          for (const Range& r : {q, k, v}) {
            a.wqkv_bias.insert(a.wqkv_bias.end(), fa.wqkv_bias.begin() + r.begin,
                               fa.wqkv_bias.begin() + r.end);
          }
        }
        a.out_proj = sl.Cols(fa.out_proj, s.q0, s.q1);
        a.out_bias.assign(fa.out_bias.size(), 0.0f);  // added once, after the all-reduce
        a.subln = fa.subln;
        a.lambda = fa.lambda;
        a.lambda_init = fa.lambda_init;
        break;
      }
      case LayerKind::kGmu:
        l.gmu.in_proj = sl.Rows(fl.gmu.in_proj, {{di0, di1}});
        l.gmu.out_proj = sl.Cols(fl.gmu.out_proj, di0, di1);
        break;
    }
    for (const WeightView* v :
         {&l.fc1, &l.fc2, &l.mamba.in_proj, &l.mamba.x_proj, &l.mamba.dt_proj, &l.mamba.out_proj,
          &l.attn.wqkv, &l.attn.out_proj, &l.gmu.in_proj, &l.gmu.out_proj}) {
      w.matrix_bytes += v->bytes();
    }
  }
  w.matrix_bytes += w.lm_head.bytes();
  return w;
}

}  // namespace sambay
