#include "engine/weights.h"

#include <cmath>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace sambay {
namespace {

std::string LayerPrefix(int i) { return absl::StrCat("model.layers.", i, "."); }

void AddAttention(const ModelConfig& c, const std::string& p, bool cross,
                  std::vector<TensorSpec>& out) {
  const int64_t rows = cross ? c.q_dim() : c.q_dim() + 2 * c.kv_dim();
  out.push_back({p + "attn.Wqkv.weight", {rows, c.hidden_size}});
  out.push_back({p + "attn.Wqkv.bias", {rows}});
  out.push_back({p + "attn.out_proj.weight", {c.hidden_size, c.q_dim()}});
  out.push_back({p + "attn.out_proj.bias", {c.hidden_size}});
  for (const char* n : {"lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"}) {
    out.push_back({p + "attn.inner_cross_attn." + n, {c.head_dim}});
  }
  out.push_back({p + "attn.inner_cross_attn.subln.weight", {2 * c.head_dim}});
}

// Binds tensors by name after checking shapes.
class Binder {
 public:
  Binder(const Checkpoint& ck, const ModelConfig& c) : ck_(ck) {
    for (const TensorSpec& s : ExpectedTensors(c)) shapes_[s.name] = s.shape;
  }

  absl::StatusOr<const TensorInfo*> Get(const std::string& name) {
    auto it = shapes_.find(name);
    const TensorInfo* t = ck_.Find(name);
    if (t == nullptr) {
      return absl::NotFoundError(absl::StrCat("checkpoint is missing tensor ", name,
                                              " (expected shape ", ShapeString(it->second), ")"));
    }
    if (t->shape != it->second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has shape ",
                                                     ShapeString(t->shape), ", expected ",
                                                     ShapeString(it->second)));
    }
    dtypes_.insert(t->dtype);
    return t;
  }

  absl::StatusOr<WeightView> Matrix(const std::string& name) {
    const TensorInfo* t;
    SAMBAY_ASSIGN_OR_RETURN(t, Get(name));
    WeightView w;
    w.dtype = t->dtype;
    w.data = t->data;
    w.rows = t->shape[0];
    w.cols = t->numel() / std::max<int64_t>(1, t->shape[0]);
    return w;
  }

  absl::StatusOr<std::vector<float>> Vector(const std::string& name) {
    const TensorInfo* t;
    SAMBAY_ASSIGN_OR_RETURN(t, Get(name));
    std::vector<float> v(static_cast<size_t>(t->numel()));
    ConvertToF32(t->dtype, t->data, v.data(), t->numel());
    for (float x : v) {
      if (!std::isfinite(x)) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has non-finite values"));
      }
    }
    return v;
  }

  std::string DTypeSummary() const {
    if (dtypes_.size() == 1) return std::string(DTypeName(*dtypes_.begin()));
    return "mixed";
  }

 private:
  const Checkpoint& ck_;
  std::map<std::string, std::vector<int64_t>> shapes_;
  std::set<DType> dtypes_;
};

double DotF64(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

absl::Status BindAttention(Binder& b, const ModelConfig& c, int layer, AttentionWeights& a) {
  const std::string p = LayerPrefix(layer) + "attn.";
  SAMBAY_ASSIGN_OR_RETURN(a.wqkv, b.Matrix(p + "Wqkv.weight"));
  SAMBAY_ASSIGN_OR_RETURN(a.wqkv_bias, b.Vector(p + "Wqkv.bias"));
  SAMBAY_ASSIGN_OR_RETURN(a.out_proj, b.Matrix(p + "out_proj.weight"));
  SAMBAY_ASSIGN_OR_RETURN(a.out_bias, b.Vector(p + "out_proj.bias"));
  SAMBAY_ASSIGN_OR_RETURN(a.subln, b.Vector(p + "inner_cross_attn.subln.weight"));
  std::vector<float> q1, k1, q2, k2;
  SAMBAY_ASSIGN_OR_RETURN(q1, b.Vector(p + "inner_cross_attn.lambda_q1"));
  SAMBAY_ASSIGN_OR_RETURN(k1, b.Vector(p + "inner_cross_attn.lambda_k1"));
  SAMBAY_ASSIGN_OR_RETURN(q2, b.Vector(p + "inner_cross_attn.lambda_q2"));
  SAMBAY_ASSIGN_OR_RETURN(k2, b.Vector(p + "inner_cross_attn.lambda_k2"));
  const double init = ModelConfig::LambdaInit(layer);
  const double lambda = std::exp(DotF64(q1, k1)) - std::exp(DotF64(q2, k2)) + init;
  if (!std::isfinite(lambda)) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, ": lambda from lambda_q/k vectors is not finite"));
  }
  a.lambda = static_cast<float>(lambda);
  a.lambda_init = static_cast<float>(init);
  return absl::OkStatus();
}

absl::Status BindMamba(Binder& b, const ModelConfig& c, int layer, MambaWeights& m) {
  const std::string p = LayerPrefix(layer) + "attn.";
  SAMBAY_ASSIGN_OR_RETURN(m.in_proj, b.Matrix(p + "in_proj.weight"));
  SAMBAY_ASSIGN_OR_RETURN(m.x_proj, b.Matrix(p + "x_proj.weight"));
  SAMBAY_ASSIGN_OR_RETURN(m.dt_proj, b.Matrix(p + "dt_proj.weight"));
  SAMBAY_ASSIGN_OR_RETURN(m.out_proj, b.Matrix(p + "out_proj.weight"));
  SAMBAY_ASSIGN_OR_RETURN(m.conv_w, b.Vector(p + "conv1d.weight"));
  SAMBAY_ASSIGN_OR_RETURN(m.conv_b, b.Vector(p + "conv1d.bias"));
  SAMBAY_ASSIGN_OR_RETURN(m.dt_bias, b.Vector(p + "dt_proj.bias"));
  SAMBAY_ASSIGN_OR_RETURN(m.A, b.Vector(p + "A_log"));
  for (float& a : m.A) a = -std::exp(a);
  SAMBAY_ASSIGN_OR_RETURN(m.D, b.Vector(p + "D"));
  return absl::OkStatus();
}

}  // namespace

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& c) {
  std::vector<TensorSpec> out;
  const int64_t h = c.hidden_size;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, h}});
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = LayerPrefix(i);
    out.push_back({p + "input_layernorm.weight", {h}});
    out.push_back({p + "input_layernorm.bias", {h}});
    switch (c.layers[i]) {
      case LayerKind::kMamba:
        out.push_back({p + "attn.in_proj.weight", {2 * c.d_inner, h}});
        out.push_back({p + "attn.conv1d.weight", {c.d_inner, 1, c.d_conv}});
        out.push_back({p + "attn.conv1d.bias", {c.d_inner}});
        out.push_back({p + "attn.x_proj.weight", {c.x_proj_dim(), c.d_inner}});
        out.push_back({p + "attn.dt_proj.weight", {c.d_inner, c.dt_rank}});
        out.push_back({p + "attn.dt_proj.bias", {c.d_inner}});
        out.push_back({p + "attn.A_log", {c.d_inner, c.d_state}});
        out.push_back({p + "attn.D", {c.d_inner}});
        out.push_back({p + "attn.out_proj.weight", {h, c.d_inner}});
        break;
      case LayerKind::kSwa:
      case LayerKind::kGlobal:
        AddAttention(c, p, /*cross=*/false, out);
        break;
      case LayerKind::kCross:
        AddAttention(c, p, /*cross=*/true, out);
        break;
      case LayerKind::kGmu:
        out.push_back({p + "attn.in_proj.weight", {c.d_inner, h}});
        out.push_back({p + "attn.out_proj.weight", {h, c.d_inner}});
        break;
    }
    out.push_back({p + "post_attention_layernorm.weight", {h}});
    out.push_back({p + "post_attention_layernorm.bias", {h}});
    out.push_back({p + "mlp.fc1.weight", {2 * c.intermediate_size, h}});
    out.push_back({p + "mlp.fc2.weight", {h, c.intermediate_size}});
  }
  out.push_back({"model.final_layernorm.weight", {h}});
  out.push_back({"model.final_layernorm.bias", {h}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, h}});
  return out;
}

absl::StatusOr<ModelWeights> BindWeights(const ModelConfig& c,
                                         std::unique_ptr<Checkpoint> checkpoint,
                                         LoadReport* report) {
  ModelWeights w;
  Binder b(*checkpoint, c);
  SAMBAY_ASSIGN_OR_RETURN(w.embed, b.Matrix("model.embed_tokens.weight"));
  SAMBAY_ASSIGN_OR_RETURN(w.final_w, b.Vector("model.final_layernorm.weight"));
  SAMBAY_ASSIGN_OR_RETURN(w.final_b, b.Vector("model.final_layernorm.bias"));
  w.layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = w.layers[i];
    const std::string p = LayerPrefix(i);
    l.kind = c.layers[i];
    SAMBAY_ASSIGN_OR_RETURN(l.ln1_w, b.Vector(p + "input_layernorm.weight"));
    SAMBAY_ASSIGN_OR_RETURN(l.ln1_b, b.Vector(p + "input_layernorm.bias"));
    SAMBAY_ASSIGN_OR_RETURN(l.ln2_w, b.Vector(p + "post_attention_layernorm.weight"));
    SAMBAY_ASSIGN_OR_RETURN(l.ln2_b, b.Vector(p + "post_attention_layernorm.bias"));
    SAMBAY_ASSIGN_OR_RETURN(l.fc1, b.Matrix(p + "mlp.fc1.weight"));
    SAMBAY_ASSIGN_OR_RETURN(l.fc2, b.Matrix(p + "mlp.fc2.weight"));
    switch (l.kind) {
      case LayerKind::kMamba:
        SAMBAY_RETURN_IF_ERROR(BindMamba(b, c, i, l.mamba));
        break;
      case LayerKind::kSwa:
      case LayerKind::kGlobal:
      case LayerKind::kCross:
        SAMBAY_RETURN_IF_ERROR(BindAttention(b, c, i, l.attn));
        break;
      case LayerKind::kGmu:
        SAMBAY_ASSIGN_OR_RETURN(l.gmu.in_proj, b.Matrix(p + "attn.in_proj.weight"));
        SAMBAY_ASSIGN_OR_RETURN(l.gmu.out_proj, b.Matrix(p + "attn.out_proj.weight"));
        break;
    }
  }
  // LM head: tied to the embedding (docs/model-spec.md "Embedding / LM head" and "Checkpoint
  // tensors"). A stored lm_head.weight is accepted; if it differs from the embedding the
  // embedding is still used, as HF does for tied weights.
  const TensorInfo* head = checkpoint->Find("lm_head.weight");
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed;
    if (head != nullptr) {
      const TensorInfo* emb = checkpoint->Find("model.embed_tokens.weight");
      if (head->shape != emb->shape) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor lm_head.weight has shape ", ShapeString(head->shape), ", expected ",
            ShapeString(emb->shape), " (tied to model.embed_tokens.weight)"));
      }
      if (head->dtype != emb->dtype || std::memcmp(head->data, emb->data, emb->nbytes) != 0) {
        report->warnings.push_back(
            "lm_head.weight differs from model.embed_tokens.weight; tie_word_embeddings is "
            "true, so the embedding is used as the LM head");
      }
    }
  } else {
    SAMBAY_ASSIGN_OR_RETURN(w.lm_head, b.Matrix("lm_head.weight"));
  }
  std::set<std::string> expected;
  for (const TensorSpec& s : ExpectedTensors(c)) expected.insert(s.name);
  expected.insert("lm_head.weight");
  for (const auto& [name, info] : checkpoint->tensors()) {
    if (expected.count(name) == 0) report->unknown_tensors.push_back(name);
  }
  report->weights_dtype = b.DTypeSummary();
  for (const LayerWeights& l : w.layers) {
    for (const WeightView* v :
         {&l.fc1, &l.fc2, &l.mamba.in_proj, &l.mamba.x_proj, &l.mamba.dt_proj, &l.mamba.out_proj,
          &l.attn.wqkv, &l.attn.out_proj, &l.gmu.in_proj, &l.gmu.out_proj}) {
      w.matrix_bytes += v->bytes();
    }
  }
  w.matrix_bytes += w.lm_head.bytes();  // the embedding lookup reads one row only
  w.checkpoint = std::move(checkpoint);
  return w;
}

}  // namespace sambay
