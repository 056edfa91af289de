#!/usr/bin/env python3
"""Tests of the Helm chart helm/sambay with a real helm binary (helm lint / helm template).

For the default values and every helm/sambay/ci/*-values.yaml: `helm lint --strict` passes and the
rendered objects are checked: probes, GPU limits, securityContext, NetworkPolicy selectors, PDBs,
HPAs, Service ports against container ports and flags, the router's discovery DNS names against
the worker Services, the model volume, drain timing, the ServiceMonitor, the PrometheusRule (the
same rules as deploy/prometheus/alerts.yml) and the dashboard ConfigMap. The router's OpenAI HTTP
API (router.http: --http-port, container and Service port "http") and its selectable probes
(router.probes.type grpc|http) are checked for each setting. Invalid values files are rejected by
values.schema.json. The locked-down profile (TLS, API keys, health ports, egress, cert-manager) has
its own tests in chart_secure_test.py; the checks here accept it (ci/secure-values.yaml).

Usage: /usr/bin/python3 tests/deploy/chart_test.py --helm .tools/bin/helm [--bin build/bin]
       [unittest args]
With --bin, every flag and SAMBAY_* variable the chart renders must be one the binaries list in
--help.
"""
import copy
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import yaml

import chart_util  # noqa: E402  (beside this file)
from chart_util import *  # noqa: E402,F401,F403


class ChartTest(unittest.TestCase):
    helm = None
    defaults = None

    @classmethod
    def setUpClass(cls):
        if not os.access(chart_util.HELM, os.X_OK):
            raise AssertionError("%s: no helm binary (bash scripts/install-deps.sh installs it)"
                                 % chart_util.HELM)
        cls.helm = Helm(chart_util.HELM)
        cls.defaults = load_yaml(os.path.join(CHART, "values.yaml"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.helm.home, ignore_errors=True)

    # ---- lint and render every values set -----------------------------------------------------

    def test_ci_values_files_exist(self):
        names = [n for n, _ in values_cases()]
        for want in ("cpu-only-values.yaml", "gpu-tp2-values.yaml", "external-pvc-values.yaml",
                     "monitoring-values.yaml", "secure-values.yaml"):
            self.assertIn(want, names)

    def test_lint_strict(self):
        for name, path in values_cases():
            with self.subTest(values=name):
                args = ["lint", "--strict", CHART, "--namespace", NAMESPACE]
                if path:
                    args += ["-f", path]
                out = self.helm(*args)
                self.assertIn("0 chart(s) failed", out.stdout)
                self.assertNotIn("[WARNING]", out.stdout)
                self.assertNotIn("[ERROR]", out.stdout)

    def test_rendered_objects(self):
        for name, path in values_cases():
            with self.subTest(values=name):
                values = merge(self.defaults, load_yaml(path) if path else {})
                docs = self.helm.render(path)
                self.check_objects(docs, values)

    def test_rendered_variants(self):
        # Switches the ci files do not cover.
        variants = [
            ["prefill.enabled=false"],
            ["networkPolicy.enabled=false", "router.pdb.enabled=false"],
            ["podScrapeAnnotations=true", "prefill.gpus=8", "prefill.tp=4"],
            ["router.pdb.minAvailable=1", "router.pdb.maxUnavailable=null"],
            ["prefill.autoscaling.enabled=true",
             "prefill.autoscaling.targetCPUUtilizationPercentage=80"],
            ["fullnameOverride=sambay", "clusterDomain=corp.internal"],
            # The OpenAI HTTP API: off; HTTP probes; other port, threads and model name.
            ["router.http.enabled=false"],
            ["router.probes.type=http"],
            ["router.http.port=8080", "router.http.threads=4",
             "router.http.servedModelName=phi4", "router.probes.type=http"],
        ]
        for sets in variants:
            with self.subTest(sets=sets):
                values = merge(self.defaults, sets_to_values(sets))
                self.check_objects(self.helm.render(sets=sets), values)

    def router_objects(self, sets=()):
        docs = self.helm.render(sets=sets)
        name = FULLNAME + "-router"
        dep = by_kind(docs, "Deployment")[name]
        container = dep["spec"]["template"]["spec"]["containers"][0]
        return (container, by_kind(docs, "Service")[name]["spec"]["ports"],
                by_kind(docs, "NetworkPolicy")[name]["spec"]["ingress"])

    def test_router_http_api(self):
        # Literal expectations (not derived from values.yaml): defaults serve HTTP on 8000 with
        # gRPC probes; router.http.enabled=false drops every trace of it.
        c, sports, ingress = self.router_objects()
        self.assertIn("--http-port=8000", c["args"])
        self.assertIn("--http-threads=1", c["args"])
        self.assertFalse(any(a.startswith("--served-model-name") for a in c["args"]))
        self.assertIn({"name": "http", "containerPort": 8000, "protocol": "TCP"}, c["ports"])
        self.assertIn({"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP",
                       "appProtocol": "http"}, sports)
        self.assertEqual(c["readinessProbe"]["grpc"],
                         {"port": 50050, "service": "sambay.v1.Generation"})
        self.assertEqual(ingress[0]["ports"], [{"port": 50050, "protocol": "TCP"},
                                               {"port": 8000, "protocol": "TCP"}])

        c, sports, ingress = self.router_objects(["router.http.enabled=false"])
        self.assertFalse(any(a.startswith("--http-") for a in c["args"]), c["args"])
        self.assertEqual([p["name"] for p in c["ports"]], ["grpc", "metrics"])
        self.assertEqual([p["name"] for p in sports], ["grpc", "metrics"])
        self.assertEqual(ingress[0]["ports"], [{"port": 50050, "protocol": "TCP"}])
        self.assertIn("grpc", c["livenessProbe"])

        c, sports, _ = self.router_objects(["router.probes.type=http", "router.http.port=8080",
                                            "router.http.threads=3",
                                            "router.http.servedModelName=phi4"])
        self.assertIn("--http-port=8080", c["args"])
        self.assertIn("--http-threads=3", c["args"])
        self.assertIn("--served-model-name=phi4", c["args"])
        self.assertIn({"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP",
                       "appProtocol": "http"}, sports)
        want = {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}
        for probe, path in want.items():
            self.assertEqual(c[probe]["httpGet"], {"path": path, "port": 8080, "scheme": "HTTP"})
            self.assertNotIn("grpc", c[probe])
        self.assertEqual(c["readinessProbe"]["periodSeconds"], 5)
        self.assertEqual(c["readinessProbe"]["failureThreshold"], 2)
        self.assertEqual(c["startupProbe"]["failureThreshold"], 60)

    def test_kube_version_floor(self):
        # Native gRPC probes need Kubernetes 1.27.
        out = self.helm("template", RELEASE, CHART, "--kube-version", "1.26.0", check=False)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("kubeVersion", out.stderr + out.stdout)
        self.helm("template", RELEASE, CHART, "--kube-version", "1.27.0")

    # ---- the checks ---------------------------------------------------------------------------

    def check_objects(self, docs, values):
        ns = NAMESPACE
        fullname = values.get("fullnameOverride") or FULLNAME
        for d in docs:
            meta = d["metadata"]
            want_ns = ns
            if d["kind"] == "ConfigMap" and values["grafanaDashboard"].get("namespace"):
                want_ns = values["grafanaDashboard"]["namespace"]
            self.assertEqual(meta.get("namespace"), want_ns, meta["name"])
            self.assertEqual(meta["labels"]["app.kubernetes.io/instance"], RELEASE)
            self.assertLessEqual(len(meta["name"]), 63)
        keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
        self.assertEqual(len(keys), len(set(keys)), "duplicate objects")

        deployments = by_kind(docs, "Deployment")
        services = by_kind(docs, "Service")
        enabled = ["router"] + [r for r in WORKER_ROLES if values[r]["enabled"]]
        self.assertEqual(sorted(deployments), sorted("%s-%s" % (fullname, c) for c in enabled))
        pods = {c: deployments["%s-%s" % (fullname, c)]["spec"]["template"] for c in enabled}

        for c in enabled:
            self.check_deployment(c, deployments["%s-%s" % (fullname, c)], values[c], values)
        self.check_services(services, deployments, pods, values, fullname, enabled)
        self.check_discovery(pods, services, values, fullname)
        self.check_model_volume(docs, pods, values, fullname)
        self.check_network_policies(docs, pods, values, enabled)
        self.check_pdbs(docs, deployments, values, fullname, enabled)
        self.check_hpas(docs, deployments, values, fullname, enabled)
        self.check_monitoring(docs, services, values)
        sa = by_kind(docs, "ServiceAccount")
        if values["serviceAccount"]["create"]:
            self.assertEqual(list(sa), [fullname])
            self.assertIs(sa[fullname]["automountServiceAccountToken"], False)
        else:
            self.assertEqual(sa, {})
        want_sa = (values["serviceAccount"]["name"] or
                   (fullname if values["serviceAccount"]["create"] else "default"))
        for c, pod in pods.items():
            self.assertEqual(pod["spec"]["serviceAccountName"], want_sa, c)

    def check_deployment(self, component, dep, v, values):
        spec = dep["spec"]
        pod = spec["template"]
        labels = pod["metadata"]["labels"]
        self.assertTrue(matches(spec["selector"]["matchLabels"], labels))
        self.assertEqual(spec["selector"]["matchLabels"]["app.kubernetes.io/component"], component)
        if v["autoscaling"]["enabled"]:
            self.assertNotIn("replicas", spec)
        else:
            self.assertEqual(spec["replicas"], v["replicaCount"])
        ps = pod["spec"]
        self.assertIs(ps["automountServiceAccountToken"], False)
        for host_ns in ("hostNetwork", "hostPID", "hostIPC"):
            self.assertFalse(ps.get(host_ns, False))
        # Restricted pod security.
        psc = ps["securityContext"]
        self.assertIs(psc["runAsNonRoot"], True)
        self.assertGreater(psc["runAsUser"], 0)
        self.assertEqual(psc["seccompProfile"]["type"], "RuntimeDefault")
        self.assertEqual(len(ps["containers"]), 1)
        c = ps["containers"][0]
        csc = c["securityContext"]
        self.assertIs(csc["allowPrivilegeEscalation"], False)
        self.assertIs(csc["readOnlyRootFilesystem"], True)
        self.assertIs(csc.get("privileged", False), False)
        self.assertEqual(csc["capabilities"]["drop"], ["ALL"])
        self.assertNotIn("add", csc["capabilities"])
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        self.assertIn("/tmp", mounts, "a read-only root filesystem needs a writable /tmp")
        image = values["image"]
        tag = image["tag"] or load_yaml(os.path.join(CHART, "Chart.yaml"))["appVersion"]
        self.assertEqual(c["image"], "%s:%s" % (image["repository"], tag))
        self.assertEqual(c["imagePullPolicy"], image["pullPolicy"])
        self.assertEqual(ps.get("imagePullSecrets", []), values["imagePullSecrets"])

        # Command line: the binary, flags matching the ports, extra args last.
        binary = "sambay-router" if component == "router" else "sambay-worker"
        self.assertEqual(c["command"], [binary])
        extra = v["extraArgs"]
        if extra:
            self.assertEqual(c["args"][-len(extra):], extra)
        f = flags(c["args"])
        if chart_util.BIN:
            # Every flag the chart renders, and every SAMBAY_* variable, is one the binary has.
            known = known_flags(binary)
            self.assertEqual(set(f) - known, set(), "%s has no such flags" % binary)
            for e in c.get("env", []):
                if e["name"].startswith("SAMBAY_"):
                    self.assertIn(e["name"][len("SAMBAY_"):].lower().replace("_", "-"), known)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        http = component == "router" and v["http"]["enabled"]
        health = health_port(component, values)
        self.assertEqual(set(ports), {"grpc", "metrics"} | ({"http"} if http else set()) |
                         ({"health"} if health else set()))
        self.assertEqual(ports.get("health"), health)
        self.assertEqual(f.get("health-port"), str(health) if health else None)
        if http:
            self.assertEqual(ports["http"], v["http"]["port"])
            self.assertEqual(int(f["http-port"]), ports["http"])
            self.assertEqual(f["http-threads"], str(v["http"]["threads"]))
            self.assertEqual(f.get("served-model-name"), v["http"]["servedModelName"] or None)
        else:
            for flag in ("http-port", "http-threads", "served-model-name"):
                self.assertNotIn(flag, f)
        self.assertEqual(len(set(ports.values())), len(ports), "two container ports collide")
        self.assertEqual(ports["grpc"], v["grpcPort"])
        self.assertEqual(ports["metrics"], v["metricsPort"])
        self.assertEqual(int(f["port"]), ports["grpc"])
        self.assertEqual(int(f["metrics-port"]), ports["metrics"])
        self.assertEqual(f["drain-timeout"], str(v["drainTimeoutSeconds"]))
        self.assertEqual(f["log-level"], v["logLevel"])
        env = c.get("env", [])
        for e in v["env"]:
            self.assertIn(e, env)
        if component == "router":
            self.assertEqual(f["host"], "0.0.0.0")
            self.assertEqual(f["max-concurrent"], str(v["maxConcurrent"]))
            self.assertEqual(f["max-queue"], str(v["maxQueue"]))
            self.assertEqual(f["placement"], v["placement"])
        else:
            self.assertEqual(f["role"], component)
            self.assertEqual(f["host"], values["workerListenAddress"])
            self.assertEqual(f["metrics-host"], values["workerListenAddress"])
            if "$(POD_IP)" in values["workerListenAddress"]:
                pod_ip = [e for e in env if e["name"] == "POD_IP"]
                self.assertEqual(pod_ip, [{"name": "POD_IP", "valueFrom": {
                    "fieldRef": {"fieldPath": "status.podIP"}}}])
            self.assertEqual(f["max-running"], str(v["maxRunning"]))
            self.assertEqual(f["state-memory-mib"], str(v["stateMemoryMiB"]))
            self.assertEqual(f["prefill-chunk"], str(v["prefillChunk"]))
            self.assertEqual(f["tp"], str(v["tp"]))
            # GPUs: limits.<gpuResourceName> = gpus (tp when null); none at 0.
            gpus = v["tp"] if v.get("gpus") is None else v["gpus"]
            limits = c["resources"].get("limits", {})
            gpu_name = values["gpuResourceName"]
            # A pod with GPUs runs the CUDA backend (its --tp ranks on GPUs 0..tp-1).
            self.assertEqual(f.get("device"), "cuda" if gpus > 0 else None)
            if gpus > 0:
                self.assertEqual(limits[gpu_name], gpus)
            else:
                self.assertNotIn(gpu_name, limits)
                self.assertNotIn(gpu_name, c["resources"].get("requests", {}))
            for k, q in v["resources"].get("limits", {}).items():
                self.assertEqual(limits[k], q)
            shm = [vol for vol in ps["volumes"] if vol["name"] == "shm"]
            self.assertEqual(shm[0]["emptyDir"], {"medium": "Memory", "sizeLimit": v["shmSize"]})
            self.assertIn("/dev/shm", mounts)
            self.assertEqual(labels["sambay.dev/worker"], "true")
        # Scheduling knobs pass through.
        for key in ("nodeSelector", "tolerations", "affinity"):
            self.assertEqual(ps.get(key, type(v[key])()), v[key], key)
        for key in ("runtimeClassName", "priorityClassName"):
            self.assertEqual(ps.get(key, ""), v[key], key)

        # Native gRPC probes on the gRPC port (the health port when the gRPC port has TLS):
        # startup and liveness on "", readiness on the component's readiness service. The
        # router's can be HTTP GETs on its http port instead: startup and liveness /health,
        # readiness /ready.
        if component == "router" and v["probes"]["type"] == "http":
            for probe, path in (("startupProbe", "/health"), ("livenessProbe", "/health"),
                                ("readinessProbe", "/ready")):
                p = c[probe]
                self.assertEqual(p["httpGet"], {"path": path, "port": ports["http"],
                                                "scheme": "HTTP"}, probe)
                self.assertNotIn("grpc", p)
                self.assertNotIn("exec", p)
        else:
            for probe, service in (("startupProbe", ""), ("livenessProbe", ""),
                                   ("readinessProbe", READINESS[component])):
                p = c[probe]
                self.assertEqual(p["grpc"], {"port": health or ports["grpc"], "service": service},
                                 probe)
                self.assertNotIn("httpGet", p)
                self.assertNotIn("exec", p)
        for probe, key in (("startupProbe", "startup"), ("readinessProbe", "readiness"),
                           ("livenessProbe", "liveness")):
            for k in ("periodSeconds", "timeoutSeconds", "failureThreshold"):
                self.assertEqual(c[probe][k], v["probes"][key][k], "%s.%s" % (probe, k))
        sp = c["startupProbe"]
        budget = sp["periodSeconds"] * sp["failureThreshold"]
        if component != "router":
            self.assertGreaterEqual(budget, MIN_WORKER_STARTUP_SECONDS, "startup probe budget")
        else:
            self.assertGreaterEqual(budget, 60)
        lp = c["livenessProbe"]
        self.assertGreaterEqual(lp["periodSeconds"] * lp["failureThreshold"], 30)

        # Drain: preStop sleep, then SIGTERM and --drain-timeout, all inside the grace period.
        pre = c["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(pre[0], "sleep")
        pre_s = int(pre[1])
        self.assertEqual(pre_s, v["preStopDelaySeconds"])
        grace = ps["terminationGracePeriodSeconds"]
        if v.get("terminationGracePeriodSeconds") is not None:
            self.assertEqual(grace, v["terminationGracePeriodSeconds"])
        self.assertGreaterEqual(grace, pre_s + int(f["drain-timeout"]) + 5)
        if component != "router":
            # The router re-resolves DNS every --dns-refresh-seconds: the preStop delay must let
            # it drop a terminating worker before that worker refuses new work.
            self.assertGreater(pre_s, values["router"]["dnsRefreshSeconds"])

    def check_services(self, services, deployments, pods, values, fullname, enabled):
        self.assertEqual(sorted(services), sorted("%s-%s" % (fullname, c) for c in enabled))
        for c in enabled:
            svc = services["%s-%s" % (fullname, c)]
            pod = pods[c]
            selected = [n for n, p in pods.items()
                        if matches(svc["spec"]["selector"], p["metadata"]["labels"])]
            self.assertEqual(selected, [c], "Service %s selects %s" % (svc["metadata"]["name"],
                                                                       selected))
            container = pod["spec"]["containers"][0]
            cports = {p["name"]: p["containerPort"] for p in container["ports"]}
            f = flags(container["args"])
            sports = {p["name"]: p for p in svc["spec"]["ports"]}
            http = c == "router" and values["router"]["http"]["enabled"]
            self.assertEqual(set(sports), {"grpc", "metrics"} | ({"http"} if http else set()))
            self.assertEqual(len({p["port"] for p in sports.values()}), len(sports),
                             "two Service ports collide")
            for name, p in sports.items():
                self.assertIn(p["targetPort"], cports, "targetPort %s" % p["targetPort"])
                self.assertEqual(p["protocol"], "TCP")
            self.assertEqual(cports[sports["grpc"]["targetPort"]], int(f["port"]))
            self.assertEqual(cports[sports["metrics"]["targetPort"]], int(f["metrics-port"]))
            self.assertEqual(sports["grpc"]["appProtocol"], "grpc")
            if http:
                self.assertEqual(sports["http"]["targetPort"], "http")
                self.assertEqual(cports["http"], int(f["http-port"]))
                self.assertEqual(sports["http"]["port"], values["router"]["http"]["port"])
                self.assertEqual(sports["http"]["appProtocol"], "http")
            if c == "router":
                self.assertEqual(svc["spec"]["type"], values["router"]["service"]["type"])
                self.assertEqual(sports["grpc"]["port"], values["router"]["service"]["port"])
            else:
                # Headless: DNS returns the ready pods' addresses, dialled at the Service port,
                # so the Service port must be the container port.
                self.assertEqual(svc["spec"]["clusterIP"], "None")
                self.assertIs(svc["spec"]["publishNotReadyAddresses"], False)
                self.assertEqual(sports["grpc"]["port"], cports["grpc"])
                self.assertEqual(sports["metrics"]["port"], cports["metrics"])

    def check_discovery(self, pods, services, values, fullname):
        f = flags(pods["router"]["spec"]["containers"][0]["args"])
        for role in WORKER_ROLES:
            flag = "%s-dns" % role
            if not values[role]["enabled"]:
                self.assertNotIn(flag, f)
                continue
            svc = services["%s-%s" % (fullname, role)]
            grpc = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"][0]
            self.assertEqual(f[flag], "%s.%s.svc.%s:%d" % (
                svc["metadata"]["name"], svc["metadata"]["namespace"], values["clusterDomain"],
                grpc["port"]))
            wflags = flags(pods[role]["spec"]["containers"][0]["args"])
            self.assertTrue(f[flag].endswith(":" + wflags["port"]))
        for flag in ("prefill-workers", "decode-workers", "workers", "workers-dns"):
            self.assertNotIn(flag, f)
        self.assertGreaterEqual(float(f["dns-refresh-seconds"]), 1)

    def check_model_volume(self, docs, pods, values, fullname):
        m = values["model"]
        want_dir = m["mountPath"].rstrip("/") + ("/" + m["subPath"].strip("/") if m["subPath"]
                                                 else "")
        pvcs = by_kind(docs, "PersistentVolumeClaim")
        if m["source"] == "pvc":
            claim = "%s-models" % fullname
            self.assertEqual(list(pvcs), [claim])
            spec = pvcs[claim]["spec"]
            self.assertEqual(spec["accessModes"], m["pvc"]["accessModes"])
            self.assertEqual(spec["resources"]["requests"]["storage"], m["pvc"]["size"])
        else:
            self.assertEqual(pvcs, {})
            claim = m["existingClaim"]
        for c, pod in pods.items():
            vols = {v["name"]: v for v in pod["spec"]["volumes"]}
            models = vols["models"]
            if m["source"] == "hostPath":
                self.assertEqual(models["hostPath"]["path"], m["hostPath"]["path"])
            else:
                self.assertEqual(models["persistentVolumeClaim"],
                                 {"claimName": claim, "readOnly": True})
            container = pod["spec"]["containers"][0]
            mount = [x for x in container["volumeMounts"] if x["name"] == "models"]
            self.assertEqual(mount, [{"name": "models", "mountPath": m["mountPath"],
                                      "readOnly": True}], c)
            self.assertEqual(flags(container["args"])["model"], want_dir, c)

    def check_network_policies(self, docs, pods, values, enabled):
        nps = list(by_kind(docs, "NetworkPolicy").values())
        np_values = values["networkPolicy"]
        if not np_values["enabled"]:
            self.assertEqual(nps, [])
            return
        stranger = {"app.kubernetes.io/name": "other", "app": "x"}
        for c in enabled:
            labels = pods[c]["metadata"]["labels"]
            container = pods[c]["spec"]["containers"][0]
            cports = {p["name"]: p["containerPort"] for p in container["ports"]}
            mine = [n for n in nps if matches(n["spec"]["podSelector"]["matchLabels"], labels)]
            self.assertEqual(len(mine), 1, "one NetworkPolicy selects the %s pods" % c)
            np = mine[0]
            for other in enabled:
                if other != c:
                    self.assertFalse(matches(np["spec"]["podSelector"]["matchLabels"],
                                             pods[other]["metadata"]["labels"]))
            egress = np_values.get("egress", {}).get("enabled", False)
            self.assertEqual(np["spec"]["policyTypes"],
                             ["Ingress"] + (["Egress"] if egress else []))
            self.assertEqual("egress" in np["spec"], egress)
            rules = np["spec"]["ingress"]
            allowed_ports = {p["port"] for r in rules for p in r["ports"]}
            # Health ports get kubelet traffic only, which comes from the node: no rule.
            cports.pop("health", None)
            # The router's HTTP port (when on) is public like its gRPC port: the same rule.
            self.assertEqual(allowed_ports, set(cports.values()))
            if "http" in cports:
                http_rules = [r for r in rules
                              if any(p["port"] == cports["http"] for p in r["ports"])]
                self.assertEqual(len(http_rules), 1)
                self.assertEqual(sorted(p["port"] for p in http_rules[0]["ports"]),
                                 sorted([cports["grpc"], cports["http"]]))
            grpc_rules = [r for r in rules if any(p["port"] == cports["grpc"] for p in r["ports"])]
            metrics_rules = [r for r in rules
                             if any(p["port"] == cports["metrics"] for p in r["ports"])]
            self.assertEqual(len(grpc_rules), 1)
            self.assertEqual(len(metrics_rules), 1)
            if c == "router":
                want = np_values["routerFrom"]
                self.assertEqual(grpc_rules[0].get("from", []), want)
            else:
                peers = grpc_rules[0].get("from")
                self.assertTrue(peers, "worker gRPC port open to everyone")
                for peer in peers:
                    self.assertEqual(set(peer), {"podSelector"}, "only pod selectors: %s" % peer)
                selectable = [n for n in enabled
                              if any(matches(p["podSelector"]["matchLabels"],
                                             pods[n]["metadata"]["labels"]) for p in peers)]
                self.assertEqual(sorted(selectable), sorted(enabled),
                                 "the router and every worker, nothing else")
                self.assertFalse(any(matches(p["podSelector"]["matchLabels"], stranger)
                                     for p in peers))
                # Another release's pods are not peers.
                other_release = dict(pods["router"]["metadata"]["labels"],
                                     **{"app.kubernetes.io/instance": "other"})
                self.assertFalse(any(matches(p["podSelector"]["matchLabels"], other_release)
                                     for p in peers))
            self.assertEqual(metrics_rules[0].get("from", []), np_values["metricsFrom"])

    def check_pdbs(self, docs, deployments, values, fullname, enabled):
        pdbs = by_kind(docs, "PodDisruptionBudget")
        want = [c for c in enabled if values[c]["pdb"]["enabled"]]
        self.assertEqual(sorted(pdbs), sorted("%s-%s" % (fullname, c) for c in want))
        for c in want:
            pdb = pdbs["%s-%s" % (fullname, c)]
            dep = deployments["%s-%s" % (fullname, c)]
            self.assertEqual(pdb["spec"]["selector"]["matchLabels"],
                             dep["spec"]["selector"]["matchLabels"])
            v = values[c]["pdb"]
            spec = {k: x for k, x in pdb["spec"].items() if k != "selector"}
            if v.get("minAvailable") is not None:
                self.assertEqual(spec, {"minAvailable": v["minAvailable"]})
                replicas = dep["spec"].get("replicas", values[c]["autoscaling"]["minReplicas"])
                if isinstance(v["minAvailable"], int):
                    self.assertLess(v["minAvailable"], replicas,
                                    "a PDB that never allows an eviction blocks node drains")
            else:
                self.assertEqual(spec, {"maxUnavailable": v["maxUnavailable"]})
                self.assertNotEqual(v["maxUnavailable"], 0)

    def check_hpas(self, docs, deployments, values, fullname, enabled):
        hpas = by_kind(docs, "HorizontalPodAutoscaler")
        want = [c for c in enabled if values[c]["autoscaling"]["enabled"]]
        self.assertEqual(sorted(hpas), sorted("%s-%s" % (fullname, c) for c in want))
        for c in want:
            h = hpas["%s-%s" % (fullname, c)]
            a = values[c]["autoscaling"]
            self.assertEqual(h["apiVersion"], "autoscaling/v2")
            self.assertEqual(h["spec"]["scaleTargetRef"], {
                "apiVersion": "apps/v1", "kind": "Deployment", "name": "%s-%s" % (fullname, c)})
            self.assertNotIn("replicas", deployments["%s-%s" % (fullname, c)]["spec"])
            self.assertEqual(h["spec"]["minReplicas"], a["minReplicas"])
            self.assertEqual(h["spec"]["maxReplicas"], a["maxReplicas"])
            self.assertTrue(h["spec"]["metrics"])
            for m in a["metrics"]:
                self.assertIn(m, h["spec"]["metrics"])

    def check_monitoring(self, docs, services, values):
        sms = list(by_kind(docs, "ServiceMonitor").values())
        if values["serviceMonitor"]["enabled"]:
            self.assertEqual(len(sms), 1)
            sm = sms[0]
            for k, v in values["serviceMonitor"]["labels"].items():
                self.assertEqual(sm["metadata"]["labels"][k], v)
            self.assertEqual(sm["spec"]["namespaceSelector"], {"matchNames": [NAMESPACE]})
            selected = [s for s in services.values()
                        if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
            self.assertEqual(len(selected), len(services), "every component is scraped")
            for ep in sm["spec"]["endpoints"]:
                self.assertEqual(ep["path"], "/metrics")
                self.assertEqual(ep["scheme"],
                                 "https" if values["metrics"]["tls"]["enabled"] else "http")
                self.assertEqual(ep["interval"], values["serviceMonitor"]["interval"])
                for s in selected:
                    self.assertIn(ep["port"], [p["name"] for p in s["spec"]["ports"]])
        else:
            self.assertEqual(sms, [])

        rules = list(by_kind(docs, "PrometheusRule").values())
        if values["prometheusRule"]["enabled"]:
            self.assertEqual(len(rules), 1)
            groups = rules[0]["spec"]["groups"]
            names = sorted(r["alert"] for g in groups for r in g["rules"])
            self.assertEqual(names, sorted(ALERTS))
            exprs = {r["alert"]: r["expr"] for g in groups for r in g["rules"]}
            t = values["prometheusRule"]
            for alert, key in (("SambayHighTimeToFirstToken", "ttftP99Seconds"),
                               ("SambayHighInterTokenLatency", "itlP99Seconds"),
                               ("SambayRequestQueueBacklog", "queueLength"),
                               ("SambayStateMemoryHigh", "stateMemoryRatio"),
                               ("SambayMigrations", "migrationsPer10m")):
                self.assertTrue(exprs[alert].endswith("> %s" % t[key]), exprs[alert])
            with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
                yaml.safe_dump({"groups": groups}, f)
                f.flush()
                run([PROMTOOL, "check", "rules", f.name])
        else:
            self.assertEqual(rules, [])

        cms = list(by_kind(docs, "ConfigMap").values())
        if values["grafanaDashboard"]["enabled"]:
            self.assertEqual(len(cms), 1)
            cm = cms[0]
            g = values["grafanaDashboard"]
            self.assertEqual(cm["metadata"]["labels"][g["labelKey"]], g["labelValue"])
            with open(os.path.join(SRC, "deploy", "grafana", "sambay-dashboard.json")) as f:
                self.assertEqual(json.loads(cm["data"]["sambay-dashboard.json"]), json.load(f))
        else:
            self.assertEqual(cms, [])

    # ---- the rules and the dashboard are the ones in deploy/ ---------------------------------

    def test_prometheus_rule_equals_deploy_alerts(self):
        docs = self.helm.render(sets=["prometheusRule.enabled=true"])
        rule = list(by_kind(docs, "PrometheusRule").values())[0]
        shipped = load_yaml(os.path.join(SRC, "deploy", "prometheus", "alerts.yml"))
        self.assertEqual(rule["spec"]["groups"], shipped["groups"])

    def test_dashboard_copy_is_identical(self):
        with open(os.path.join(CHART, "dashboards", "sambay-dashboard.json"), "rb") as a, \
                open(os.path.join(SRC, "deploy", "grafana", "sambay-dashboard.json"), "rb") as b:
            self.assertEqual(a.read(), b.read(),
                             "helm/sambay/dashboards/ must be a copy of deploy/grafana/")

    # ---- values that must be refused ----------------------------------------------------------

    def test_invalid_values_file_is_rejected(self):
        path = os.path.join(SRC, "tests", "deploy", "invalid-values.yaml")
        for verb in (["lint", "--strict", CHART, "-f", path],
                     ["template", RELEASE, CHART, "-f", path]):
            out = self.helm(*verb, check=False)
            self.assertNotEqual(out.returncode, 0, " ".join(verb))
            msg = out.stdout + out.stderr
            self.assertIn("schema", msg)
            for error in ("'/router': additional properties 'replicas' not allowed",
                          "'/prefill/tp': got string, want integer",
                          "'/prefill': additional properties 'maxRunnning' not allowed",
                          "'/decode/gpus': minimum: got -1, want 0",
                          "'/model/source': value must be one of",
                          "'/serviceMonitor/interval': got number, want string"):
                self.assertIn(error, msg)

    def test_schema_rejects(self):
        cases = {
            # wrong types
            "router:\n  replicaCount: two\n": "/router/replicaCount",
            "prefill:\n  tp: \"2\"\n": "/prefill/tp",
            "decode:\n  enabled: \"yes\"\n": "/decode/enabled",
            "networkPolicy:\n  enabled: 1\n": "/networkPolicy/enabled",
            "router:\n  extraArgs: --verbose\n": "/router/extraArgs",
            "image:\n  tag: 1.0\n": "/image/tag",
            # unknown keys
            "replicas: 3\n": "replicas",
            "router:\n  replica: 2\n": "replica",
            "decode:\n  resources:\n    limit:\n      cpu: 1\n": "limit",
            "model:\n  pvc:\n    storageclass: fast\n": "storageclass",
            # out of range / not one of
            "prefill:\n  gpus: -1\n": "/prefill/gpus",
            "decode:\n  tp: 0\n": "/decode/tp",
            "router:\n  grpcPort: 70000\n": "/router/grpcPort",
            "model:\n  source: s3\n": "/model/source",
            "router:\n  placement: random\n": "/router/placement",
            "prometheusRule:\n  stateMemoryRatio: 1.5\n": "/prometheusRule/stateMemoryRatio",
            "router:\n  extraArgs: [\"verbose\"]\n": "/router/extraArgs",
            "prefill:\n  logLevel: trace\n": "/prefill/logLevel",
            "router:\n  probes:\n    type: tcp\n": "/router/probes/type",
            "router:\n  http:\n    port: 0\n": "/router/http/port",
            "router:\n  http:\n    threads: 65\n": "/router/http/threads",
            "router:\n  http:\n    enabled: \"yes\"\n": "/router/http/enabled",
            "router:\n  http:\n    host: 0.0.0.0\n": "'/router/http': additional properties 'host'",
            "prefill:\n  probes:\n    type: http\n":
                "'/prefill/probes': additional properties 'type'",
        }
        with tempfile.TemporaryDirectory() as d:
            for i, (text, where) in enumerate(cases.items()):
                with self.subTest(values=text.strip()):
                    path = os.path.join(d, "bad%d.yaml" % i)
                    with open(path, "w") as f:
                        f.write(text)
                    out = self.helm("template", RELEASE, CHART, "-f", path, check=False)
                    self.assertNotEqual(out.returncode, 0)
                    self.assertIn(where, out.stderr)

    def test_template_failures(self):
        cases = {
            ("model.source=existingClaim",): "model.existingClaim is required",
            ("model.source=hostPath",): "model.hostPath.path is required",
            ("decode.autoscaling.enabled=true",): "decode.autoscaling: give",
            ("prefill.gpus=1", "prefill.tp=2"): "prefill.gpus (1) < prefill.tp (2)",
            ("router.probes.type=http", "router.http.enabled=false"):
                'router.probes.type is "http" but router.http.enabled is false',
        }
        for sets, message in cases.items():
            with self.subTest(sets=sets):
                out = self.helm.render(sets=sets, check=False)
                self.assertIsInstance(out, subprocess.CompletedProcess)
                self.assertNotEqual(out.returncode, 0)
                self.assertIn(message, out.stderr)

    # ---- docs -------------------------------------------------------------------------------

    def test_readme_lists_every_value(self):
        with open(os.path.join(CHART, "README.md")) as f:
            readme = f.read()
        # decode.* has the same keys as prefill.*: documented once, as prefill.* rows.
        missing = [p for p in leaf_paths(self.defaults)
                   if "`%s`" % p not in readme and
                   "`%s`" % re.sub(r"^decode\.", "prefill.", p) not in readme]
        self.assertEqual(missing, [], "values missing from helm/sambay/README.md")

    def test_notes(self):
        out = self.helm("install", RELEASE, CHART, "--namespace", NAMESPACE, "--dry-run=client",
                        check=False)
        if out.returncode != 0 and "Kubernetes cluster unreachable" in out.stderr:
            self.skipTest("helm install --dry-run=client needs a cluster here")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("NOTES:", out.stdout)
        notes = out.stdout.split("NOTES:", 1)[1]
        self.assertIn("port-forward service/%s-router 50050:50050" % FULLNAME, notes)
        self.assertIn("port-forward service/%s-router 8000:8000" % FULLNAME, notes)
        self.assertIn("http://%s-router.%s.svc.cluster.local:8000/v1" % (FULLNAME, NAMESPACE),
                      notes)
        self.assertIn('"model": "phi-4-mini-flash-reasoning"', notes)
        self.assertIn("%s-prefill.%s.svc.cluster.local:50051" % (FULLNAME, NAMESPACE), notes)


if __name__ == "__main__":
    chart_util.main()
