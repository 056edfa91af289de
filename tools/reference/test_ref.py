#!/usr/bin/python3
"""Self-test of tools/reference/sambay_ref.py.  Run: /usr/bin/python3 test_ref.py
Exits non-zero on any failure.

Builds tiny random checkpoints with its own safetensors writer and checks:
  (a) causality: score(ids[:k]) == score(ids)[:k]
  (b) single-file vs sharded (index.json, explicit lm_head) layouts agree;
      BF16 / F16 / F32 tensors decode exactly
  (c) plain per-element (pure Python loop) Mamba and differential-attention
      layers (SWA, global, cross; several H/G groupings) match the vectorized
      functions to 1e-12, and a pure-Python whole-model forward built from them
      matches score() to 1e-12
  (d) the SWA attention ignores keys outside its window (and only those)
  (e) misc: schedule for N=32 matches docs/model-spec.md §2, lambda_init table of
      docs/model-spec.md §3.3, softplus stability, greedy generate == argmax chain, CLI round trip
"""

import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sambay_ref as ref  # noqa: E402

FAILURES = []


def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    if not cond:
        FAILURES.append(msg)


def maxdiff(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


# ---------------------------------------------------------------------------
# Minimal safetensors writer + random checkpoint builder
# ---------------------------------------------------------------------------


def to_bf16_bits(a):
    """float64 values that are exactly bf16-representable -> uint16 bits."""
    u32 = np.asarray(a, dtype=np.float32).view(np.uint32)
    assert np.all((u32 & 0xFFFF) == 0), "value not bf16-representable"
    return (u32 >> 16).astype("<u2")


def write_safetensors(path, tensors):
    """tensors: {name: (float64 array, 'F32'|'BF16'|'F16')}."""
    header, blobs, off = {}, [], 0
    for name, (arr, dt) in tensors.items():
        if dt == "F32":
            b = np.asarray(arr, dtype="<f4").tobytes()
        elif dt == "F16":
            b = np.asarray(arr, dtype="<f2").tobytes()
        elif dt == "BF16":
            b = to_bf16_bits(arr).tobytes()
        else:
            raise ValueError(dt)
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for b in blobs:
            f.write(b)


def tiny_config(hidden=32, layers=12, heads=8, kv=4, vocab=50, inter=48, window=3):
    return {"model_type": "phi4flash", "architectures": ["Phi4FlashForCausalLM"],
            "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "sliding_window": window, "layer_norm_eps": 1e-5,
            "mamba_d_state": 4, "mamba_d_conv": 4, "mamba_expand": 2,
            "mamba_dt_rank": "auto", "mb_per_layer": 2, "tie_word_embeddings": True}


def random_weights(cfg_d, seed=0):
    """{name: (float64 array, storage dtype)}; values exactly representable in
    their storage dtype (so the loader must reproduce them bit for bit)."""
    rng = np.random.default_rng(seed)
    c = ref.Config(cfg_d)
    d, di, ns, K, R = c.hidden_size, c.d_inner, c.d_state, c.d_conv, c.dt_rank
    H, G, hd, F = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size
    W = {}

    def put(name, shape, scale, shift=0.0, dt="F32"):
        a = (rng.standard_normal(shape) * scale + shift).astype(np.float32)
        if dt == "BF16":
            a = (a.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
        elif dt == "F16":
            a = a.astype(np.float16)
        W[name] = (a.astype(np.float64), dt)

    put("model.embed_tokens.weight", (c.vocab_size, d), 1.0)
    put("model.final_layernorm.weight", (d,), 0.1, 1.0)
    put("model.final_layernorm.bias", (d,), 0.1)
    for i, kind in enumerate(ref.layer_schedule(c.num_hidden_layers)):
        p = "model.layers.%d." % i
        for ln in ("input_layernorm", "post_attention_layernorm"):
            put(p + ln + ".weight", (d,), 0.1, 1.0)
            put(p + ln + ".bias", (d,), 0.1)
        put(p + "mlp.fc1.weight", (2 * F, d), d ** -0.5, dt="BF16" if i == 0 else "F32")
        put(p + "mlp.fc2.weight", (d, F), F ** -0.5)
        a = p + "attn."
        if kind in (ref.MAMBA, ref.MAMBA_MEM):
            put(a + "in_proj.weight", (2 * di, d), d ** -0.5)
            put(a + "conv1d.weight", (di, 1, K), 0.5)
            put(a + "conv1d.bias", (di,), 0.1)
            put(a + "x_proj.weight", (R + 2 * ns, di), di ** -0.5)
            put(a + "dt_proj.weight", (di, R), R ** -0.5)
            put(a + "dt_proj.bias", (di,), 0.5, -1.0)
            W[a + "A_log"] = (np.log(np.tile(np.arange(1, ns + 1, dtype=np.float32),
                                             (di, 1))).astype(np.float64), "F32")
            put(a + "D", (di,), 0.5, 1.0)
            put(a + "out_proj.weight", (d, di), di ** -0.5)
        elif kind == ref.GMU:
            put(a + "in_proj.weight", (di, d), d ** -0.5)
            put(a + "out_proj.weight", (d, di), di ** -0.5)
        else:
            rows = H * hd if kind == ref.CROSS else (H + 2 * G) * hd
            put(a + "Wqkv.weight", (rows, d), d ** -0.5)
            put(a + "Wqkv.bias", (rows,), 0.1)
            put(a + "out_proj.weight", (d, H * hd), (H * hd) ** -0.5)
            put(a + "out_proj.bias", (d,), 0.1)
            for lam in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                put(a + "inner_cross_attn." + lam, (hd,), 0.3,
                    dt="F16" if (i == 1 and lam == "lambda_q1") else "F32")
            put(a + "inner_cross_attn.subln.weight", (2 * hd,), 0.1, 1.0)
    return W


def write_model(dirpath, cfg_d, W, sharded=False):
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(cfg_d, f)
    if not sharded:
        write_safetensors(os.path.join(dirpath, "model.safetensors"), W)
        return
    # Sharded: three files, plus an explicit (tied, identical) lm_head.weight.
    W = dict(W)
    W["lm_head.weight"] = W["model.embed_tokens.weight"]
    names = list(W)
    shards = [names[0::3], names[1::3], names[2::3]]
    wmap = {}
    for k, part in enumerate(shards):
        fn = "model-%05d-of-%05d.safetensors" % (k + 1, len(shards))
        write_safetensors(os.path.join(dirpath, fn), {n: W[n] for n in part})
        wmap.update({n: fn for n in part})
    with open(os.path.join(dirpath, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wmap}, f)


# ---------------------------------------------------------------------------
# Plain per-element implementations (pure Python floats and loops)
# ---------------------------------------------------------------------------


def L(a):
    return np.asarray(a, dtype=np.float64).tolist()


def n_silu(v):
    return v / (1.0 + math.exp(-v)) if v > -700 else 0.0


def n_linear(x, w, b=None):
    """x: list[T][in], w: list[out][in] -> list[T][out]."""
    out = []
    for row in x:
        o = []
        for j in range(len(w)):
            s = 0.0
            for i in range(len(row)):
                s += w[j][i] * row[i]
            o.append(s + (b[j] if b is not None else 0.0))
        out.append(o)
    return out


def n_layer_norm(x, w, b, eps):
    out = []
    for row in x:
        n = len(row)
        mu = sum(row) / n
        var = sum((v - mu) ** 2 for v in row) / n
        out.append([(row[i] - mu) / math.sqrt(var + eps) * w[i] + b[i] for i in range(n)])
    return out


def n_mamba(u, p, d_state, d_conv, dt_rank):
    """Mamba-1 per docs/model-spec.md §3.2, one channel / one state at a time."""
    T = len(u)
    xz = n_linear(u, L(p["in_proj"]))
    di = len(xz[0]) // 2
    x = [r[:di] for r in xz]
    z = [r[di:] for r in xz]
    cw, cb = L(p["conv_w"]), L(p["conv_b"])
    xc = []
    for t in range(T):
        row = []
        for c in range(di):
            s = cb[c]
            for k in range(d_conv):
                src = t - (d_conv - 1) + k
                if src >= 0:
                    s += cw[c][0][k] * x[src][c]
            row.append(n_silu(s))
        xc.append(row)
    xd = n_linear(xc, L(p["x_proj"]))
    dtw, dtb, Alog, Dv = L(p["dt_proj_w"]), L(p["dt_proj_b"]), L(p["A_log"]), L(p["D"])
    h = [[0.0] * d_state for _ in range(di)]
    y = []
    for t in range(T):
        dt_low = xd[t][:dt_rank]
        B = xd[t][dt_rank:dt_rank + d_state]
        C = xd[t][dt_rank + d_state:dt_rank + 2 * d_state]
        yrow = []
        for c in range(di):
            v = dtb[c] + sum(dtw[c][r] * dt_low[r] for r in range(dt_rank))
            delta = v + math.log1p(math.exp(-v)) if v > 0 else math.log1p(math.exp(v))
            acc = 0.0
            for n in range(d_state):
                a = -math.exp(Alog[c][n])
                h[c][n] = math.exp(delta * a) * h[c][n] + delta * B[n] * xc[t][c]
                acc += C[n] * h[c][n]
            yrow.append(acc + Dv[c] * xc[t][c])
        y.append(yrow)
    gated = [[y[t][c] * n_silu(z[t][c]) for c in range(di)] for t in range(T)]
    return n_linear(gated, L(p["out_proj"])), y


def n_diff_attn(u, p, H, G, layer_idx, window=None, kv=None):
    """Differential attention per docs/model-spec.md §3.3 in ORIGINAL head indices.
    Self layer (kv=None): Wqkv -> [Q|K|V]; cross layer: Q only, K/V = kv.
    Returns (out, K, V) with K, V as list[T][G][hd]."""
    T = len(u)
    qkv = n_linear(u, L(p["Wqkv_w"]), L(p["Wqkv_b"]))
    hd = len(qkv[0]) // (H if kv is not None else H + 2 * G)
    Q = [[qkv[t][h * hd:(h + 1) * hd] for h in range(H)] for t in range(T)]
    if kv is None:
        K = [[qkv[t][(H + g) * hd:(H + g + 1) * hd] for g in range(G)] for t in range(T)]
        V = [[qkv[t][(H + G + g) * hd:(H + G + g + 1) * hd] for g in range(G)] for t in range(T)]
    else:
        K, V = kv
    lam_init = 0.8 - 0.6 * math.exp(-0.3 * layer_idx)
    q1, k1, q2, k2 = (L(p[n]) for n in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"))
    lam = (math.exp(sum(q1[j] * k1[j] for j in range(hd)))
           - math.exp(sum(q2[j] * k2[j] for j in range(hd))) + lam_init)
    group = (H // 2) // (G // 2)
    sw = L(p["subln"])
    flat = []
    for t in range(T):
        lo = 0 if window is None else max(0, t - window + 1)
        row = []
        for i in range(H // 2):          # output pair i = query heads 2i, 2i+1
            j = i // group               # stripe KV index
            O = []
            for s in (0, 1):             # stripe: query head 2i+s, key head 2j+s
                qh, kh = 2 * i + s, 2 * j + s
                sc = [sum(Q[t][qh][e] * K[pp][kh][e] for e in range(hd)) / math.sqrt(hd)
                      for pp in range(lo, t + 1)]
                mx = max(sc)
                ex = [math.exp(v - mx) for v in sc]
                den = sum(ex)
                o = []
                for vh in (2 * j, 2 * j + 1):   # values of BOTH heads of the pair
                    for e in range(hd):
                        o.append(sum(ex[n] * V[lo + n][vh][e] for n in range(len(ex))) / den)
                O.append(o)
            Dv = [O[0][e] - lam * O[1][e] for e in range(2 * hd)]
            ms = sum(v * v for v in Dv) / (2 * hd)
            row.extend(Dv[e] / math.sqrt(ms + 1e-5) * sw[e] * (1.0 - lam_init)
                       for e in range(2 * hd))
        flat.append(row)
    return n_linear(flat, L(p["out_w"]), L(p["out_b"])), K, V


def n_forward(W, cfg_d, ids):
    """Whole model, plain loops, own schedule rules (docs/model-spec.md §2)."""
    N, eps = cfg_d["num_hidden_layers"], cfg_d["layer_norm_eps"]
    H, G = cfg_d["num_attention_heads"], cfg_d["num_key_value_heads"]
    hidden = cfg_d["hidden_size"]
    dt_rank = math.ceil(hidden / 16)
    g = lambda n: W[n][0]  # noqa: E731
    E = L(g("model.embed_tokens.weight"))
    h = [list(E[t]) for t in ids]
    half = N // 2
    mem = kv = None
    for i in range(N):
        p = "model.layers.%d." % i
        a = p + "attn."
        u = n_layer_norm(h, L(g(p + "input_layernorm.weight")), L(g(p + "input_layernorm.bias")), eps)
        if i % 2 == 0 and i <= half:
            mp = {"in_proj": g(a + "in_proj.weight"), "conv_w": g(a + "conv1d.weight"),
                  "conv_b": g(a + "conv1d.bias"), "x_proj": g(a + "x_proj.weight"),
                  "dt_proj_w": g(a + "dt_proj.weight"), "dt_proj_b": g(a + "dt_proj.bias"),
                  "A_log": g(a + "A_log"), "D": g(a + "D"), "out_proj": g(a + "out_proj.weight")}
            out, y = n_mamba(u, mp, cfg_d["mamba_d_state"], cfg_d["mamba_d_conv"], dt_rank)
            if i == half:
                mem = y
        elif i % 2 == 0:  # GMU
            gg = n_linear(u, L(g(a + "in_proj.weight")))
            out = n_linear([[n_silu(gg[t][c]) * mem[t][c] for c in range(len(gg[t]))]
                            for t in range(len(ids))], L(g(a + "out_proj.weight")))
        else:
            ap = attn_params_from(W, a)
            if i < half:
                out, _, _ = n_diff_attn(u, ap, H, G, i, window=cfg_d["sliding_window"])
            elif i == half + 1:
                out, K, V = n_diff_attn(u, ap, H, G, i)
                kv = (K, V)
            else:
                out, _, _ = n_diff_attn(u, ap, H, G, i, kv=kv)
        h = [[h[t][c] + out[t][c] for c in range(hidden)] for t in range(len(ids))]
        x = n_layer_norm(h, L(g(p + "post_attention_layernorm.weight")),
                         L(g(p + "post_attention_layernorm.bias")), eps)
        gu = n_linear(x, L(g(p + "mlp.fc1.weight")))
        F = len(gu[0]) // 2
        act = [[gu[t][F + f] * n_silu(gu[t][f]) for f in range(F)] for t in range(len(ids))]
        m = n_linear(act, L(g(p + "mlp.fc2.weight")))
        h = [[h[t][c] + m[t][c] for c in range(hidden)] for t in range(len(ids))]
    h = n_layer_norm(h, L(g("model.final_layernorm.weight")), L(g("model.final_layernorm.bias")), eps)
    return n_linear(h, E)


def attn_params_from(W, a):
    ica = a + "inner_cross_attn."
    return {"Wqkv_w": W[a + "Wqkv.weight"][0], "Wqkv_b": W[a + "Wqkv.bias"][0],
            "out_w": W[a + "out_proj.weight"][0], "out_b": W[a + "out_proj.bias"][0],
            "lambda_q1": W[ica + "lambda_q1"][0], "lambda_k1": W[ica + "lambda_k1"][0],
            "lambda_q2": W[ica + "lambda_q2"][0], "lambda_k2": W[ica + "lambda_k2"][0],
            "subln": W[ica + "subln.weight"][0]}


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_layers(tmp):
    """(c) vectorized layer functions vs plain loops."""
    rng = np.random.default_rng(1)
    T = 9
    # Mamba layer (and its pre-gate memory output y).
    cfg_d = tiny_config()
    cfg = ref.Config(cfg_d)
    W = random_weights(cfg_d, seed=2)
    a = "model.layers.0.attn."
    mp = {"in_proj": W[a + "in_proj.weight"][0], "conv_w": W[a + "conv1d.weight"][0],
          "conv_b": W[a + "conv1d.bias"][0], "x_proj": W[a + "x_proj.weight"][0],
          "dt_proj_w": W[a + "dt_proj.weight"][0], "dt_proj_b": W[a + "dt_proj.bias"][0],
          "A_log": W[a + "A_log"][0], "D": W[a + "D"][0], "out_proj": W[a + "out_proj.weight"][0]}
    u = rng.standard_normal((T, cfg.hidden_size))
    out_v, y_v = ref.mamba_mixer(u, mp, cfg)
    out_n, y_n = n_mamba(L(u), mp, cfg.d_state, cfg.d_conv, cfg.dt_rank)
    check(maxdiff(out_v, out_n) < 1e-12 and maxdiff(y_v, y_n) < 1e-12,
          "(c) Mamba layer vectorized == naive (out %.1e, y %.1e)"
          % (maxdiff(out_v, out_n), maxdiff(y_v, y_n)))
    # Differential attention: several head groupings; SWA, global and cross.
    for (H, G) in [(8, 4), (4, 4), (8, 2), (4, 2)]:
        cd = tiny_config(hidden=16 if H == 4 else 32, heads=H, kv=G)
        c = ref.Config(cd)
        Wa = random_weights(cd, seed=3 + H + G)
        u = rng.standard_normal((T, c.hidden_size))
        li, lc = c.num_hidden_layers // 2 + 1, c.num_hidden_layers // 2 + 3
        ps = attn_params_from(Wa, "model.layers.1.attn.")
        pg = attn_params_from(Wa, "model.layers.%d.attn." % li)
        pc = attn_params_from(Wa, "model.layers.%d.attn." % lc)
        for win in (3, None):
            lid = 1 if win else li
            p = ps if win else pg
            ov, kv_, vv = ref.diff_attn_self(u, p, c, lid, window=win)
            on, kn, vn = n_diff_attn(L(u), p, H, G, lid, window=win)
            check(maxdiff(ov, on) < 1e-12 and max(maxdiff(kv_, kn), maxdiff(vv, vn)) < 1e-12,
                  "(c) diff-attn H=%d G=%d %s vectorized == naive (%.1e)"
                  % (H, G, "SWA W=3" if win else "global", maxdiff(ov, on)))
        u2 = rng.standard_normal((T, c.hidden_size))
        oc = ref.diff_attn_cross(u2, pc, c, lc, kv_, vv)
        ocn, _, _ = n_diff_attn(L(u2), pc, H, G, lc, kv=(kn, vn))
        check(maxdiff(oc, ocn) < 1e-12,
              "(c) cross diff-attn H=%d G=%d vectorized == naive (%.1e)" % (H, G, maxdiff(oc, ocn)))


def test_whole_model(mdir, cfg_d, W, ids):
    """(c) whole model: score() vs pure-Python forward."""
    got = ref.score(mdir, ids)
    want = np.array(n_forward(W, cfg_d, ids))
    d = maxdiff(got, want)
    check(got.shape == (len(ids), cfg_d["vocab_size"]) and got.dtype == np.float64,
          "score() shape/dtype [T, vocab] float64")
    check(d < 1e-12 * max(1.0, float(np.abs(want).max())),
          "(c) whole model score() == naive forward (max |diff| %.1e, max |logit| %.2f)"
          % (d, float(np.abs(want).max())))
    return got


def test_swa_isolation():
    """(d) SWA core ignores keys outside [t-W+1, t] and uses all inside."""
    rng = np.random.default_rng(5)
    T, H, G, hd, Wn = 14, 4, 2, 4, 4
    q, k, v = (rng.standard_normal((T, n, hd)) for n in (H, G, G))
    lam_p = {n: rng.standard_normal(hd) * 0.3 for n in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")}
    lam, sub = ref.diff_lambda(lam_p, 3), 1.0 + 0.1 * rng.standard_normal(2 * hd)
    pos = np.arange(T)
    base = ref.diff_attention_core(q, k, v, ref.attn_mask(pos, pos, Wn), lam, 3, sub)
    ok_out, ok_in = True, True
    for j in range(T):
        k2, v2 = k.copy(), v.copy()
        k2[j] += 5.0 * rng.standard_normal((G, hd))
        v2[j] += 5.0 * rng.standard_normal((G, hd))
        o = ref.diff_attention_core(q, k2, v2, ref.attn_mask(pos, pos, Wn), lam, 3, sub)
        for t in range(T):
            inside = t - Wn + 1 <= j <= t
            same = np.array_equal(o[t], base[t])
            ok_out &= same or inside
            ok_in &= (not same) or (not inside)
    check(ok_out, "(d) SWA: keys outside the window (older than W or future) do not affect output")
    check(ok_in, "(d) SWA: every key inside the window (incl. the query's own) affects output")
    # Layer-level: perturbing an input token only changes rows within W after it.
    cd = tiny_config(hidden=16, heads=4, kv=2, window=Wn)
    c = ref.Config(cd)
    p = attn_params_from(random_weights(cd, seed=6), "model.layers.1.attn.")
    u = rng.standard_normal((T, c.hidden_size))
    o0, _, _ = ref.diff_attn_self(u, p, c, 1, window=Wn)
    u[2] += 3.0
    o1, _, _ = ref.diff_attn_self(u, p, c, 1, window=Wn)
    changed = [t for t in range(T) if not np.array_equal(o0[t], o1[t])]
    check(changed == list(range(2, 2 + Wn)),
          "(d) SWA layer: token 2 perturbed changes exactly rows 2..%d (got %s)" % (1 + Wn, changed))
    # Window >= T is the same as global causal attention.
    og, _, _ = ref.diff_attn_self(u, p, c, 1, window=None)
    ow, _, _ = ref.diff_attn_self(u, p, c, 1, window=T)
    check(maxdiff(og, ow) == 0, "(d) SWA with W >= T equals global causal attention")


def test_misc():
    """(e) schedule, lambda_init table, softplus, bf16 decode."""
    k = ref.layer_schedule(32)
    exp = (["mamba" if i % 2 == 0 else "swa" for i in range(16)] + ["mamba_mem", "global"]
           + ["gmu" if i % 2 == 0 else "cross" for i in range(18, 32)])
    check(k == exp, "(e) layer_schedule(32) matches docs/model-spec.md §2 table")
    check(ref.layer_schedule(8) == ["mamba", "swa", "mamba", "swa", "mamba_mem", "global", "gmu", "cross"],
          "(e) layer_schedule(8) general-N rules")
    table = {1: 0.355509, 3: 0.556058, 17: 0.796342, 31: 0.799945}
    check(all(abs(ref.lambda_init(l) - v) < 1e-6 for l, v in table.items()),
          "(e) lambda_init matches docs/model-spec.md §3.3 table")
    sp = ref.softplus(np.array([-800.0, -30.0, 0.0, 30.0, 800.0]))
    check(np.all(np.isfinite(sp)) and abs(sp[2] - math.log(2)) < 1e-15 and sp[4] == 800.0
          and abs(sp[1] - math.exp(-30)) < 1e-25, "(e) softplus numerically stable")
    bits = np.array([0x3F80, 0xC000, 0x3EAB, 0x0000], dtype=np.uint16)
    check(ref.bf16_to_f64(bits).tolist() == [1.0, -2.0, 0.333984375, 0.0], "(e) bf16 decode")


def main():
    t_all = time.time()
    test_misc()
    test_swa_isolation()
    with tempfile.TemporaryDirectory() as tmp:
        test_layers(tmp)
        cfg_d = tiny_config()  # 12 layers: Mamba 0,2,4 + mem 6, SWA 1,3,5, global 7, GMU 8,10, cross 9,11
        W = random_weights(cfg_d, seed=0)
        single, shard = os.path.join(tmp, "single"), os.path.join(tmp, "sharded")
        write_model(single, cfg_d, W)
        write_model(shard, cfg_d, W, sharded=True)
        # (b) loader: every tensor decodes exactly, in both layouts.
        for d in (single, shard):
            m = ref.load_model(d)
            exact = all(np.array_equal(m.get(n), W[n][0]) for n in W)
            check(exact, "(b) loader decodes all tensors exactly (F32/BF16/F16) [%s]" % os.path.basename(d))
        check(ref.load_model(shard).lm_head_name == "lm_head.weight"
              and ref.load_model(single).lm_head_name == "model.embed_tokens.weight",
              "(b) lm_head.weight used when present, embed_tokens otherwise")
        ids = [3, 14, 15, 9, 26, 5, 35, 8, 49, 0, 7]
        full = test_whole_model(single, cfg_d, W, ids)
        # (b) single vs sharded.
        check(np.array_equal(full, ref.score(shard, ids)), "(b) single-file == sharded logits (bitwise)")
        # (a) causality for every prefix length.
        worst = max(maxdiff(ref.score(single, ids[:k]), full[:k]) for k in range(1, len(ids)))
        check(worst < 1e-12, "(a) causality: score(ids[:k]) == score(ids)[:k] for all k (%.1e)" % worst)
        # (e) generate == greedy argmax chain; CLI round trip.
        model = ref.load_model(single)
        gen = ref.generate(model, ids[:4], 5)
        seq, chain = list(ids[:4]), []
        for _ in range(5):
            chain.append(int(np.argmax(ref.score(model, seq)[-1])))
            seq.append(chain[-1])
        check(gen == chain, "(e) generate() == argmax chain %s" % gen)
        script = os.path.join(HERE, "sambay_ref.py")
        out = os.path.join(tmp, "logits.npy")
        idf = os.path.join(tmp, "ids.txt")
        with open(idf, "w") as f:
            f.write(" ".join(map(str, ids[:6])) + "\n" + ",".join(map(str, ids[6:])))
        r1 = subprocess.run([sys.executable, script, "score", "--model", shard, "--ids-file", idf,
                             "--out", out], capture_output=True, text=True)
        r2 = subprocess.run([sys.executable, script, "generate", "--model", single, "--ids",
                             ",".join(map(str, ids[:4])), "--max-new-tokens", "5"],
                            capture_output=True, text=True)
        check(r1.returncode == 0 and np.array_equal(np.load(out), full),
              "(e) CLI score --ids-file writes float64 [T, vocab] logits" + r1.stderr[-300:])
        check(r2.returncode == 0 and r2.stdout.split() == [str(t) for t in gen],
              "(e) CLI generate prints greedy ids: %s" % r2.stdout.strip() + r2.stderr[-300:])
        # Speed (informational): hidden 128, 12 layers, vocab 512, T=200.
        cd = tiny_config(hidden=128, layers=12, heads=4, kv=2, vocab=512, inter=256, window=64)
        cd["mamba_d_state"] = 16
        big = os.path.join(tmp, "big")
        write_model(big, cd, random_weights(cd, seed=9))
        t0 = time.time()
        lg = ref.score(big, list(np.random.default_rng(0).integers(0, 512, 200)))
        print("info score() hidden 128 / 12 layers / vocab 512 / T=200: %.2f s, finite=%s"
              % (time.time() - t0, bool(np.all(np.isfinite(lg)))))
    print("total %.1f s" % (time.time() - t_all))
    if FAILURES:
        print("%d FAILURE(S)" % len(FAILURES))
        return 1
    print("ALL PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
