#!/usr/bin/python3
"""Independent float64 NumPy reference of the SambaY / Phi-4-mini-flash model.

Written from docs/model-spec.md ("spec"); section numbers below refer to its
numbered headings.  Pure float64 math everywhere: no bf16 rounding is emulated (the
spec's precision map, section 10, is deliberately ignored), so this is the
"ideal" model that an engine's fp32/bf16 output is compared against with a
tolerance.

Dependencies: Python standard library + NumPy only.  Run with /usr/bin/python3.

CLI:
  sambay_ref.py score    --model DIR (--ids 3,14,15 | --ids-file F) --out LOGITS.npy
  sambay_ref.py generate --model DIR (--ids ... | --ids-file F) --max-new-tokens N

Module API:
  score(model_dir, ids)       -> np.ndarray float64 [T, vocab]
  generate(model_dir, ids, n) -> list[int]  (greedy new ids)
  load_model(model_dir)       -> Model   (score/generate also accept a Model)
  layer_schedule(N)           -> list[str]
  layer_norm, mamba_mixer, diff_attention_core, diff_attn_self,
  diff_attn_cross, gmu_mixer, swiglu_mlp, forward   (building blocks)
"""

import argparse
import json
import math
import os
import sys

import numpy as np

# ----------------------------------------------------------------------------
# safetensors reader (format: u64 LE header length, JSON header, data region)
# ----------------------------------------------------------------------------

_ST_DTYPES = {  # safetensors dtype -> numpy storage dtype of the raw bytes
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # decoded by bf16_to_f64
}


def bf16_to_f64(raw):
    """bf16 bit patterns (uint16) -> float64: (u16 << 16) viewed as float32 (exact)."""
    u32 = np.asarray(raw, dtype=np.uint16).astype(np.uint32) << np.uint32(16)
    return u32.view(np.float32).astype(np.float64)


def decode(raw, st_dtype):
    """Raw stored values (any slice of a tensor) -> float64 array."""
    if st_dtype == "BF16":
        return bf16_to_f64(raw)
    return np.asarray(raw).astype(np.float64)


def read_safetensors_header(path):
    """Returns {name: (st_dtype, shape, absolute_byte_offset, nbytes)}."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n).decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _ST_DTYPES:
            raise ValueError("%s: unsupported safetensors dtype %s" % (name, dt))
        b, e = info["data_offsets"]
        shape = tuple(int(s) for s in info["shape"])
        nbytes = int(np.prod(shape, dtype=np.int64)) * _ST_DTYPES[dt].itemsize
        if e - b != nbytes:
            raise ValueError("%s: byte size mismatch in %s" % (name, path))
        out[name] = (dt, shape, base + b, nbytes)
    return out


def _raw_tensor(path, dt, shape, offset):
    """Memory-mapped, correctly typed view of one tensor's stored values."""
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.zeros(shape, dtype=_ST_DTYPES[dt])
    mm = np.memmap(path, dtype=_ST_DTYPES[dt], mode="r", offset=offset, shape=(count,))
    return mm.reshape(shape)


# ----------------------------------------------------------------------------
# Config + model container (spec sections 1, 7)
# ----------------------------------------------------------------------------


class Config:
    """Numeric fields of config.json (spec section 1)."""

    def __init__(self, d):
        mt = d.get("model_type", "phi4flash")
        if mt != "phi4flash":
            raise ValueError("model_type %r is not phi4flash" % mt)
        self.vocab_size = int(d["vocab_size"])
        self.hidden_size = int(d["hidden_size"])
        self.intermediate_size = int(d["intermediate_size"])
        self.num_hidden_layers = int(d["num_hidden_layers"])
        self.num_attention_heads = int(d["num_attention_heads"])
        self.num_key_value_heads = int(d.get("num_key_value_heads", self.num_attention_heads))
        sw = d.get("sliding_window")
        if isinstance(sw, list):  # per-layer list form (docs/model-spec.md §1, config-class note)
            sw = next((v for v in sw if v is not None), None)
        if sw is None:
            raise ValueError("config.json has no sliding_window")
        self.sliding_window = int(sw)
        self.layer_norm_eps = float(d.get("layer_norm_eps", 1e-5))
        self.d_state = int(d.get("mamba_d_state", 16))
        self.d_conv = int(d.get("mamba_d_conv", 4))
        self.expand = int(d.get("mamba_expand", 2))
        dtr = d.get("mamba_dt_rank", "auto")
        self.dt_rank = math.ceil(self.hidden_size / 16) if dtr == "auto" else int(dtr)
        self.mb_per_layer = int(d.get("mb_per_layer", 2))
        self.tie_word_embeddings = bool(d.get("tie_word_embeddings", True))
        self.d_inner = self.expand * self.hidden_size
        H, G = self.num_attention_heads, self.num_key_value_heads
        self.head_dim = self.hidden_size // H
        # Structural assertions (docs/model-spec.md §11).
        assert self.num_hidden_layers % 4 == 0, "num_hidden_layers must be divisible by 4"
        assert self.mb_per_layer == 2, "only mb_per_layer == 2 is supported"
        assert self.head_dim * H == self.hidden_size
        assert H % 2 == 0 and G % 2 == 0 and (H // 2) % (G // 2) == 0
        assert self.sliding_window >= 1


class Model:
    """Config + lazily decoded weights.  Tensors are memory-mapped; `get`
    decodes to float64 (and caches unless cache=False, for big models)."""

    def __init__(self, model_dir, cache=True):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.cfg = Config(json.load(f))
        self.cache = cache
        self._cached = {}
        self._index = {}  # name -> (path, st_dtype, shape, offset)
        idx_path = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.exists(idx_path):
            with open(idx_path) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        for fn in files:
            path = os.path.join(model_dir, fn)
            for name, (dt, shape, off, _) in read_safetensors_header(path).items():
                self._index[name] = (path, dt, shape, off)
        # Tied LM head (docs/model-spec.md §3.9, §7): use embed_tokens if lm_head is absent.
        self.lm_head_name = "lm_head.weight" if "lm_head.weight" in self._index \
            else "model.embed_tokens.weight"

    def has(self, name):
        return name in self._index

    def raw(self, name):
        path, dt, shape, off = self._index[name]
        return _raw_tensor(path, dt, shape, off), dt

    def get(self, name):
        if name in self._cached:
            return self._cached[name]
        raw, dt = self.raw(name)
        arr = decode(raw, dt)
        if self.cache:
            self._cached[name] = arr
        return arr

    def rows(self, name, idx):
        """Decoded rows of a 2-D tensor (embedding lookup without full decode)."""
        if name in self._cached:
            return self._cached[name][idx]
        raw, dt = self.raw(name)
        return decode(raw[idx], dt)


def load_model(model_dir, cache=True):
    return Model(model_dir, cache=cache)


# ----------------------------------------------------------------------------
# Layer schedule (spec section 2)
# ----------------------------------------------------------------------------

MAMBA, MAMBA_MEM, SWA, GLOBAL, GMU, CROSS = (
    "mamba", "mamba_mem", "swa", "global", "gmu", "cross")


def layer_schedule(n_layers):
    """Layer kinds for N layers (N % 4 == 0, mb_per_layer == 2), docs/model-spec.md §2:
    even i <= half: Mamba (i == half is the memory producer);
    odd i < half: sliding-window diff-attn; i == half+1: global diff-attn (KV
    producer); i >= half+2: even -> GMU, odd -> cross diff-attn."""
    assert n_layers % 4 == 0
    half = n_layers // 2
    kinds = []
    for i in range(n_layers):
        if i % 2 == 0 and i < half:
            kinds.append(MAMBA)
        elif i == half:
            kinds.append(MAMBA_MEM)
        elif i % 2 == 1 and i < half:
            kinds.append(SWA)
        elif i == half + 1:
            kinds.append(GLOBAL)
        elif i % 2 == 0:
            kinds.append(GMU)
        else:
            kinds.append(CROSS)
    return kinds


# ----------------------------------------------------------------------------
# Elementwise helpers
# ----------------------------------------------------------------------------


def silu(x):
    # x * sigmoid(x), with a sigmoid that never overflows exp().
    return x * _sigmoid(x)


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softplus(v):
    """log(1 + exp(v)), numerically stable (docs/model-spec.md §3.2 step 4; no v>20 cutoff)."""
    return np.logaddexp(0.0, v)


def layer_norm(x, w, b, eps):
    """nn.LayerNorm over the last axis: biased variance, weight and bias (s3.1)."""
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def rms_norm(x, w, eps=1e-5):
    """RMSNorm over the last axis, weight, no bias (subln, §3.3)."""
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def linear(x, w, b=None):
    """y = x W^T (+ b), W stored [out, in] (s3)."""
    y = x @ w.T
    return y if b is None else y + b


# ----------------------------------------------------------------------------
# Mamba-1 mixer (docs/model-spec.md §3.2)
# ----------------------------------------------------------------------------


def mamba_mixer(u, p, cfg):
    """u: [T, hidden] (LN output).  p: dict with in_proj, conv_w [d_inner,1,K],
    conv_b, x_proj, dt_proj_w, dt_proj_b, A_log, D, out_proj.
    Returns (out [T, hidden], y [T, d_inner]) where y is the pre-gate scan
    output INCLUDING the D*x skip (the GMU memory m when this is layer half)."""
    T = u.shape[0]
    di, ns, K, R = cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.dt_rank
    # 1. in_proj -> x (first d_inner rows), z (second d_inner rows).
    xz = linear(u, p["in_proj"])
    x, z = xz[:, :di], xz[:, di:2 * di]
    # 2. causal depthwise conv: xc_t = silu(b + sum_k w[:,0,k] * x_{t-(K-1)+k}),
    #    x_{<0} = 0, w[:,0,K-1] multiplies the current token.
    w = p["conv_w"][:, 0, :]  # [d_inner, K]
    xpad = np.concatenate([np.zeros((K - 1, di)), x], axis=0)
    acc = np.zeros((T, di)) + p["conv_b"]
    for k in range(K):
        acc = acc + xpad[k:k + T, :] * w[:, k]
    xc = silu(acc)
    # 3. x_proj -> dt_low [0:R], B [R:R+ns], C [R+ns:R+2ns].
    xdbl = linear(xc, p["x_proj"])
    dt_low, Bm, Cm = xdbl[:, :R], xdbl[:, R:R + ns], xdbl[:, R + ns:R + 2 * ns]
    # 4. dt = softplus(dt_proj.W @ dt_low + dt_proj.b).
    dt = softplus(linear(dt_low, p["dt_proj_w"], p["dt_proj_b"]))  # [T, d_inner]
    # 5. A = -exp(A_log).
    A = -np.exp(p["A_log"])  # [d_inner, d_state]
    # 6. sequential selective scan; y_t = C_t . h_t + D * xc_t.
    h = np.zeros((di, ns))
    y = np.empty((T, di))
    for t in range(T):
        h = np.exp(dt[t][:, None] * A) * h + (dt[t] * xc[t])[:, None] * Bm[t][None, :]
        y[t] = h @ Cm[t] + p["D"] * xc[t]
    # 7. gate with silu(z); 8. out_proj (no bias).
    out = linear(y * silu(z), p["out_proj"])
    return out, y


# ----------------------------------------------------------------------------
# Differential attention (docs/model-spec.md §3.3 - §3.6)
# ----------------------------------------------------------------------------


def lambda_init(layer_idx):
    """lambda_init(l) = 0.8 - 0.6 exp(-0.3 l), l = global 0-based layer index."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


def diff_lambda(p, layer_idx):
    """lambda = exp(q1.k1) - exp(q2.k2) + lambda_init(l) (s3.3)."""
    l1 = math.exp(float(np.dot(p["lambda_q1"], p["lambda_k1"])))
    l2 = math.exp(float(np.dot(p["lambda_q2"], p["lambda_k2"])))
    return l1 - l2 + lambda_init(layer_idx)


def attn_mask(q_pos, k_pos, window=None):
    """Allowed[t, s]: causal (k <= q) and, for a window W, k >= q - W + 1
    (W keys including the query itself: the clean window of s3.4)."""
    q = np.asarray(q_pos)[:, None]
    k = np.asarray(k_pos)[None, :]
    m = k <= q
    if window is not None:
        m &= k > q - window
    return m


def diff_attention_core(q, k, v, mask, lam, layer_idx, subln_w, eps=1e-5,
                        q_block=256):
    """Differential attention without projections (s3.3).
    q: [T, H, hd], k, v: [S, G, hd], mask: bool [T, S] (every row needs >= 1
    allowed key), lam: scalar lambda.  Returns [T, H*hd] (input to out_proj).

    Stripe s in {0, 1}: query heads s, s+2, ... and KV heads s, s+2, ...;
    stripe query i uses stripe KV index i // ((H/2)/(G/2)).  Each stripe does
    one softmax(q.k * hd^-0.5) applied to the 2*hd-wide [V_{2j} | V_{2j+1}]."""
    T, H, hd = q.shape
    S, G, _ = k.shape
    Hs, Gs = H // 2, G // 2
    grp = Hs // Gs
    kv_of = np.arange(Hs) // grp  # stripe query i -> stripe KV index j
    # concat(V head 2j, V head 2j+1) for each stripe KV index j: [S, Gs, 2hd]
    vcat = v.reshape(S, Gs, 2 * hd)[:, kv_of, :]  # [S, Hs, 2hd]
    scale = hd ** -0.5
    outs = []
    for stripe in (0, 1):
        qs = q[:, stripe::2, :]                 # [T, Hs, hd]
        ks = k[:, stripe::2, :][:, kv_of, :]    # [S, Hs, hd]
        o = np.empty((T, Hs, 2 * hd))
        for t0 in range(0, T, q_block):         # query blocks bound memory
            t1 = min(T, t0 + q_block)
            sc = np.einsum("thd,shd->hts", qs[t0:t1], ks) * scale
            sc = np.where(mask[None, t0:t1, :], sc, -np.inf)
            sc = sc - sc.max(axis=-1, keepdims=True)
            pr = np.exp(sc)
            pr = pr / pr.sum(axis=-1, keepdims=True)
            o[t0:t1] = np.einsum("hts,shd->thd", pr, vcat)
        outs.append(o)
    o1, o2 = outs
    d = o1 - lam * o2                               # [T, Hs, 2hd]
    n = rms_norm(d, subln_w, eps) * (1.0 - lambda_init(layer_idx))
    # pair i -> output heads 2i, 2i+1 = chunk i of width 2hd: plain flatten.
    return n.reshape(T, H * hd)


def _attn_params(model, prefix):
    a = prefix + "attn."
    ica = a + "inner_cross_attn."
    return {
        "Wqkv_w": model.get(a + "Wqkv.weight"), "Wqkv_b": model.get(a + "Wqkv.bias"),
        "out_w": model.get(a + "out_proj.weight"), "out_b": model.get(a + "out_proj.bias"),
        "lambda_q1": model.get(ica + "lambda_q1"), "lambda_k1": model.get(ica + "lambda_k1"),
        "lambda_q2": model.get(ica + "lambda_q2"), "lambda_k2": model.get(ica + "lambda_k2"),
        "subln": model.get(ica + "subln.weight"),
    }


def diff_attn_self(u, p, cfg, layer_idx, window=None):
    """KV-producing attention layer (SWA with window=W, or global with None).
    u: [T, hidden].  Returns (out [T, hidden], K [T, G, hd], V [T, G, hd])."""
    T = u.shape[0]
    H, G, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    qkv = linear(u, p["Wqkv_w"], p["Wqkv_b"])          # [Q | K | V]
    q = qkv[:, :H * hd].reshape(T, H, hd)
    k = qkv[:, H * hd:H * hd + G * hd].reshape(T, G, hd)
    v = qkv[:, H * hd + G * hd:H * hd + 2 * G * hd].reshape(T, G, hd)
    pos = np.arange(T)
    o = diff_attention_core(q, k, v, attn_mask(pos, pos, window),
                            diff_lambda(p, layer_idx), layer_idx, p["subln"])
    return linear(o, p["out_w"], p["out_b"]), k, v


def diff_attn_cross(u, p, cfg, layer_idx, k, v):
    """Cross-decoder attention (s3.6): Q from own Wqkv ([H*hd, hidden]), K/V =
    the global layer's K/V at positions 0..t (causal)."""
    T = u.shape[0]
    H, hd = cfg.num_attention_heads, cfg.head_dim
    q = linear(u, p["Wqkv_w"], p["Wqkv_b"]).reshape(T, H, hd)
    pos = np.arange(T)
    o = diff_attention_core(q, k, v, attn_mask(pos, np.arange(k.shape[0])),
                            diff_lambda(p, layer_idx), layer_idx, p["subln"])
    return linear(o, p["out_w"], p["out_b"])


# ----------------------------------------------------------------------------
# GMU (s3.7), MLP (s3.8)
# ----------------------------------------------------------------------------


def gmu_mixer(u, in_w, out_w, mem):
    """out = out_proj( silu(in_proj(u)) * m ), m = layer-half memory [T, d_inner]."""
    return linear(silu(linear(u, in_w)) * mem, out_w)


def swiglu_mlp(x, fc1, fc2):
    """[gate | up] = fc1(x); y = fc2(up * silu(gate))."""
    gu = linear(x, fc1)
    f = gu.shape[-1] // 2
    return linear(gu[:, f:] * silu(gu[:, :f]), fc2)


# ----------------------------------------------------------------------------
# Full forward (s3.1, s2, §3.9)
# ----------------------------------------------------------------------------


def _mamba_params(model, prefix):
    a = prefix + "attn."
    return {
        "in_proj": model.get(a + "in_proj.weight"),
        "conv_w": model.get(a + "conv1d.weight"),
        "conv_b": model.get(a + "conv1d.bias") if model.has(a + "conv1d.bias")
        else np.zeros(model.cfg.d_inner),
        "x_proj": model.get(a + "x_proj.weight"),
        "dt_proj_w": model.get(a + "dt_proj.weight"),
        "dt_proj_b": model.get(a + "dt_proj.bias"),
        "A_log": model.get(a + "A_log"),
        "D": model.get(a + "D"),
        "out_proj": model.get(a + "out_proj.weight"),
    }


def forward(model, ids):
    """Logits [T, vocab] (float64) for every position of `ids`."""
    cfg = model.cfg
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError("ids must be a non-empty 1-D sequence")
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise ValueError("token id out of range [0, %d)" % cfg.vocab_size)
    eps = cfg.layer_norm_eps
    h = model.rows("model.embed_tokens.weight", ids)  # plain lookup, no scaling
    mem = None   # layer-half scan output m (s2)
    kv = None    # global layer's K/V (s3.5)
    for i, kind in enumerate(layer_schedule(cfg.num_hidden_layers)):
        pre = "model.layers.%d." % i
        u = layer_norm(h, model.get(pre + "input_layernorm.weight"),
                       model.get(pre + "input_layernorm.bias"), eps)
        if kind in (MAMBA, MAMBA_MEM):
            a, y = mamba_mixer(u, _mamba_params(model, pre), cfg)
            if kind == MAMBA_MEM:
                mem = y
        elif kind == SWA:
            a, _, _ = diff_attn_self(u, _attn_params(model, pre), cfg, i,
                                     window=cfg.sliding_window)
        elif kind == GLOBAL:
            a, k, v = diff_attn_self(u, _attn_params(model, pre), cfg, i, window=None)
            kv = (k, v)
        elif kind == GMU:
            a = gmu_mixer(u, model.get(pre + "attn.in_proj.weight"),
                          model.get(pre + "attn.out_proj.weight"), mem)
        else:  # CROSS
            a = diff_attn_cross(u, _attn_params(model, pre), cfg, i, kv[0], kv[1])
        h = h + a
        x = layer_norm(h, model.get(pre + "post_attention_layernorm.weight"),
                       model.get(pre + "post_attention_layernorm.bias"), eps)
        h = h + swiglu_mlp(x, model.get(pre + "mlp.fc1.weight"),
                           model.get(pre + "mlp.fc2.weight"))
    h = layer_norm(h, model.get("model.final_layernorm.weight"),
                   model.get("model.final_layernorm.bias"), eps)
    return _lm_head(model, h)


def _lm_head(model, h, block=16384):
    """logits = h @ W_head^T, decoding the head in vocab blocks when uncached."""
    name = model.lm_head_name
    if model.cache:
        return h @ model.get(name).T
    raw, dt = model.raw(name)
    V = raw.shape[0]
    out = np.empty((h.shape[0], V))
    for r0 in range(0, V, block):
        r1 = min(V, r0 + block)
        out[:, r0:r1] = h @ decode(raw[r0:r1], dt).T
    return out


# ----------------------------------------------------------------------------
# Public API + CLI
# ----------------------------------------------------------------------------


def _as_model(model_or_dir):
    return model_or_dir if isinstance(model_or_dir, Model) else load_model(model_or_dir)


def score(model_dir, ids):
    """float64 logits [T, vocab] for every position of ids."""
    return forward(_as_model(model_dir), list(ids))


def generate(model_dir, ids, n):
    """Greedy decode n new tokens (full forward recomputed every step).
    Ties in argmax resolve to the lowest id (np.argmax)."""
    model = _as_model(model_dir)
    seq = [int(t) for t in ids]
    new = []
    for _ in range(int(n)):
        nxt = int(np.argmax(forward(model, seq)[-1]))
        seq.append(nxt)
        new.append(nxt)
    return new


def _parse_ids(text):
    return [int(tok) for tok in text.replace(",", " ").split()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("score", "generate"):
        sp = sub.add_parser(name)
        sp.add_argument("--model", required=True, help="HF model directory")
        g = sp.add_mutually_exclusive_group(required=True)
        g.add_argument("--ids", help="comma/space separated token ids")
        g.add_argument("--ids-file", help="file of whitespace/comma separated ids")
        sp.add_argument("--low-mem", action="store_true",
                        help="do not cache decoded float64 weights (huge models)")
        if name == "score":
            sp.add_argument("--out", required=True, help="output .npy (float64 [T, vocab])")
        else:
            sp.add_argument("--max-new-tokens", type=int, required=True)
    args = ap.parse_args(argv)
    if args.ids is not None:
        ids = _parse_ids(args.ids)
    else:
        with open(args.ids_file) as f:
            ids = _parse_ids(f.read())
    model = load_model(args.model, cache=not args.low_mem)
    if args.cmd == "score":
        np.save(args.out, score(model, ids))
    else:
        print(" ".join(str(t) for t in generate(model, ids, args.max_new_tokens)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
