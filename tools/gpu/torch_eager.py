#!/usr/bin/env python3
"""The SambaY model (docs/model-spec.md) in plain PyTorch eager, as the peer of
sambay-gpu-bench: same config (phi4-mini-flash by default), random bf16 weights, same shapes,
timed on the same GPU in the same run.

  python3 tools/gpu/torch_eager.py [--concurrency 1,8,32,64] [--prompt 2048]
      [--decode-steps 64] [--prefill-lengths 2048,32768] [--json FILE] [--layers 32]

Decode: the states of --prompt tokens are filled with random values (a decode step's cost does
not depend on their values), then --decode-steps batched steps are timed with CUDA events
(greedy argmax on the device, fed back). Prefill: one sequence, self-decoder over every token
(attention through torch's scaled_dot_product_attention, four passes per differential
attention as in the paper; the Mamba scan chunked in float64 log space), cross-decoder on the
last token. No custom kernels, no CUDA graphs, no torch.compile: the eager baseline.
Prints a Markdown table; --json writes the numbers (rewritten after every row).
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

CFG = dict(vocab=200064, hidden=2560, inter=10240, layers=32, heads=40, kv_heads=20,
           window=512, d_state=16, d_conv=4, expand=2, dt_rank=160)
# The bundled test model's shape, for a quick smoke test (also runs on the CPU: --device cpu).
TINY = dict(vocab=320, hidden=128, inter=256, layers=8, heads=4, kv_heads=2, window=16,
            d_state=16, d_conv=4, expand=2, dt_rank=8)


def schedule(n):
    half = n // 2
    kinds = []
    for i in range(n):
        if i % 2 == 0:
            kinds.append("gmu" if i >= half + 2 else "mamba")
        else:
            kinds.append("cross" if i >= half + 2 else ("global" if i == half + 1 else "swa"))
    return kinds


class Model:
    def __init__(self, c, dev):
        self.c, self.dev = c, dev
        h, di, F_ = c["hidden"], c["expand"] * c["hidden"], c["inter"]
        self.di, self.hd = di, h // c["heads"]
        qd, kvd = h, c["kv_heads"] * self.hd
        self.qd, self.kvd = qd, kvd
        g = torch.Generator(device=dev).manual_seed(0)

        def mat(o, i, scale=1.0):
            w = torch.empty(o, i, device=dev, dtype=torch.bfloat16)
            return w.uniform_(-1, 1, generator=g).mul_(scale * math.sqrt(3.0 / i))

        def vec(n, lo, hi):
            return torch.empty(n, device=dev, dtype=torch.float32).uniform_(lo, hi, generator=g)

        self.embed = mat(c["vocab"], h, 3.0)
        self.kinds = schedule(c["layers"])
        self.L = []
        for i, k in enumerate(self.kinds):
            p = dict(kind=k, ln1=(vec(h, .9, 1.1).bfloat16(), vec(h, -.1, .1).bfloat16()),
                     ln2=(vec(h, .9, 1.1).bfloat16(), vec(h, -.1, .1).bfloat16()),
                     fc1=mat(2 * F_, h), fc2=mat(h, F_, 6.0))
            if k == "mamba":
                p.update(in_proj=mat(2 * di, h), x_proj=mat(c["dt_rank"] + 2 * c["d_state"], di),
                         dt_proj=mat(di, c["dt_rank"]), out_proj=mat(h, di, 6.0),
                         conv_w=vec(di * c["d_conv"], -.5, .5).view(di, c["d_conv"]),
                         conv_b=vec(di, -.1, .1), dt_bias=vec(di, -6.9, -2.3),
                         A=-torch.arange(1, c["d_state"] + 1, device=dev, dtype=torch.float32)
                         .repeat(di, 1), D=vec(di, .5, 1.5))
            elif k == "gmu":
                p.update(in_proj=mat(di, h), out_proj=mat(h, di, 6.0))
            else:
                rows = qd if k == "cross" else qd + 2 * kvd
                lam_init = 0.8 - 0.6 * math.exp(-0.3 * i)
                p.update(wqkv=mat(rows, h), bqkv=vec(rows, -.1, .1).bfloat16(),
                         out=mat(h, qd, 6.0), bout=vec(h, -.1, .1).bfloat16(),
                         subln=vec(2 * self.hd, .9, 1.1).bfloat16(),
                         lam=0.3 + lam_init, lam_init=lam_init)
            self.L.append(p)
        self.final = (vec(h, .9, 1.1).bfloat16(), vec(h, -.1, .1).bfloat16())

    # ---- blocks -------------------------------------------------------------------------------
    def ln(self, x, wb):
        return F.layer_norm(x.bfloat16(), (x.shape[-1],), wb[0], wb[1], 1e-5)

    def mlp(self, p, x):
        g, u = F.linear(self.ln(x, p["ln2"]), p["fc1"]).chunk(2, -1)
        return x + F.linear((u.float() * F.silu(g.float())).bfloat16(), p["fc2"]).float()

    def diff_out(self, p, o1, o2):
        """o1, o2: [..., pairs, 2hd] -> [..., qd] (model-spec.md "Differential attention core")."""
        d = o1 - p["lam"] * o2
        d = d.float() * torch.rsqrt(d.float().pow(2).mean(-1, keepdim=True) + 1e-5)
        d = (d.bfloat16() * p["subln"]) * (1 - p["lam_init"])
        return d.flatten(-2)

    def attend(self, p, q, k, v, mask_fn=None, causal=False):
        """q [B, T, H, hd]; k, v [B, S, G, hd]: four SDPA passes (q1/q2 x v1/v2)."""
        H, G = self.c["heads"], self.c["kv_heads"]
        rep = H // G
        q1, q2 = q[:, :, 0::2].transpose(1, 2), q[:, :, 1::2].transpose(1, 2)
        k1 = k[:, :, 0::2].transpose(1, 2).repeat_interleave(rep, 1)
        k2 = k[:, :, 1::2].transpose(1, 2).repeat_interleave(rep, 1)
        v1 = v[:, :, 0::2].transpose(1, 2).repeat_interleave(rep, 1)
        v2 = v[:, :, 1::2].transpose(1, 2).repeat_interleave(rep, 1)
        kw = dict(attn_mask=mask_fn, is_causal=causal and mask_fn is None)
        a11 = F.scaled_dot_product_attention(q1, k1, v1, **kw)
        a12 = F.scaled_dot_product_attention(q1, k1, v2, **kw)
        a21 = F.scaled_dot_product_attention(q2, k2, v1, **kw)
        a22 = F.scaled_dot_product_attention(q2, k2, v2, **kw)
        o1 = torch.cat([a11, a12], -1).transpose(1, 2)
        o2 = torch.cat([a21, a22], -1).transpose(1, 2)
        return self.diff_out(p, o1, o2)

    def split_qkv(self, p, u):
        qkv = F.linear(u, p["wqkv"], p["bqkv"])
        B, T = u.shape[:2]
        q = qkv[..., :self.qd].view(B, T, -1, self.hd)
        if p["kind"] == "cross":
            return q, None, None
        k = qkv[..., self.qd:self.qd + self.kvd].view(B, T, -1, self.hd)
        v = qkv[..., self.qd + self.kvd:].view(B, T, -1, self.hd)
        return q, k, v

    # ---- decode step --------------------------------------------------------------------------
    def new_state(self, B, max_len, filled):
        c, dev = self.c, self.dev
        st = dict(pos=filled, conv={}, ssm={}, kr={}, vr={})
        for i, p in enumerate(self.L):
            if p["kind"] == "mamba":
                st["conv"][i] = torch.randn(B, c["d_conv"] - 1, self.di, device=dev).bfloat16()
                st["ssm"][i] = torch.randn(B, self.di, c["d_state"], device=dev) * 0.1
            elif p["kind"] == "swa":
                st["kr"][i] = torch.randn(B, c["window"], c["kv_heads"], self.hd, device=dev).bfloat16()
                st["vr"][i] = torch.randn(B, c["window"], c["kv_heads"], self.hd, device=dev).bfloat16()
        st["k"] = torch.randn(B, max_len, c["kv_heads"], self.hd, device=dev).bfloat16()
        st["v"] = torch.randn(B, max_len, c["kv_heads"], self.hd, device=dev).bfloat16()
        return st

    def mamba_step(self, p, u, conv, ssm, mem_out):
        c, di, R, S = self.c, self.di, self.c["dt_rank"], self.c["d_state"]
        x, z = F.linear(u, p["in_proj"]).chunk(2, -1)  # [B, di]
        win = torch.cat([conv, x.unsqueeze(1)], 1)  # [B, K, di]
        xc = F.silu((win.float() * p["conv_w"].t().unsqueeze(0)).sum(1) + p["conv_b"]).bfloat16()
        conv.copy_(win[:, 1:])
        xd = F.linear(xc, p["x_proj"])
        dt = F.softplus(F.linear(xd[:, :R], p["dt_proj"]).float() + p["dt_bias"])
        B_, C_ = xd[:, R:R + S].float(), xd[:, R + S:].float()
        dA = torch.exp(dt.unsqueeze(-1) * p["A"])
        ssm.mul_(dA).add_(dt.unsqueeze(-1) * B_.unsqueeze(1) * xc.float().unsqueeze(-1))
        y = (ssm * C_.unsqueeze(1)).sum(-1) + p["D"] * xc.float()
        if mem_out is not None:
            mem_out.append(y.bfloat16())
        return F.linear((y * F.silu(z.float())).bfloat16(), p["out_proj"])

    @torch.no_grad()
    def decode_step(self, st, ids):
        c = self.c
        pos = st["pos"]
        x = self.embed[ids].float()  # [B, h]
        mem = []
        half = c["layers"] // 2
        for i, p in enumerate(self.L):
            k = p["kind"]
            u = self.ln(x, p["ln1"])
            if k == "mamba":
                o = self.mamba_step(p, u, st["conv"][i], st["ssm"][i], mem if i == half else None)
            elif k == "gmu":
                o = F.linear((F.silu(F.linear(u, p["in_proj"]).float()) * mem[0].float()).bfloat16(),
                             p["out_proj"])
            else:
                q, kk, vv = self.split_qkv(p, u.unsqueeze(1))
                if k == "swa":
                    W = c["window"]
                    st["kr"][i][:, pos % W] = kk[:, 0]
                    st["vr"][i][:, pos % W] = vv[:, 0]
                    n = min(pos + 1, W)
                    K_, V_ = st["kr"][i][:, :n], st["vr"][i][:, :n]
                else:
                    if k == "global":
                        st["k"][:, pos] = kk[:, 0]
                        st["v"][:, pos] = vv[:, 0]
                    K_, V_ = st["k"][:, :pos + 1], st["v"][:, :pos + 1]
                o = F.linear(self.attend(p, q, K_, V_)[:, 0], p["out"], p["bout"])
            x = x + o.float()
            x = self.mlp(p, x)
        st["pos"] = pos + 1
        logits = F.linear(self.ln(x, self.final), self.embed)
        return logits.argmax(-1)

    # ---- prefill ------------------------------------------------------------------------------
    def scan_chunked(self, p, xc, dt, Bm, Cm, h0, chunk=64):
        """Selective scan over T tokens of one sequence, chunked, float64 log-space cumsums."""
        ys = []
        h = h0.double()
        A = p["A"].double()
        for s in range(0, xc.shape[0], chunk):
            d = dt[s:s + chunk].double()  # [t, di]
            x = xc[s:s + chunk].double()
            cum = torch.cumsum(d.unsqueeze(-1) * A, 0)  # [t, di, S]
            u = (d * x).unsqueeze(-1) * Bm[s:s + chunk].double().unsqueeze(1)
            hs = torch.exp(cum) * (h.unsqueeze(0) + torch.cumsum(torch.exp(-cum) * u, 0))
            ys.append((hs * Cm[s:s + chunk].double().unsqueeze(1)).sum(-1) + p["D"].double() * x)
            h = hs[-1]
        return torch.cat(ys).float(), h.float()

    @torch.no_grad()
    def prefill(self, ids):
        c = self.c
        T = ids.shape[0]
        R, S, W = c["dt_rank"], c["d_state"], c["window"]
        x = self.embed[ids].float()
        half = c["layers"] // 2
        mem = None
        kv = None
        for i, p in enumerate(self.L[:half + 2]):
            k = p["kind"]
            u = self.ln(x, p["ln1"])
            if k == "mamba":
                xi, z = F.linear(u, p["in_proj"]).chunk(2, -1)
                xpad = F.pad(xi.t().unsqueeze(0).float(), (c["d_conv"] - 1, 0))
                xc = F.silu(F.conv1d(xpad, p["conv_w"].unsqueeze(1), p["conv_b"],
                                     groups=self.di))[0].t().bfloat16()
                xd = F.linear(xc, p["x_proj"])
                dt = F.softplus(F.linear(xd[:, :R], p["dt_proj"]).float() + p["dt_bias"])
                y, _ = self.scan_chunked(p, xc.float(), dt, xd[:, R:R + S].float(),
                                         xd[:, R + S:].float(),
                                         torch.zeros(self.di, S, device=self.dev))
                if i == half:
                    mem = y.bfloat16()
                o = F.linear((y * F.silu(z.float())).bfloat16(), p["out_proj"])
            else:
                q, kk, vv = self.split_qkv(p, u.unsqueeze(0))
                if k == "global":
                    kv = (kk, vv)
                    o = self.attend(p, q, kk, vv, causal=True)[0]
                else:  # sliding window: query blocks of W against keys [b0 - W + 1, b1)
                    outs = []
                    for b0 in range(0, T, W):
                        b1 = min(T, b0 + W)
                        k0 = max(0, b0 - W + 1)
                        qi = torch.arange(b0, b1, device=self.dev).unsqueeze(1)
                        ki = torch.arange(k0, b1, device=self.dev).unsqueeze(0)
                        mask = (ki <= qi) & (ki > qi - W)
                        outs.append(self.attend(p, q[:, b0:b1], kk[:, k0:b1], vv[:, k0:b1],
                                                mask_fn=mask)[0])
                    o = torch.cat(outs)
                o = F.linear(o, p["out"], p["bout"])
            x = x + o.float()
            x = self.mlp(p, x)
        # Cross-decoder on the last token only (YOCO).
        xl, ml = x[-1:], mem[-1:]
        for p in self.L[half + 2:]:
            u = self.ln(xl, p["ln1"])
            if p["kind"] == "gmu":
                o = F.linear((F.silu(F.linear(u, p["in_proj"]).float()) * ml.float()).bfloat16(),
                             p["out_proj"])
            else:
                q, _, _ = self.split_qkv(p, u.unsqueeze(0))
                o = F.linear(self.attend(p, q, kv[0], kv[1])[0], p["out"], p["bout"])
            xl = self.mlp(p, xl + o.float())
        return F.linear(self.ln(xl, self.final), self.embed).argmax(-1)


def timed(fn, dev):
    if dev.type != "cuda":
        t0 = time.perf_counter()
        r = fn()
        return r, time.perf_counter() - t0
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    r = fn()
    b.record()
    torch.cuda.synchronize()
    return r, a.elapsed_time(b) / 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--prefill-lengths", default="2048,32768")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--json", default="")
    ap.add_argument("--tiny", action="store_true", help="the tiny test shape (smoke test)")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    c = dict(TINY if a.tiny else CFG, layers=a.layers if not a.tiny else TINY["layers"])
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    t0 = time.time()
    m = Model(c, dev)
    sync()
    print(f"torch-eager  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
          f"GPU: {name}  torch {torch.__version__}\n"
          f"model: {c['layers']} layers, random bf16 weights made in {time.time() - t0:.1f} s\n")
    res = dict(gpu=name, torch=torch.__version__, decode=[], prefill=[])

    def dump():  # after every row: a run cut short keeps what it measured
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=2)
    print("| phase | concurrency / prompt | tokens/s | time per step or prompt |\n|---|---|---|---|",
          flush=True)
    for B in [int(v) for v in a.concurrency.split(",") if v]:
        st = m.new_state(B, a.prompt + a.decode_steps + 8, a.prompt)
        ids = torch.ones(B, dtype=torch.long, device=dev)
        for _ in range(2):
            ids = m.decode_step(st, ids)
        ids, secs = timed(lambda: [m.decode_step(st, ids) for _ in range(a.decode_steps)][-1], dev)
        per = secs / a.decode_steps
        print(f"| decode | {B} (context {a.prompt}) | {B / per:.0f} | {per * 1e3:.3f} ms/step |",
              flush=True)
        res["decode"].append(dict(concurrency=B, tokens_per_s=B / per, step_ms=per * 1e3))
        dump()
        del st
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for T in [int(v) for v in a.prefill_lengths.split(",") if v]:
        ids = torch.arange(T, device=dev) * 104729 % c["vocab"]
        m.prefill(ids[:64])  # warm-up
        _, secs = timed(lambda: m.prefill(ids), dev)
        print(f"| prefill | {T} tokens | {T / secs:.0f} | {secs:.3f} s |", flush=True)
        res["prefill"].append(dict(tokens=T, tokens_per_s=T / secs, seconds=secs))
        dump()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    dump()


if __name__ == "__main__":
    main()
