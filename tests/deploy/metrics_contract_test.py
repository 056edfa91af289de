#!/usr/bin/env python3
"""The metrics contract, against a live local cluster and a real Prometheus server.

Starts deploy/local/cluster.sh (a router, one prefill and one decode worker on loopback, free
ports) and a Prometheus server (Debian's `prometheus`) on loopback with the shipped
deploy/prometheus/prometheus.yml (1 s scrape interval) and targets written by
deploy/prometheus/cluster-targets.sh. Then runs requests through sambay-client: several served,
one rejected (INVALID_ARGUMENT) and one cancelled by the client mid-stream. Checks:

- `promtool check metrics` reports nothing for the router and both workers;
- the required series exist with the right types; histograms are well formed;
- histogram _count values and counters equal the requests served (and token counts agree
  between the router and the workers); gauges are back to zero;
- every metric a Grafana dashboard panel uses is in the live output, and every panel
  expression, sent to Prometheus's HTTP API, returns data (finite values);
- the alert rules load and evaluate without error, and none fires on a healthy cluster.

Usage: /usr/bin/python3 tests/deploy/metrics_contract_test.py --bin build/bin [unittest args]
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import yaml

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(SRC, "build", "bin")
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DASHBOARD = os.path.join(SRC, "deploy", "grafana", "sambay-dashboard.json")
STARTUP_TIMEOUT = 120

# Served requests: (sambay-client prompt flags, max_new_tokens); with --ignore-eos each ends
# LENGTH after exactly max_new_tokens tokens.
SERVED = [
    (["--prompt", "The quick brown fox"], 8),
    (["--prompt", "Hello"], 4),
    (["--ids", "3,14,15,92,65"], 12),
    (["--chat", "Why is the sky blue?"], 6),
    (["--prompt", "Metrics are a contract."], 10),
    (["--ids", "7,7,7"], 5),
]
CANCELLED_IDS = "3,14,15"  # prompt of the request the client cancels mid-stream
CANCEL_AFTER_LINES = 20     # tokens received before the client is interrupted

ROUTER_TYPES = {
    "sambay_router_time_to_first_token_seconds": "histogram",
    "sambay_router_inter_token_latency_seconds": "histogram",
    "sambay_router_e2e_request_latency_seconds": "histogram",
    "sambay_router_request_queue_time_seconds": "histogram",
    "sambay_router_prompt_tokens_total": "counter",
    "sambay_router_generation_tokens_total": "counter",
    "sambay_router_requests_total": "counter",
    "sambay_router_request_failures_total": "counter",
    "sambay_router_rejections_total": "counter",
    "sambay_router_migrations_total": "counter",
    "sambay_router_running_requests": "gauge",
    "sambay_router_waiting_requests": "gauge",
    "sambay_router_worker_up": "gauge",
}
WORKER_TYPES = {
    "sambay_worker_info": "gauge",
    "sambay_worker_running_sequences": "gauge",
    "sambay_worker_waiting_sequences": "gauge",
    "sambay_worker_slots_used": "gauge",
    "sambay_worker_slots_limit": "gauge",
    "sambay_worker_state_memory_used_bytes": "gauge",
    "sambay_worker_state_memory_total_bytes": "gauge",
    "sambay_worker_prefill_seconds": "histogram",
    "sambay_worker_decode_step_seconds": "histogram",
    "sambay_worker_batch_size": "histogram",
    "sambay_worker_queue_seconds": "histogram",
    "sambay_worker_state_transfer_seconds": "histogram",
    "sambay_worker_tokens_total": "counter",
    "sambay_worker_state_transfer_bytes_total": "counter",
    "sambay_worker_sequences_finished_total": "counter",
    "sambay_worker_rejections_total": "counter",
    "sambay_worker_failures_total": "counter",
}
# Label values every labelled family exposes from the start (so rate() and alerts see zeros).
LABEL_VALUES = {
    "sambay_router_requests_total": ("finish_reason", {"stop", "length", "abort", "error"}),
    "sambay_router_rejections_total": ("reason", {"queue_full", "invalid", "draining", "unauthenticated"}),
    "sambay_worker_tokens_total": ("phase", {"prefill", "decode"}),
    "sambay_worker_state_transfer_bytes_total": ("direction", {"sent", "received"}),
    "sambay_worker_sequences_finished_total": (
        "reason", {"stop", "length", "handed_off", "cancelled", "error"}),
    "sambay_worker_rejections_total": ("reason", {"slots", "memory", "draining", "role"}),
}


# ---- small helpers ----------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(what, predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def parse_metrics(text):
    """Prometheus text format -> (types {family: type}, samples {(name, labels tuple): value})."""
    types, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)(?: \d+)?", line)
        assert m, "unparsable sample line: %r" % line
        labels = tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"',
                                         m.group(3) or "")))
        samples[(m.group(1), labels)] = float(m.group(4).replace("Nan", "NaN"))
    return types, samples


class Scrape:
    def __init__(self, text):
        self.text = text
        self.types, self.samples = parse_metrics(text)

    def get(self, name, **labels):
        want = tuple(sorted(labels.items()))
        return self.samples[(name, want)]

    def sum(self, name, **match):
        return sum(v for (n, labels), v in self.samples.items()
                   if n == name and all(dict(labels).get(k) == x for k, x in match.items()))

    def names(self):
        return {n for n, _ in self.samples}


def dashboard_targets():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["refId"], t["expr"]))
    return out


def concrete(expr):
    """A dashboard expression with Grafana's variables replaced by what a live query uses."""
    expr = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")
    assert "$" not in expr, "unhandled dashboard variable in %s" % expr
    return expr


# ---- the scenario, run once -------------------------------------------------------------------

class Cluster:
    """deploy/local/cluster.sh on free ports, in a work folder of the test."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "cluster")
        self.log = open(os.path.join(workdir, "cluster.log"), "w")
        self.proc = subprocess.Popen(
            [os.path.join(SRC, "deploy", "local", "cluster.sh"), "--bin", BIN, "--port", "0",
             "--workdir", self.dir, "--timeout", str(STARTUP_TIMEOUT),
             "--worker-args", "--threads 1 --log-level warning",
             "--router-args", "--log-level warning --health-interval-seconds 0.5"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        address_file = os.path.join(self.dir, "router.address")

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("cluster.sh exited %d: %s" % (self.proc.returncode,
                                                                   self.tail()))
            if not os.path.exists(address_file):
                return None
            with open(address_file) as f:
                return f.read().strip()
        self.address = wait_for("the cluster", ready, STARTUP_TIMEOUT + 30)
        self.ports = {}
        for name in ("router", "prefill-0", "decode-0"):
            with open(os.path.join(self.dir, name + ".port")) as f:
                self.ports[name] = json.load(f)

    def metrics_url(self, name):
        return "http://127.0.0.1:%d/metrics" % self.ports[name]["metrics_port"]

    def scrape(self, name):
        return Scrape(http_get(self.metrics_url(name)))

    def tail(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-3000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Belt and braces: no process of ours outlives the test.
        for p in getattr(self, "ports", {}).values():
            if alive(p["pid"]):
                os.kill(p["pid"], signal.SIGKILL)
        self.log.close()


class Prometheus:
    """A Prometheus server on a free loopback port with the shipped config (1 s intervals)."""

    def __init__(self, workdir, cluster_dir):
        self.dir = os.path.join(workdir, "prometheus")
        os.makedirs(self.dir)
        shipped = os.path.join(SRC, "deploy", "prometheus")
        with open(os.path.join(shipped, "prometheus.yml")) as f:
            config = yaml.safe_load(f)
        config["global"].update(scrape_interval="1s", scrape_timeout="1s",
                                evaluation_interval="1s")
        for job in config["scrape_configs"]:
            for sd in job.get("file_sd_configs", []):
                sd["refresh_interval"] = "1s"
        with open(os.path.join(self.dir, "prometheus.yml"), "w") as f:
            yaml.safe_dump(config, f)
        for rules in config["rule_files"]:
            shutil.copy(os.path.join(shipped, rules), self.dir)
        subprocess.run([os.path.join(shipped, "cluster-targets.sh"), cluster_dir,
                        os.path.join(self.dir, "targets")], check=True, capture_output=True)
        self.url = "http://127.0.0.1:%d" % free_port()
        self.log = open(os.path.join(workdir, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, "--config.file=" + os.path.join(self.dir, "prometheus.yml"),
             "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
             "--web.listen-address=" + self.url[len("http://"):], "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("prometheus exited %d" % self.proc.returncode)
            try:
                return http_get(self.url + "/-/ready", timeout=1) is not None
            except OSError:
                return False
        wait_for("Prometheus to be ready", ready, 60)

    def api(self, path, **params):
        url = self.url + "/api/v1/" + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        body = json.loads(http_get(url))
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr):
        return self.api("query", query=expr)

    def scalar(self, expr):
        r = self.query(expr)["result"]
        return float(r[0]["value"][1]) if r else None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def client(address, *args):
    return subprocess.run([os.path.join(BIN, "sambay-client"), "--address", address,
                           "--timeout", "60"] + list(args),
                          capture_output=True, text=True, timeout=90)


class MetricsContractTest(unittest.TestCase):
    cluster = prometheus = None
    workdir = None

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="sambay-metrics-")
        try:
            cls.run_scenario()
        except BaseException:
            cls.dump_logs()
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.prometheus:
            cls.prometheus.stop()
            cls.prometheus = None
        if cls.cluster:
            cls.cluster.stop()
            cls.cluster = None
        if cls.workdir and not os.environ.get("SAMBAY_KEEP_TEST_DIR"):
            shutil.rmtree(cls.workdir, ignore_errors=True)

    @classmethod
    def dump_logs(cls):
        for name in ("cluster.log", "prometheus.log"):
            path = os.path.join(cls.workdir, name)
            if os.path.exists(path):
                with open(path) as f:
                    sys.stderr.write("---- %s (last lines)\n%s\n" % (name, f.read()[-3000:]))

    @classmethod
    def run_scenario(cls):
        t0 = time.monotonic()
        cls.cluster = Cluster(cls.workdir)
        address = cls.cluster.address
        cls.prometheus = Prometheus(cls.workdir, cls.cluster.dir)
        # Every target scraped once before the requests: rate() then sees them happen.
        def targets_up():
            active = cls.prometheus.api("targets")["activeTargets"]
            return len(active) == 3 and all(t["health"] == "up" for t in active)
        wait_for("3 Prometheus targets up", targets_up, 30, interval=0.2)
        cls.startup_seconds = time.monotonic() - t0

        # Served requests.
        cls.usages = []
        for prompt, n in SERVED:
            r = client(address, *prompt, "--max-new-tokens", str(n), "--ignore-eos", "--json",
                       "--quiet")
            assert r.returncode == 0, "sambay-client %s: exit %d: %s" % (prompt, r.returncode,
                                                                          r.stderr)
            last = json.loads(r.stdout.strip().splitlines()[-1])
            assert last["finish_reason"] == "LENGTH", last
            cls.usages.append(last["usage"])
        # Rejected before reaching a worker.
        r = client(address, "--prompt", "x", "--temperature", "-1", "--quiet")
        assert r.returncode == 3, "invalid request: exit %d: %s" % (r.returncode, r.stderr)
        assert "INVALID_ARGUMENT" in r.stderr, r.stderr
        # Cancelled by the client mid-stream (Ctrl-C), after the handoff.
        p = subprocess.Popen([os.path.join(BIN, "sambay-client"), "--address", address,
                              "--ids", CANCELLED_IDS, "--max-new-tokens", "4000", "--ignore-eos",
                              "--json", "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(CANCEL_AFTER_LINES):
            line = p.stdout.readline()
            assert line and "finish_reason" not in line, "the stream ended before the cancel"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        assert p.returncode == 130, "cancelled client: exit %d: %s" % (p.returncode, err)

        # Everything settled: no sequence left anywhere, the decode worker saw the cancel.
        def settled():
            r, pf, d = (cls.cluster.scrape(n) for n in ("router", "prefill-0", "decode-0"))
            busy = (r.get("sambay_router_running_requests") +
                    r.get("sambay_router_waiting_requests") +
                    sum(s.get(g) for s in (pf, d) for g in (
                        "sambay_worker_running_sequences", "sambay_worker_waiting_sequences",
                        "sambay_worker_slots_used", "sambay_worker_state_memory_used_bytes")))
            cancelled = d.get("sambay_worker_sequences_finished_total", reason="cancelled")
            return busy == 0 and cancelled == 1 and (r, pf, d)
        cls.router, cls.prefill, cls.decode = wait_for("the cluster to settle", settled, 20)
        cls.scrapes = {"router": cls.router, "prefill-0": cls.prefill, "decode-0": cls.decode}

        # Prometheus has scraped the final values, and evaluated the rules since.
        n = float(len(SERVED))
        wait_for("Prometheus to scrape the final counters", lambda: (
            cls.prometheus.scalar('sum(sambay_router_requests_total)') == n and
            cls.prometheus.scalar(
                'sum(sambay_worker_sequences_finished_total{reason="cancelled"})') == 1.0),
            30, interval=0.2)
        time.sleep(2.5)
        cls.scenario_seconds = time.monotonic() - t0
        sys.stderr.write("metrics contract: cluster + Prometheus up in %.1f s, scenario %.1f s\n"
                         % (cls.startup_seconds, cls.scenario_seconds))

    # ---- promtool and types -------------------------------------------------------------------

    def test_promtool_check_metrics_reports_nothing(self):
        for name, s in self.scrapes.items():
            with self.subTest(process=name):
                r = subprocess.run([PROMTOOL, "check", "metrics"], input=s.text,
                                   capture_output=True, text=True)
                self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""))

    def test_required_series_and_types(self):
        for name, want in (("router", ROUTER_TYPES), ("prefill-0", WORKER_TYPES),
                           ("decode-0", WORKER_TYPES)):
            s = self.scrapes[name]
            for family, kind in want.items():
                with self.subTest(process=name, family=family):
                    self.assertEqual(s.types.get(family), kind)
                    if kind == "histogram":
                        for suffix in ("_bucket", "_sum", "_count"):
                            self.assertIn(family + suffix, s.names())
                    else:
                        self.assertIn(family, s.names())
            for family, (label, values) in LABEL_VALUES.items():
                if family in want:
                    got = {dict(k[1])[label] for k in s.samples if k[0] == family}
                    self.assertEqual(got, values, family)
        for family in ("sambay_router_requests_total", "sambay_router_rejections_total",
                       "sambay_router_request_failures_total"):
            self.assertEqual({dict(k[1])["api"] for k in self.router.samples if k[0] == family},
                             {"grpc", "http"}, family)
        self.assertEqual({dict(k[1])["reason"] for k in self.router.samples
                          if k[0] == "sambay_router_request_failures_total"},
                         {"no_worker", "prefill_failed", "decode_failed", "migration_limit",
                          "deadline", "cancelled", "internal", "slow_client"})

    def test_histograms_are_well_formed(self):
        for name, s in self.scrapes.items():
            for family, kind in s.types.items():
                if kind != "histogram":
                    continue
                groups = {}
                for (n, labels), v in s.samples.items():
                    if n == family + "_bucket":
                        rest = tuple(x for x in labels if x[0] != "le")
                        le = dict(labels)["le"]
                        groups.setdefault(rest, []).append((float(le), v))
                self.assertTrue(groups, family)
                for rest, buckets in groups.items():
                    with self.subTest(process=name, family=family, labels=rest):
                        buckets.sort()
                        self.assertEqual(buckets[-1][0], math.inf)
                        counts = [c for _, c in buckets]
                        self.assertEqual(counts, sorted(counts), "buckets are cumulative")
                        self.assertEqual(counts[-1], s.samples[(family + "_count", rest)])
                        self.assertGreaterEqual(s.samples[(family + "_sum", rest)], 0)

    # ---- counts equal the requests served -------------------------------------------------

    def test_router_counts(self):
        r = self.router
        served = len(SERVED)
        admitted = served + 1  # the cancelled request was admitted and got tokens
        self.assertEqual(r.get("sambay_router_e2e_request_latency_seconds_count"), admitted)
        self.assertEqual(r.get("sambay_router_request_queue_time_seconds_count"), admitted)
        self.assertEqual(r.get("sambay_router_time_to_first_token_seconds_count"), admitted)
        self.assertEqual(r.get("sambay_router_requests_total", finish_reason="length", api="grpc"), served)
        self.assertEqual(r.sum("sambay_router_requests_total"), served)
        self.assertEqual(r.get("sambay_router_rejections_total", reason="invalid", api="grpc"), 1)
        self.assertEqual(r.sum("sambay_router_rejections_total"), 1)
        self.assertEqual(r.get("sambay_router_migrations_total"), 0)
        # The client that went away is counted as "cancelled" once; nothing else failed.
        self.assertEqual(r.sum("sambay_router_request_failures_total", reason="cancelled"), 1)
        self.assertEqual(r.sum("sambay_router_request_failures_total") -
                         r.sum("sambay_router_request_failures_total", reason="cancelled"), 0)
        prompt = sum(u["prompt_tokens"] for u in self.usages) + len(CANCELLED_IDS.split(","))
        self.assertEqual(r.get("sambay_router_prompt_tokens_total"), prompt)
        completion = sum(u["completion_tokens"] for u in self.usages)
        self.assertEqual(completion, sum(n for _, n in SERVED))
        generated = r.get("sambay_router_generation_tokens_total")
        self.assertGreaterEqual(generated, completion + CANCEL_AFTER_LINES)
        # One TTFT observation per first token, one inter-token gap per later token.
        self.assertEqual(r.get("sambay_router_time_to_first_token_seconds_count") +
                         r.get("sambay_router_inter_token_latency_seconds_count"), generated)
        # Latencies agree with what the clients were told.
        self.assertGreaterEqual(r.get("sambay_router_time_to_first_token_seconds_sum"),
                                sum(u["time_to_first_token_seconds"] for u in self.usages) * 0.99)

    def test_worker_counts(self):
        pf, d = self.prefill, self.decode
        transfers = len(SERVED) + 1
        self.assertEqual(pf.get("sambay_worker_prefill_seconds_count"), transfers)
        self.assertEqual(d.get("sambay_worker_prefill_seconds_count"), 0)
        self.assertEqual(pf.get("sambay_worker_queue_seconds_count"), transfers)
        self.assertEqual(d.get("sambay_worker_queue_seconds_count"), transfers)
        self.assertEqual(pf.get("sambay_worker_tokens_total", phase="prefill"),
                         self.router.get("sambay_router_prompt_tokens_total"))
        self.assertEqual(pf.get("sambay_worker_tokens_total", phase="decode"), 0)
        self.assertEqual(pf.get("sambay_worker_sequences_finished_total", reason="handed_off"),
                         transfers)
        self.assertEqual(pf.sum("sambay_worker_sequences_finished_total"), transfers)
        self.assertEqual(d.get("sambay_worker_sequences_finished_total", reason="length"),
                         len(SERVED))
        self.assertEqual(d.get("sambay_worker_sequences_finished_total", reason="cancelled"), 1)
        self.assertEqual(d.sum("sambay_worker_sequences_finished_total"), transfers)
        # The handoff: one transfer per request each side, the same bytes sent and received,
        # at least what the clients' usage reported.
        self.assertEqual(pf.get("sambay_worker_state_transfer_seconds_count", direction="sent"),
                         transfers)
        self.assertEqual(d.get("sambay_worker_state_transfer_seconds_count",
                               direction="received"), transfers)
        sent = pf.get("sambay_worker_state_transfer_bytes_total", direction="sent")
        self.assertEqual(sent, d.get("sambay_worker_state_transfer_bytes_total",
                                     direction="received"))
        self.assertGreater(sent, sum(u["transfer_bytes"] for u in self.usages))
        # The decode worker ran each served request's tokens after the first (the prefill
        # worker sampled that one), and some of the cancelled one's.
        decoded = d.get("sambay_worker_tokens_total", phase="decode")
        self.assertGreaterEqual(decoded, sum(n - 1 for _, n in SERVED) + CANCEL_AFTER_LINES - 1)
        self.assertGreaterEqual(d.get("sambay_worker_batch_size_count"),
                                d.get("sambay_worker_decode_step_seconds_count"))
        for s in (pf, d):
            self.assertEqual(s.sum("sambay_worker_failures_total"), 0)
            self.assertEqual(s.sum("sambay_worker_rejections_total"), 0)

    def test_gauges_and_identity(self):
        r = self.router
        self.assertEqual(r.get("sambay_router_running_requests"), 0)
        self.assertEqual(r.get("sambay_router_waiting_requests"), 0)
        up = {(dict(k[1])["worker"], dict(k[1])["role"]): v for k, v in r.samples.items()
              if k[0] == "sambay_router_worker_up"}
        self.assertEqual(up, {
            ("127.0.0.1:%d" % self.cluster.ports["prefill-0"]["grpc_port"], "prefill"): 1,
            ("127.0.0.1:%d" % self.cluster.ports["decode-0"]["grpc_port"], "decode"): 1})
        for name, role in (("prefill-0", "prefill"), ("decode-0", "decode")):
            s = self.scrapes[name]
            info = [dict(k[1]) for k in s.samples if k[0] == "sambay_worker_info"]
            self.assertEqual(len(info), 1)
            self.assertEqual(info[0]["role"], role)
            self.assertEqual(s.get("sambay_worker_info", **info[0]), 1)
            for g in ("sambay_worker_running_sequences", "sambay_worker_waiting_sequences",
                      "sambay_worker_slots_used", "sambay_worker_state_memory_used_bytes"):
                self.assertEqual(s.get(g), 0, "%s %s" % (name, g))
            self.assertEqual(s.get("sambay_worker_slots_limit"), 64)
            self.assertEqual(s.get("sambay_worker_state_memory_total_bytes"), 4096 << 20)
        # Both workers serve the same model.
        fingerprints = {dict(k[1])["fingerprint"] for s in (self.prefill, self.decode)
                        for k in s.samples if k[0] == "sambay_worker_info"}
        self.assertEqual(len(fingerprints), 1)

    # ---- the dashboard and the alerts against the live metrics --------------------------------

    def test_dashboard_metrics_exist(self):
        live = set()
        for s in self.scrapes.values():
            live |= s.names()
        targets = dashboard_targets()
        self.assertGreaterEqual(len(targets), 20)
        for title, ref, expr in targets:
            names = set(re.findall(r"\bsambay_[a-z0-9_]+", expr))
            self.assertTrue(names, "%s/%s uses no sambay_ metric" % (title, ref))
            for n in names:
                self.assertIn(n, live, "panel %r (%s) uses %s" % (title, ref, n))

    def test_dashboard_queries_return_data(self):
        for title, ref, expr in dashboard_targets():
            with self.subTest(panel=title, ref=ref):
                data = self.prometheus.query(concrete(expr))
                self.assertEqual(data["resultType"], "vector")
                self.assertTrue(data["result"], "no data for %s" % concrete(expr))
                for sample in data["result"]:
                    self.assertTrue(math.isfinite(float(sample["value"][1])),
                                    "%s: %s" % (concrete(expr), sample))
        # The throughput and latency panels saw the requests.
        p = self.prometheus
        self.assertGreater(p.scalar("sum(rate(sambay_router_generation_tokens_total[5m]))"), 0)
        self.assertGreater(p.scalar('histogram_quantile(0.99, sum by (le) (rate('
                                    'sambay_router_time_to_first_token_seconds_bucket[5m])))'), 0)

    def test_targets(self):
        active = self.prometheus.api("targets")["activeTargets"]
        jobs = sorted((t["labels"]["job"], t["labels"].get("role", "")) for t in active)
        self.assertEqual(jobs, [("sambay-router", ""), ("sambay-worker", "decode"),
                                ("sambay-worker", "prefill")])
        for t in active:
            self.assertEqual(t["health"], "up", t)

    def test_alert_rules_evaluate_and_stay_quiet(self):
        with open(os.path.join(SRC, "deploy", "prometheus", "alerts.yml")) as f:
            shipped = yaml.safe_load(f)
        want = sorted(r["alert"] for g in shipped["groups"] for r in g["rules"])
        groups = self.prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        self.assertEqual(sorted(r["name"] for r in rules), want)
        for r in rules:
            with self.subTest(alert=r["name"]):
                self.assertEqual(r["health"], "ok", r.get("lastError"))
                self.assertEqual(r.get("lastError", ""), "")
                self.assertFalse(r["lastEvaluation"].startswith("0001-"), "never evaluated")
                self.assertEqual(r["state"], "inactive")
        self.assertEqual(self.prometheus.api("alerts")["alerts"], [])
        # The alert expressions' inputs are live series (their left-hand sides return data).
        for g in shipped["groups"]:
            for rule in g["rules"]:
                lhs = re.sub(r"\s*(>|==)\s*[0-9.]+$", "", rule["expr"])
                with self.subTest(alert=rule["alert"], lhs=lhs):
                    self.assertTrue(self.prometheus.query(lhs)["result"])


def main():
    global BIN
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=BIN)
    args, rest = parser.parse_known_args()
    BIN = os.path.abspath(args.bin)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
