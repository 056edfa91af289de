#!/usr/bin/python3
"""Soak benchmark (docs/reliability.md "Soak"): a cluster on loopback (sambay-router, 2 prefill
and 2 decode sambay-worker, tiny model) under STREAMS concurrent Generate streams for DURATION
seconds, with random client cancels and one worker killed (SIGKILL, then restarted on its port)
every KILL_EVERY seconds. Every completed stream is compared token for token with the
single-process run (sambay-run) of the same request; a cancelled one must be a prefix of it.
The RSS of every process is sampled every 10 s into rss.csv. Prints a table; exits 1 when a
target is missed (a lost, extra or different token; an RPC error other than the expected
cancels; router or worker RSS growth of 20 MB or more after the warm-up).

Run it through bench/soak.sh (which sets the defaults and the stubs path).
"""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

BIN = os.environ.get("BIN", "build/bin")
MODEL = os.path.join(BIN, "..", "models", "tiny")
STREAMS = int(os.environ.get("STREAMS", "64"))
DURATION = float(os.environ.get("DURATION", "600"))
KILL_EVERY = float(os.environ.get("KILL_EVERY", "60"))
WARMUP = float(os.environ.get("WARMUP", "60"))
CANCEL_RATE = float(os.environ.get("CANCEL_RATE", "0.1"))
OUT = os.environ.get("SOAK_OUT") or tempfile.mkdtemp(prefix="sambay_soak_")
SPECS = 48  # distinct requests, each with its reference

sys.path.insert(0, os.environ.get("SAMBAY_PYTHON_STUBS", "build/python"))
import grpc  # noqa: E402
from sambay.v1 import generate_pb2, generate_pb2_grpc  # noqa: E402


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Proc:
    """One server process started with --port-file; restartable on the same gRPC port."""

    def __init__(self, name, args):
        self.name, self.args, self.port, self.popen = name, args, 0, None

    def start(self):
        port_file = os.path.join(OUT, f"{self.name}.port")
        if os.path.exists(port_file):
            os.remove(port_file)
        args = list(self.args) + ["--port", str(self.port), "--port-file", port_file]
        log = open(os.path.join(OUT, f"{self.name}.log"), "ab")
        self.popen = subprocess.Popen(args, stdout=log, stderr=log)
        for _ in range(600):
            if os.path.exists(port_file) and os.path.getsize(port_file) > 0:
                self.port = json.load(open(port_file))["grpc_port"]
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {OUT}/{self.name}.log")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no port file")

    def kill(self):
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()


def make_specs():
    rng = random.Random(2026)
    specs = []
    for i in range(SPECS):
        prompt = [rng.randrange(1, 300) for _ in range(rng.randrange(4, 200))]
        seeded = i % 2 == 1
        specs.append({
            "prompt": prompt,
            "max_new": rng.randrange(32, 400),
            "temperature": 0.8 if seeded else 0.0,
            "top_p": 0.9 if seeded else 1.0,
            "seed": 1000 + i,
        })
    return specs


def reference(spec):
    args = [os.path.join(BIN, "sambay-run"), "generate", "--model", MODEL, "--ids",
            ",".join(map(str, spec["prompt"])), "--max-new-tokens", str(spec["max_new"]),
            "--threads", "1", "--temperature", str(spec["temperature"]), "--top-k", "0",
            "--top-p", str(spec["top_p"]), "--min-p", "0", "--repetition-penalty", "1",
            "--presence-penalty", "0", "--seed", str(spec["seed"])]
    out = subprocess.check_output(args, text=True, stderr=subprocess.DEVNULL)
    return [int(t) for t in out.split()]


def request(spec):
    req = generate_pb2.GenerateRequest()
    req.token_ids.ids.extend(spec["prompt"])
    req.sampling.temperature = spec["temperature"]
    req.sampling.top_p = spec["top_p"]
    req.sampling.seed = spec["seed"]
    req.stopping.max_new_tokens = spec["max_new"]
    req.stopping.ignore_eos = True
    return req


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.completed = self.cancelled = self.mismatched = self.tokens = 0
        self.errors = {}
        self.examples = []

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def error(self, code, detail):
        with self.lock:
            self.errors[code] = self.errors.get(code, 0) + 1
            if len(self.examples) < 5:
                self.examples.append(detail)


def client(stub, specs, refs, stop, stats, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        i = rng.randrange(len(specs))
        cancel_after = rng.randrange(1, specs[i]["max_new"]) if rng.random() < CANCEL_RATE else 0
        call = stub.Generate(request(specs[i]), timeout=120)
        got = []
        try:
            for msg in call:
                got.extend(msg.token_ids)
                if cancel_after and len(got) >= cancel_after:
                    call.cancel()
                    break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED or not cancel_after:
                stats.error(e.code().name, f"spec {i}: {e.code().name}: {e.details()}")
                continue
        if got != refs[i][:len(got)] or (not cancel_after and got != refs[i]):
            stats.add(mismatched=1)
            stats.error("MISMATCH", f"spec {i}: {len(got)} tokens, reference {len(refs[i])}")
            continue
        stats.add(tokens=len(got))
        stats.add(**({"cancelled": 1} if cancel_after else {"completed": 1}))


def metric(router_metrics_port, name):
    import urllib.request
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{router_metrics_port}/metrics",
                                      timeout=2).read().decode()
    except OSError:
        return -1
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def main():
    os.makedirs(OUT, exist_ok=True)
    specs = make_specs()
    print(f"soak: computing {len(specs)} references with sambay-run ...", flush=True)
    refs = [reference(s) for s in specs]
    worker = [os.path.join(BIN, "sambay-worker"), "--model", MODEL, "--host", "127.0.0.1",
              "--metrics-port", "0", "--threads", "1", "--log-level", "warning"]
    workers = [Proc(f"prefill{i}", worker + ["--role", "prefill"]) for i in range(2)]
    workers += [Proc(f"decode{i}", worker + ["--role", "decode"]) for i in range(2)]
    for w in workers:
        w.start()
    addr = lambda ws: ",".join(f"127.0.0.1:{w.port}" for w in ws)  # noqa: E731
    router = Proc("router", [os.path.join(BIN, "sambay-router"), "--model", MODEL, "--host",
                             "127.0.0.1", "--metrics-port", "0", "--log-level", "warning",
                             "--prefill-workers", addr(workers[:2]),
                             "--decode-workers", addr(workers[2:])])
    router.start()
    metrics_port = json.load(open(os.path.join(OUT, "router.port")))["metrics_port"]
    time.sleep(2)
    channel = grpc.insecure_channel(f"127.0.0.1:{router.port}")
    stub = generate_pb2_grpc.GenerationStub(channel)
    stats, stop = Stats(), threading.Event()
    threads = [threading.Thread(target=client, args=(stub, specs, refs, stop, stats, 7 + t))
               for t in range(STREAMS)]
    for t in threads:
        t.start()
    procs = [router] + workers
    rss = open(os.path.join(OUT, "rss.csv"), "w")
    rss.write("seconds," + ",".join(p.name for p in procs) + "\n")
    samples = []  # (t, [kB per process])
    start = time.time()
    next_kill, next_sample, kills, killed = start + KILL_EVERY, start, 0, set()
    starts = [[0.0] for _ in workers]  # when each worker's current process started
    rng = random.Random(99)
    while time.time() - start < DURATION:
        now = time.time()
        if now >= next_sample:
            row = [rss_kb(p.popen.pid) for p in procs]
            samples.append((now - start, row))
            rss.write(f"{now - start:.0f}," + ",".join(map(str, row)) + "\n")
            rss.flush()
            next_sample += 10
        if KILL_EVERY > 0 and now >= next_kill:
            victim = rng.randrange(len(workers))
            killed.add(victim)
            workers[victim].kill()
            print(f"soak: {now - start:.0f} s: killed {workers[victim].name}", flush=True)
            kills += 1
            time.sleep(5)
            workers[victim].start()  # same port: the router takes it back at a probe
            starts[victim].append(time.time() - start)
            next_kill += KILL_EVERY
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=150)
    migrations = metric(metrics_port, "sambay_router_migrations_total")
    for p in procs:
        p.kill()

    # RSS growth after the warm-up: the last sample minus the first at or after WARMUP, for the
    # router and every worker that was never killed (a restarted one starts over).
    base = next((row for t, row in samples if t >= WARMUP), samples[0][1])
    last = samples[-1][1]
    print()
    print(f"| soak | {STREAMS} streams, {DURATION:.0f} s, a worker killed every "
          f"{KILL_EVERY:.0f} s |")
    print("|---|---|")
    print(f"| completed streams (token-exact) | {stats.completed} |")
    print(f"| cancelled streams (prefix-exact) | {stats.cancelled} |")
    print(f"| tokens checked | {stats.tokens} |")
    print(f"| mismatched streams | {stats.mismatched} |")
    print(f"| RPC errors | {json.dumps(stats.errors) if stats.errors else 0} |")
    print(f"| worker kills | {kills} |")
    print(f"| migrations (router metric) | {migrations:.0f} |")
    growth_ok = True
    for i, p in enumerate(procs):
        # A worker is judged on its longest life between kills: from WARMUP into it to its end.
        lo, hi = 0.0, float("inf")
        if p is not router:
            bounds = starts[i - 1] + [float("inf")]
            lo, hi = max(zip(bounds, bounds[1:]), key=lambda b: min(b[1], DURATION) - b[0])
        life = [row[i] for t, row in samples if lo + WARMUP <= t < hi and row[i] > 0]
        if len(life) < 2:
            print(f"| RSS {p.name} (MB) | no life of {WARMUP:.0f} s after the warm-up |")
            continue
        grew = (life[-1] - life[0]) / 1024
        span = "" if p is router else f" (its life from {lo:.0f} s)"
        print(f"| RSS {p.name}: after warm-up -> end (MB){span} | {life[0] / 1024:.1f} -> "
              f"{life[-1] / 1024:.1f} ({grew:+.1f}) |")
        growth_ok = growth_ok and grew < 20
    print(f"\nlogs and rss.csv in {OUT}")
    for e in stats.examples:
        print("example error:", e)
    ok = stats.mismatched == 0 and not stats.errors and growth_ok
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
