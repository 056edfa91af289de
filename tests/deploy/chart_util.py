"""Helpers of tests/deploy/chart_test.py and chart_secure_test.py: the chart's paths and
constants, a helm runner, values merging, rendered-object lookups, the binaries' --help flags and
the locked-down profile's expectations (health ports, Secret mounts).

HELM and BIN are set by main() from the arguments."""
import argparse
import copy
import glob
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
CHART = os.path.join(SRC, "helm", "sambay")
HELM = os.path.join(SRC, ".tools", "bin", "helm")
BIN = None  # --bin: check the rendered flags against sambay-router/sambay-worker --help
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
NAMESPACE = "inference"
RELEASE = "rel"
FULLNAME = "rel-sambay"
WORKER_ROLES = ("prefill", "decode")
COMPONENTS = ("router",) + WORKER_ROLES
READINESS = {"router": "sambay.v1.Generation", "prefill": "sambay.v1.Worker",
             "decode": "sambay.v1.Worker"}
# Longest model load the startup probe must allow, in seconds.
MIN_WORKER_STARTUP_SECONDS = 600


def run(cmd, check=True, env=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError("%s exited %d:\n%s%s" % (" ".join(cmd), proc.returncode,
                                                      proc.stdout, proc.stderr))
    return proc


class Helm:
    """Runs helm with its cache, config and data homes in a private temporary folder."""

    def __init__(self, binary):
        self.binary = binary
        self.home = tempfile.mkdtemp(prefix="sambay-helm-")
        self.env = dict(os.environ)
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            self.env[var] = os.path.join(self.home, var.lower())

    def __call__(self, *args, check=True):
        return run([self.binary] + list(args), check=check, env=self.env)

    def render(self, values_file=None, sets=(), check=True):
        args = ["template", RELEASE, CHART, "--namespace", NAMESPACE]
        if values_file:
            args += ["-f", values_file]
        for s in sets:
            args += ["--set", s]
        proc = self(*args, check=check)
        if proc.returncode != 0:
            return proc
        return [d for d in yaml.safe_load_all(proc.stdout) if d]


def merge(base, override):
    """Helm's coalescing of a values file over the defaults: maps merge, null deletes."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def matches(selector, labels):
    """A matchLabels selector selects these labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def flags(args):
    """['--a=1', '--b=x'] -> {'a': '1', 'b': 'x'}; every chart flag uses the --name=value form."""
    out = {}
    for a in args:
        m = re.fullmatch(r"--([a-z0-9-]+)=(.*)", a)
        assert m, "argument %r is not --name=value" % a
        out[m.group(1)] = m.group(2)
    return out


_KNOWN_FLAGS = {}


def known_flags(binary):
    """The flags `binary --help` lists (`  --name (SAMBAY_NAME; default ...)`)."""
    if binary not in _KNOWN_FLAGS:
        path = os.path.join(BIN, binary)
        out = run([path, "--help"])
        names = set(re.findall(r"^\s+--([a-z0-9-]+) \(SAMBAY_", out.stdout + out.stderr, re.M))
        assert len(names) > 5, "%s --help lists no flags" % path
        _KNOWN_FLAGS[binary] = names
    return _KNOWN_FLAGS[binary]


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def sets_to_values(sets):
    """["a.b=1", "c=x"] -> {"a": {"b": 1}, "c": "x"} (values as --set gives them)."""
    override = {}
    for s in sets:
        key, value = s.split("=", 1)
        node = override
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return override


def health_port(component, values):
    """The port a component's gRPC probes use when the port they would probe has TLS (the
    kubelet cannot do TLS): the router's with router.tls and gRPC probes, the workers' with
    internalTLS; None when they probe the main port."""
    v = values[component]
    if component == "router":
        on = v["tls"]["enabled"] and v["probes"]["type"] == "grpc"
    else:
        on = values["internalTLS"]["enabled"]
    return v["healthPort"] if on else None


def values_cases():
    files = sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml")))
    return [("default", None)] + [(os.path.basename(f), f) for f in files]


# Container objects whose keys are the user's (not listed key by key in the README).
FREE_FORM = {"resources", "nodeSelector", "affinity", "podSecurityContext",
             "containerSecurityContext", "podAnnotations", "podLabels", "annotations", "labels",
             "behavior", "probes"}

ALERTS = ("SambayHighTimeToFirstToken", "SambayHighInterTokenLatency", "SambayRequestQueueBacklog",
          "SambayStateMemoryHigh", "SambayMigrations", "SambayWorkerDown")


# Where the chart mounts each Secret volume (read-only) in the containers.
SECRET_DIRS = {"tls": "/etc/sambay/tls", "client-ca": "/etc/sambay/client-ca",
               "api-keys": "/etc/sambay/api-keys", "internal-tls": "/etc/sambay/internal-tls",
               "metrics-tls": "/etc/sambay/metrics-tls",
               "metrics-token": "/etc/sambay/metrics-token"}


def leaf_paths(values, prefix=""):
    """Dotted paths of the values a user sets; objects in FREE_FORM count as one value."""
    out = []
    for k, v in values.items():
        path = prefix + k
        if isinstance(v, dict) and v and k not in FREE_FORM:
            out += leaf_paths(v, path + ".")
        else:
            out.append(path)
    return out


def main():
    """Runs the unittest classes of __main__: --helm (default .tools/bin/helm) and --bin (the
    folder of sambay-router and sambay-worker, to check the rendered flags) set HELM and BIN."""
    global HELM, BIN
    parser = argparse.ArgumentParser()
    parser.add_argument("--helm", default=HELM)
    parser.add_argument("--bin", help="folder of sambay-router and sambay-worker")
    args, rest = parser.parse_known_args()
    HELM = os.path.abspath(args.helm)
    BIN = os.path.abspath(args.bin) if args.bin else None
    unittest.main(module="__main__", argv=[sys.argv[0]] + rest, verbosity=2)
