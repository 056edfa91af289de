#!/usr/bin/env python3
"""Tests of the deployment files that need no running cluster.

- deploy/prometheus: `promtool check rules` and `promtool test rules` (each alert fires on bad
  series and stays quiet on good ones), `promtool check config`, cluster-targets.sh;
- deploy/grafana/sambay-dashboard.json: structure, variables, every selector filtered by
  namespace, the panels the deployment needs (TTFT/ITL/e2e p50 and p99, throughput, queue and
  running, state memory, handoff bytes and latency, migrations, rejections, worker health);
- deploy/Dockerfile (which cannot be built here): its build stage installs the same Debian
  packages as scripts/install-deps.sh, it copies every source folder CMakeLists.txt builds, its
  runtime stage installs every Debian package the built binaries link, and it runs as the
  chart's non-root user.

Usage: /usr/bin/python3 tests/deploy/assets_test.py --bin build/bin [unittest args]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(SRC, "build", "bin")
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROM_DIR = os.path.join(SRC, "deploy", "prometheus")
DASHBOARD = os.path.join(SRC, "deploy", "grafana", "sambay-dashboard.json")
DOCKERFILE = os.path.join(SRC, "deploy", "Dockerfile")
BINARIES = ["sambay-router", "sambay-worker", "sambay-client"]
PLUGIN = "libsambay_worker_cuda.so"  # sambay-worker --device cuda, in builds with CUDA
# Always in a Debian image (essential packages).
ESSENTIAL = {"libc6", "libgcc-s1"}


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def read(path):
    with open(path) as f:
        return f.read()


def dockerfile_stages():
    """{stage name: [instruction lines, continuations joined]} of deploy/Dockerfile."""
    text = re.sub(r"\\\n", " ", read(DOCKERFILE))
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(1) or "stage%d" % len(stages)
            stages[current] = []
        elif current:
            stages[current].append(line)
    return stages


def apt_packages(instructions):
    pkgs = set()
    for line in instructions:
        for m in re.finditer(r"apt-get install ([^&]*)", line):
            pkgs |= {w for w in m.group(1).split() if not w.startswith("-")}
    return pkgs


def install_deps_packages():
    m = re.search(r"^PACKAGES=\((.*?)^\)", read(os.path.join(SRC, "scripts", "install-deps.sh")),
                  re.S | re.M)
    assert m, "no PACKAGES=( ... ) in scripts/install-deps.sh"
    return set(m.group(1).split())


class PrometheusFilesTest(unittest.TestCase):
    def test_check_rules(self):
        r = run([PROMTOOL, "check", "rules", os.path.join(PROM_DIR, "alerts.yml")])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS: 6 rules found", r.stdout)

    def test_rule_unit_tests(self):
        r = run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=PROM_DIR)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS", r.stdout)
        # Every alert has a test in which it fires.
        tests = yaml.safe_load(read(os.path.join(PROM_DIR, "alerts_test.yml")))["tests"]
        firing = {t["alertname"] for case in tests for t in case["alert_rule_test"]
                  if t["exp_alerts"]}
        rules = yaml.safe_load(read(os.path.join(PROM_DIR, "alerts.yml")))
        self.assertEqual(firing, {r["alert"] for g in rules["groups"] for r in g["rules"]})

    def test_rules_shape(self):
        rules = yaml.safe_load(read(os.path.join(PROM_DIR, "alerts.yml")))
        for g in rules["groups"]:
            for r in g["rules"]:
                with self.subTest(alert=r["alert"]):
                    self.assertIn(r["labels"]["severity"], ("warning", "critical"))
                    self.assertTrue(r["annotations"]["summary"])
                    self.assertTrue(r["annotations"]["description"])
                    self.assertRegex(r["expr"], r"sambay_(router|worker)_")
        exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
        for metric in ("sambay_router_time_to_first_token_seconds_bucket",
                       "sambay_router_inter_token_latency_seconds_bucket",
                       "sambay_router_waiting_requests", "sambay_worker_state_memory_used_bytes",
                       "sambay_router_migrations_total"):
            self.assertIn(metric, exprs)

    def test_check_config(self):
        with tempfile.TemporaryDirectory() as d:
            for f in ("prometheus.yml", "alerts.yml"):
                shutil.copy(os.path.join(PROM_DIR, f), d)
            self.write_port_files(os.path.join(d, "cluster"))
            r = run([os.path.join(PROM_DIR, "cluster-targets.sh"), os.path.join(d, "cluster"),
                     os.path.join(d, "targets")])
            self.assertEqual(r.returncode, 0, r.stderr)
            r = run([PROMTOOL, "check", "config", os.path.join(d, "prometheus.yml")])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertNotIn("WARNING", r.stdout + r.stderr)
            config = yaml.safe_load(read(os.path.join(d, "prometheus.yml")))
            self.assertEqual(sorted(j["job_name"] for j in config["scrape_configs"]),
                             ["sambay-router", "sambay-worker"])
            self.assertEqual(config["rule_files"], ["alerts.yml"])

    @staticmethod
    def write_port_files(d):
        os.makedirs(d)
        for i, name in enumerate(("router", "prefill-0", "prefill-1", "decode-0", "both-0")):
            with open(os.path.join(d, name + ".port"), "w") as f:
                json.dump({"grpc_port": 40000 + i, "metrics_port": 41000 + i, "pid": 1}, f)

    def test_cluster_targets(self):
        with tempfile.TemporaryDirectory() as d:
            work, out = os.path.join(d, "w"), os.path.join(d, "t")
            self.write_port_files(work)
            r = run([os.path.join(PROM_DIR, "cluster-targets.sh"), work, out])
            self.assertEqual(r.returncode, 0, r.stderr)
            router = json.loads(read(os.path.join(out, "router.json")))
            workers = json.loads(read(os.path.join(out, "workers.json")))
            self.assertEqual(router, [{"targets": ["127.0.0.1:41000"],
                                       "labels": {"name": "router"}}])
            got = sorted((w["targets"][0], w["labels"]["role"], w["labels"]["name"])
                         for w in workers)
            self.assertEqual(got, [("127.0.0.1:41001", "prefill", "prefill-0"),
                                   ("127.0.0.1:41002", "prefill", "prefill-1"),
                                   ("127.0.0.1:41003", "decode", "decode-0"),
                                   ("127.0.0.1:41004", "both", "both-0")])
            self.assertEqual(sorted(os.listdir(out)), ["router.json", "workers.json"])
            os.makedirs(os.path.join(d, "empty"))
            self.assertEqual(run([os.path.join(PROM_DIR, "cluster-targets.sh"),
                                  os.path.join(d, "empty"), out]).returncode, 1)
            self.assertEqual(run([os.path.join(PROM_DIR, "cluster-targets.sh")]).returncode, 2)


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dash = json.loads(read(DASHBOARD))
        cls.panels = [p for p in cls.dash["panels"] if p["type"] != "row"]
        cls.exprs = [t["expr"] for p in cls.panels for t in p["targets"]]

    def test_structure(self):
        d = self.dash
        self.assertEqual(d["uid"], "sambay-serve")
        self.assertGreaterEqual(d["schemaVersion"], 36)
        ids = [p["id"] for p in d["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids are unique")
        variables = {v["name"]: v for v in d["templating"]["list"]}
        self.assertEqual(variables["datasource"]["type"], "datasource")
        self.assertEqual(variables["datasource"]["query"], "prometheus")
        self.assertEqual(variables["namespace"]["allValue"], ".*")
        cells = set()
        for p in d["panels"]:
            g = p["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, p["title"])
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    self.assertNotIn((x, y), cells, "panel %r overlaps another" % p["title"])
                    cells.add((x, y))
        for p in self.panels:
            with self.subTest(panel=p["title"]):
                self.assertEqual(p["datasource"], {"type": "prometheus", "uid": "${datasource}"})
                self.assertTrue(p["targets"])
                self.assertTrue(p["fieldConfig"]["defaults"]["unit"])
                refs = [t["refId"] for t in p["targets"]]
                self.assertEqual(len(refs), len(set(refs)))

    def test_every_selector_filters_namespace(self):
        for e in self.exprs:
            for m in re.finditer(r"\bsambay_[a-z0-9_]+", e):
                self.assertTrue(e[m.end():].startswith('{namespace=~"$namespace"'),
                                "%s in %s" % (m.group(0), e))

    def test_required_panels(self):
        text = "\n".join(self.exprs)
        for metric in ("sambay_router_time_to_first_token_seconds",
                       "sambay_router_inter_token_latency_seconds",
                       "sambay_router_e2e_request_latency_seconds"):
            for q in ("0.5", "0.99"):
                self.assertIn("histogram_quantile(%s, sum by (le) (rate(%s_bucket" % (q, metric),
                              text)
        for needle in ("rate(sambay_router_generation_tokens_total",     # throughput
                       "sambay_router_waiting_requests", "sambay_router_running_requests",
                       "sambay_worker_running_sequences", "sambay_worker_waiting_sequences",
                       "sambay_worker_state_memory_used_bytes",          # state memory
                       "rate(sambay_worker_state_transfer_bytes_total",  # handoff bytes
                       "sambay_worker_state_transfer_seconds_bucket",    # handoff latency
                       "sambay_router_migrations_total",
                       "sambay_router_rejections_total", "sambay_worker_rejections_total",
                       "sambay_router_worker_up"):                       # per-worker health
            self.assertIn(needle, text)


class DockerfileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.stages = dockerfile_stages()

    def test_multi_stage_on_cuda_images(self):
        text = read(DOCKERFILE)
        self.assertIn("build", self.stages)
        self.assertIn("runtime", self.stages)
        self.assertEqual(list(self.stages)[-1], "runtime", "the last stage is the image")
        self.assertRegex(text, r"CUDA_RUNTIME_IMAGE=nvidia/cuda:\$\{CUDA_VERSION\}-runtime-")
        self.assertRegex(text, r"CUDA_DEVEL_IMAGE=nvidia/cuda:\$\{CUDA_VERSION\}-devel-")
        runtime = " ".join(self.stages["runtime"])
        self.assertIn("COPY --from=cuda-runtime", runtime)
        self.assertIn("NVIDIA_VISIBLE_DEVICES", runtime)

    def test_build_stage_has_install_deps_packages(self):
        self.assertEqual(apt_packages(self.stages["build"]), install_deps_packages())

    def test_copies_every_source_folder(self):
        subdirs = set(re.findall(r"add_subdirectory\((\w+)\)", read(os.path.join(SRC,
                                                                             "CMakeLists.txt"))))
        subdirs.discard("tests")
        copied = set()
        for line in self.stages["build"]:
            m = re.fullmatch(r"COPY\s+(\S+)\s+(\S+)", line)
            if m:
                copied.add(m.group(1).rstrip("/"))
        self.assertIn("CMakeLists.txt", copied)
        self.assertEqual(subdirs - copied, set(), "source folders the image build misses")
        self.assertIn("-DSAMBAY_BUILD_TESTS=OFF", " ".join(self.stages["build"]))

    def test_runtime_is_binaries_only_and_non_root(self):
        runtime = self.stages["runtime"]
        pkgs = apt_packages(runtime)
        for dev in pkgs:
            self.assertFalse(dev.endswith("-dev"), dev)
        self.assertNotIn("build-essential", pkgs)
        copies = [l for l in runtime if l.startswith("COPY --from=build")]
        self.assertEqual(copies, ["COPY --from=build /out/ /usr/local/bin/"])
        build = " ".join(self.stages["build"])
        for b in BINARIES:
            self.assertIn("/build/bin/%s" % b, build)
        # The CUDA plugin of sambay-worker (worker/gpu_plugin.h) goes beside it, when built.
        self.assertIn("install -m 0644 -s /build/bin/%s /out/" % PLUGIN, build)
        user = [l.split()[1] for l in runtime if l.startswith("USER ")]
        self.assertEqual(len(user), 1)
        uid, gid = user[0].split(":")
        values = yaml.safe_load(read(os.path.join(SRC, "helm", "sambay", "values.yaml")))
        self.assertEqual(int(uid), values["podSecurityContext"]["runAsUser"])
        self.assertEqual(int(gid), values["podSecurityContext"]["runAsGroup"])
        self.assertNotEqual(int(uid), 0)
        exposed = {int(p) for l in runtime if l.startswith("EXPOSE ") for p in l.split()[1:]}
        self.assertEqual(exposed, {values["router"]["grpcPort"], values["router"]["metricsPort"],
                                   values["router"]["http"]["port"],
                                   values["prefill"]["grpcPort"],
                                   values["prefill"]["metricsPort"]})

    def test_runtime_has_every_linked_library(self):
        """Every shared library the built binaries link comes from a package the runtime stage
        installs (or from the CUDA libraries it copies)."""
        if not shutil.which("dpkg"):
            self.skipTest("no dpkg")
        wanted = apt_packages(self.stages["runtime"]) | ESSENTIAL
        libs = set()
        plugin = [PLUGIN] if os.path.exists(os.path.join(BIN, PLUGIN)) else []
        for b in BINARIES + plugin:
            path = os.path.join(BIN, b)
            self.assertTrue(os.access(path, os.R_OK), "%s: build first" % path)
            out = run(["ldd", path]).stdout
            for line in out.splitlines():
                m = re.match(r"\s*(\S+) => (\S+)", line)
                if not m:
                    continue
                if m.group(2) == "not":  # not found: the GPU driver (mounted at run time)
                    self.assertTrue(m.group(1).startswith(("libcuda.so", "libnvidia")), line)
                    continue
                libs.add(m.group(2))
        self.assertTrue(libs)
        def candidates(lib):
            # Debian 12 merges /lib into /usr/lib; dpkg knows each file under one of the names.
            real = os.path.realpath(lib)
            for p in (lib, real):
                yield p
                yield "/usr" + p if p.startswith("/lib") else p.replace("/usr/lib/", "/lib/", 1)
        libs = {l for l in libs if not os.path.realpath(l).startswith("/usr/local/cuda") and
                not l.startswith("/usr/local/cuda")}  # CUDA libraries: copied from cuda-runtime
        owners = {}
        out = run(["dpkg", "-S"] + sorted({c for l in libs for c in candidates(l)})).stdout
        for line in out.splitlines():
            pkg, _, path = line.partition(": ")
            owners[path.strip()] = pkg.split(":")[0].split(",")[0].strip()
        for lib in sorted(libs):
            owner = next((owners[c] for c in candidates(lib) if c in owners), None)
            with self.subTest(lib=lib):
                self.assertIsNotNone(owner, "%s belongs to no Debian package" % lib)
                self.assertIn(owner, wanted, "%s (package %s) is missing from the runtime stage"
                              % (lib, owner))


def main():
    global BIN
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=BIN)
    args, rest = parser.parse_known_args()
    BIN = os.path.abspath(args.bin)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
