#!/usr/bin/env python3
"""Tests of the Helm chart's locked-down profile (helm/sambay/ci/secure-values.yaml and the values
it turns on), with a real helm binary (helm lint / helm template).

Checked: the TLS, API-key, reflection, internal-mTLS, metrics and health-port flags on the right
containers, each file flag pointing into a read-only Secret mount (whole directory, no subPath,
not world-readable); gRPC probes on the health port exactly when the probed port has TLS; no key
material anywhere in the rendered objects and none accepted in values; egress NetworkPolicies
allowing only this release's worker gRPC ports and DNS; cert-manager objects (the private CA
chain, the internal and the public Certificate) only when enabled and wired to the Secrets the
pods mount; the ServiceMonitor's https, tlsConfig and authorization; render failures that name
the contradictory values. The general checks of every ci/*-values.yaml (secure-values.yaml
included) are in chart_test.py.

Usage: /usr/bin/python3 tests/deploy/chart_secure_test.py --helm .tools/bin/helm [--bin build/bin]
       [unittest args]
"""
import os
import shutil
import subprocess
import tempfile
import unittest

import yaml

import chart_util  # noqa: E402  (beside this file)
from chart_util import *  # noqa: E402,F401,F403

SECURE = os.path.join(CHART, "ci", "secure-values.yaml")
# Flags only the router gets (its public port).
ROUTER_ONLY = {"tls-cert", "tls-key", "tls-client-ca", "api-keys-file", "reflection"}
INTERNAL = {"internal-tls-cert", "internal-tls-key", "internal-tls-ca", "internal-tls-server-name"}
METRICS = {"metrics-tls-cert", "metrics-tls-key", "metrics-bearer-token-file"}
SECURITY_FLAGS = ROUTER_ONLY | INTERNAL | METRICS | {"tls-reload-seconds", "health-port"}
# Flags naming a file: the Secret volume it lies in and its name there.
FILE_FLAGS = {"tls-cert": ("tls", "tls.crt"), "tls-key": ("tls", "tls.key"),
              "tls-client-ca": ("client-ca", "ca.crt"), "api-keys-file": ("api-keys", "api-keys"),
              "internal-tls-cert": ("internal-tls", "tls.crt"),
              "internal-tls-key": ("internal-tls", "tls.key"),
              "internal-tls-ca": ("internal-tls", "ca.crt"),
              "metrics-tls-cert": ("metrics-tls", "tls.crt"),
              "metrics-tls-key": ("metrics-tls", "tls.key"),
              "metrics-bearer-token-file": ("metrics-token", "token")}
# Public and internal TLS from existing Secrets (no cert-manager).
EXISTING = ("router.tls.enabled=true", "router.tls.existingSecret=pub-tls",
            "internalTLS.enabled=true", "internalTLS.existingSecret=int-tls")
CERT_MANAGER_KINDS = ("Issuer", "ClusterIssuer", "Certificate")


class SecureChartTest(unittest.TestCase):
    helm = None
    defaults = None

    @classmethod
    def setUpClass(cls):
        if not os.access(chart_util.HELM, os.X_OK):
            raise AssertionError("%s: no helm binary (bash scripts/install-deps.sh installs it)"
                                 % chart_util.HELM)
        cls.helm = Helm(chart_util.HELM)
        cls.defaults = load_yaml(os.path.join(CHART, "values.yaml"))
        cls.secure_values = merge(cls.defaults, load_yaml(SECURE))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.helm.home, ignore_errors=True)

    def render(self, sets=(), secure=False):
        return self.helm.render(SECURE if secure else None, sets=sets)

    @staticmethod
    def pods(docs):
        return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]
                for d in docs if d["kind"] == "Deployment"}

    def containers(self, docs):
        return {c: p["spec"]["containers"][0] for c, p in self.pods(docs).items()}

    # ---- flags ----------------------------------------------------------------------------------

    def test_secure_profile_lints(self):
        for sets in ((), ("router.http.enabled=true", "router.probes.type=http",
                          "router.tls.clientCA.enabled=false")):
            with self.subTest(sets=sets):
                args = ["lint", "--strict", CHART, "--namespace", NAMESPACE, "-f", SECURE]
                for s in sets:
                    args += ["--set", s]
                out = self.helm(*args)
                self.assertIn("0 chart(s) failed", out.stdout)
                self.assertNotIn("[WARNING]", out.stdout)

    def test_defaults_render_no_security_flags(self):
        for name, path in values_cases():
            if name == "secure-values.yaml":
                continue
            with self.subTest(values=name):
                for c, container in self.containers(self.helm.render(path)).items():
                    self.assertEqual(set(flags(container["args"])) & SECURITY_FLAGS, set(), c)
                    self.assertFalse([m for m in container["volumeMounts"]
                                      if m["mountPath"].startswith("/etc/sambay")], c)

    def test_flags_on_the_right_containers(self):
        docs = self.render(["router.extraArgs={--prefill-retries=3}"], secure=True)
        containers = self.containers(docs)
        self.assertEqual(sorted(containers), ["decode", "prefill", "router"])
        for c, container in containers.items():
            f = flags(container["args"])
            want = INTERNAL | METRICS | {"tls-reload-seconds", "health-port"}
            if c == "router":
                want |= ROUTER_ONLY
            self.assertEqual(set(f) & SECURITY_FLAGS, want, c)
            self.assertEqual(f["internal-tls-server-name"], "sambay-internal")
            self.assertEqual(f["tls-reload-seconds"], "30")
            self.assertEqual(f["health-port"], "50052")
            self.assertEqual(f["metrics-host"], "$(POD_IP)")
            self.assertIn({"name": "POD_IP", "valueFrom": {"fieldRef": {
                "fieldPath": "status.podIP"}}}, container["env"])
            if c == "router":
                self.assertEqual(f["reflection"], "false")
                self.assertEqual(container["args"][-1], "--prefill-retries=3", "extraArgs last")
                self.assertNotIn("http-port", f)  # the plaintext HTTP API is off in the profile
            self.check_file_flags(self.pods(docs)[c], container)

        # Each piece alone reaches only its containers.
        cases = [
            (["router.tls.enabled=true", "router.tls.existingSecret=pub"],
             {"router": {"tls-cert", "tls-key", "tls-reload-seconds", "health-port"}}),
            (["router.apiKeys.enabled=true", "router.apiKeys.existingSecret=keys"],
             {"router": {"api-keys-file"}}),
            (["router.reflection=false"], {"router": {"reflection"}}),
            (["internalTLS.enabled=true", "internalTLS.existingSecret=int"],
             dict.fromkeys(COMPONENTS, INTERNAL | {"tls-reload-seconds"})),
            (["metrics.bearerToken.enabled=true", "metrics.bearerToken.existingSecret=tok"],
             dict.fromkeys(COMPONENTS, {"metrics-bearer-token-file"})),
            (["metrics.tls.enabled=true", "metrics.tls.existingSecret=m"],
             dict.fromkeys(COMPONENTS, {"metrics-tls-cert", "metrics-tls-key",
                                        "tls-reload-seconds"})),
        ]
        for sets, want in cases:
            with self.subTest(sets=sets):
                docs = self.render(sets)
                for c, container in self.containers(docs).items():
                    w = set(want.get(c, set()))
                    if c != "router" and "internal-tls-cert" in w:
                        w.add("health-port")
                    self.assertEqual(set(flags(container["args"])) & SECURITY_FLAGS, w, c)
                    self.check_file_flags(self.pods(docs)[c], container)

    def check_file_flags(self, pod, container):
        """Every file flag points into a read-only Secret mount holding that file."""
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        for flag, value in flags(container["args"]).items():
            if flag not in FILE_FLAGS:
                continue
            vol, item = FILE_FLAGS[flag]
            self.assertEqual(value, "%s/%s" % (SECRET_DIRS[vol], item), flag)
            self.assertEqual(mounts[vol]["mountPath"], SECRET_DIRS[vol])
            self.assertIs(mounts[vol]["readOnly"], True)
            self.assertIn(item, [i["path"] for i in volumes[vol]["secret"]["items"]], flag)

    # ---- mounts ---------------------------------------------------------------------------------

    def test_secret_mounts_read_only(self):
        fullname = FULLNAME
        want = {  # volume -> (Secret, [(key, path)])
            "tls": ("%s-router-tls" % fullname, [("tls.crt", "tls.crt"), ("tls.key", "tls.key")]),
            "client-ca": ("%s-router-tls" % fullname, [("ca.crt", "ca.crt")]),
            "api-keys": ("sambay-api-keys", [("api-keys", "api-keys")]),
            "internal-tls": ("%s-internal-tls" % fullname, [("tls.crt", "tls.crt"),
                                                            ("tls.key", "tls.key"),
                                                            ("ca.crt", "ca.crt")]),
            "metrics-tls": ("sambay-metrics-tls", [("tls.crt", "tls.crt"), ("tls.key", "tls.key")]),
            "metrics-token": ("sambay-metrics-token", [("token", "token")]),
        }
        docs = self.render(secure=True)
        for c, pod in self.pods(docs).items():
            container = pod["spec"]["containers"][0]
            secrets = {v["name"]: v["secret"] for v in pod["spec"]["volumes"] if "secret" in v}
            expect = set(want) if c == "router" else {"internal-tls", "metrics-tls",
                                                      "metrics-token"}
            self.assertEqual(set(secrets), expect, c)
            mounts = {m["name"]: m for m in container["volumeMounts"]}
            for name, secret in secrets.items():
                self.assertEqual(secret["secretName"], want[name][0], name)
                self.assertEqual([(i["key"], i["path"]) for i in secret["items"]], want[name][1])
                self.assertEqual(secret["defaultMode"] & 0o007, 0, "%s: world-readable" % name)
                m = mounts[name]
                # Read-only, and the whole directory: a subPath mount never sees a renewal.
                self.assertEqual(m, {"name": name, "mountPath": SECRET_DIRS[name],
                                     "readOnly": True}, c)
            # The root filesystem stays read-only.
            self.assertIs(container["securityContext"]["readOnlyRootFilesystem"], True)

        # Existing Secrets; the client CA from its own Secret and key, or from the TLS Secret.
        docs = self.render(list(EXISTING) + [
            "router.tls.clientCA.enabled=true", "router.tls.clientCA.existingSecret=clients",
            "router.tls.clientCA.key=bundle.pem"])
        pods = self.pods(docs)
        vols = {v["name"]: v["secret"] for v in pods["router"]["spec"]["volumes"] if "secret" in v}
        self.assertEqual(vols["tls"]["secretName"], "pub-tls")
        self.assertEqual(vols["client-ca"]["secretName"], "clients")
        self.assertEqual(vols["client-ca"]["items"], [{"key": "bundle.pem", "path": "ca.crt"}])
        self.assertEqual(vols["internal-tls"]["secretName"], "int-tls")
        for role in WORKER_ROLES:
            wvols = {v["name"]: v["secret"] for v in pods[role]["spec"]["volumes"] if "secret" in v}
            self.assertEqual(list(wvols), ["internal-tls"])
            self.assertEqual(wvols["internal-tls"]["secretName"], "int-tls")
        docs = self.render(list(EXISTING) + ["router.tls.clientCA.enabled=true"])
        vols = {v["name"]: v["secret"] for v in self.pods(docs)["router"]["spec"]["volumes"]
                if "secret" in v}
        self.assertEqual(vols["client-ca"], {"secretName": "pub-tls", "defaultMode": 0o440,
                                             "items": [{"key": "ca.crt", "path": "ca.crt"}]})

    # ---- probes ---------------------------------------------------------------------------------

    def test_probes_use_the_health_port_only_with_tls(self):
        # (sets, secure profile?, {component: the port the gRPC probes use}); literal numbers.
        cases = [
            ((), False, {"router": 50050, "prefill": 50051, "decode": 50051}),
            ((), True, {"router": 50052, "prefill": 50052, "decode": 50052}),
            (EXISTING[:2], False, {"router": 50052, "prefill": 50051, "decode": 50051}),
            (EXISTING[2:], False, {"router": 50050, "prefill": 50052, "decode": 50052}),
            (EXISTING + ("router.healthPort=7001", "prefill.healthPort=7002",
                         "decode.healthPort=7003"), False,
             {"router": 7001, "prefill": 7002, "decode": 7003}),
            # A health port value alone changes nothing.
            (("router.healthPort=7001", "prefill.healthPort=7002"), False,
             {"router": 50050, "prefill": 50051, "decode": 50051}),
            # HTTP probes stay on the HTTP port (HTTPS with the router's TLS; no client CA, since
            # the kubelet has no client certificate): no health port for the router.
            (("router.http.enabled=true", "router.probes.type=http",
              "router.tls.clientCA.enabled=false"), True,
             {"router": None, "prefill": 50052, "decode": 50052}),
        ]
        main_ports = {"router": 50050, "prefill": 50051, "decode": 50051}
        for sets, secure, want in cases:
            with self.subTest(sets=sets, secure=secure):
                for c, container in self.containers(self.render(sets, secure)).items():
                    f = flags(container["args"])
                    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                    if want[c] is None:
                        for probe, path in (("startupProbe", "/health"),
                                            ("livenessProbe", "/health"),
                                            ("readinessProbe", "/ready")):
                            self.assertEqual(container[probe]["httpGet"],
                                             {"path": path, "port": 8000,
                                              "scheme": "HTTPS" if secure else "HTTP"})
                        self.assertNotIn("health-port", f)
                        self.assertNotIn("health", ports)
                        continue
                    for probe, service in (("startupProbe", ""), ("livenessProbe", ""),
                                           ("readinessProbe", READINESS[c])):
                        self.assertEqual(container[probe]["grpc"],
                                         {"port": want[c], "service": service}, (c, probe))
                    if want[c] == main_ports[c]:
                        self.assertNotIn("health-port", f)
                        self.assertNotIn("health", ports)
                    else:
                        self.assertEqual(f["health-port"], str(want[c]))
                        self.assertEqual(ports["health"], want[c])
                        self.assertEqual(ports["grpc"], main_ports[c])

    def test_health_port_not_in_services_or_policies(self):
        docs = self.render(secure=True)
        for svc in by_kind(docs, "Service").values():
            self.assertNotIn("health", [p["name"] for p in svc["spec"]["ports"]])
            self.assertNotIn(50052, [p["port"] for p in svc["spec"]["ports"]])
        for np in by_kind(docs, "NetworkPolicy").values():
            ports = [p["port"] for r in np["spec"]["ingress"] for p in r["ports"]]
            self.assertNotIn(50052, ports)

    # ---- no secrets in the rendered objects or in values ----------------------------------------

    def test_no_key_material_rendered(self):
        for name, path in values_cases():
            with self.subTest(values=name):
                out = self.helm("template", RELEASE, CHART, "--namespace", NAMESPACE,
                                *(["-f", path] if path else []))
                for marker in ("-----BEGIN", "PRIVATE KEY", "Bearer ey"):
                    self.assertNotIn(marker, out.stdout)
                docs = [d for d in yaml.safe_load_all(out.stdout) if d]
                self.assertEqual([d for d in docs if d["kind"] == "Secret"], [],
                                 "the chart creates no Secret")
                for c, container in self.containers(docs).items():
                    for flag, value in flags(container["args"]).items():
                        if flag in FILE_FLAGS:
                            self.assertTrue(value.startswith("/etc/sambay/"), (flag, value))
                    for e in container.get("env", []):
                        self.assertNotIn("secretKeyRef", e.get("valueFrom", {}), e)
                    for e in container.get("envFrom", []):
                        self.assertNotIn("secretRef", e)

    def test_schema_refuses_inline_secrets_and_bad_values(self):
        cases = {
            # Keys, certificates and tokens never come through values.
            "router:\n  apiKeys:\n    keys: [sk-123]\n":
                "'/router/apiKeys': additional properties 'keys'",
            "router:\n  tls:\n    cert: \"-----BEGIN CERTIFICATE-----\"\n":
                "'/router/tls': additional properties 'cert'",
            "internalTLS:\n  key: x\n": "'/internalTLS': additional properties 'key'",
            "metrics:\n  bearerToken:\n    token: x\n":
                "'/metrics/bearerToken': additional properties 'token'",
            # Types and ranges.
            "internalTLS:\n  serverName: Not_A_Name\n": "/internalTLS/serverName",
            "tlsReloadSeconds: 0\n": "/tlsReloadSeconds",
            "router:\n  healthPort: 70000\n": "/router/healthPort",
            "decode:\n  healthPort: 0\n": "/decode/healthPort",
            "router:\n  reflection: \"no\"\n": "/router/reflection",
            "router:\n  tls:\n    enabled: \"yes\"\n": "/router/tls/enabled",
            "router:\n  tls:\n    existingSecret: My_Secret\n": "/router/tls/existingSecret",
            "internalTLS:\n  certManager:\n    duration: 90 days\n":
                "/internalTLS/certManager/duration",
            "networkPolicy:\n  egress:\n    dnsTo: kube-dns\n": "/networkPolicy/egress/dnsTo",
            "networkPolicy:\n  egress:\n    allow: []\n":
                "'/networkPolicy/egress': additional properties 'allow'",
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

    # ---- NetworkPolicies ------------------------------------------------------------------------

    def test_egress_policies(self):
        dns_to = self.secure_values["networkPolicy"]["egress"]["dnsTo"]
        self.assertTrue(dns_to)
        cases = [
            ((), {"prefill": 50051, "decode": 50051}, dns_to),
            (("decode.grpcPort=50061",), {"prefill": 50051, "decode": 50061}, dns_to),
            (("prefill.enabled=false",), {"decode": 50051}, dns_to),
            (("networkPolicy.egress.dnsTo=null",), {"prefill": 50051, "decode": 50051}, None),
        ]
        for sets, want, dns in cases:
            with self.subTest(sets=sets):
                docs = self.render(sets, secure=True)
                self.check_egress(docs, want, dns)

        # Ingress is as without egress.
        with_egress = by_kind(self.render(secure=True), "NetworkPolicy")
        without = by_kind(self.render(["networkPolicy.egress.enabled=false"], secure=True),
                          "NetworkPolicy")
        self.assertEqual(sorted(with_egress), sorted(without))
        for name, np in without.items():
            self.assertEqual(np["spec"]["policyTypes"], ["Ingress"])
            self.assertNotIn("egress", np["spec"])
            self.assertEqual(with_egress[name]["spec"]["ingress"], np["spec"]["ingress"])

        # Extra rules go to every policy, after the chart's.
        extra = {"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"port": 4317,
                                                                         "protocol": "TCP"}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump({"networkPolicy": {"egress": {"enabled": True,
                                                         "extraRules": [extra]}}}, f)
            f.flush()
            docs = self.helm.render(f.name)
        for np in by_kind(docs, "NetworkPolicy").values():
            self.assertEqual(np["spec"]["egress"][-1], extra)
            self.assertEqual(len(np["spec"]["egress"]), 4)

    def check_egress(self, docs, want, dns):
        """Every pod of the release may reach exactly the worker gRPC ports in `want`
        ({role: port}) and DNS (port 53 UDP and TCP, at `dns`; None = any address)."""
        pods = self.pods(docs)
        nps = list(by_kind(docs, "NetworkPolicy").values())
        self.assertEqual(len(nps), len(pods))
        stranger = {"app.kubernetes.io/name": "other", "app.kubernetes.io/component": "decode"}
        other_release = dict(pods["decode"]["metadata"]["labels"],
                             **{"app.kubernetes.io/instance": "other"})
        for np in nps:
            spec = np["spec"]
            self.assertEqual(spec["policyTypes"], ["Ingress", "Egress"])
            reachable = set()
            dns_rules = []
            for rule in spec["egress"]:
                self.assertTrue(rule.get("ports"), "a rule open on every port: %s" % rule)
                if [p["port"] for p in rule["ports"]] == [53, 53]:
                    dns_rules.append(rule)
                    continue
                peers = rule.get("to")
                self.assertTrue(peers, "a worker rule open to every address: %s" % rule)
                for peer in peers:
                    self.assertEqual(set(peer), {"podSelector"}, "only pod selectors: %s" % peer)
                    sel = peer["podSelector"]["matchLabels"]
                    self.assertFalse(matches(sel, stranger))
                    self.assertFalse(matches(sel, other_release))
                    self.assertFalse(matches(sel, pods["router"]["metadata"]["labels"]),
                                     "nothing dials the router")
                    selected = [c for c, p in pods.items()
                                if matches(sel, p["metadata"]["labels"])]
                    self.assertEqual(len(selected), 1, sel)
                    for p in rule["ports"]:
                        self.assertEqual(p["protocol"], "TCP")
                        reachable.add((selected[0], p["port"]))
            self.assertEqual(reachable, set(want.items()), np["metadata"]["name"])
            self.assertEqual(len(dns_rules), 1)
            self.assertEqual(dns_rules[0]["ports"], [{"port": 53, "protocol": "UDP"},
                                                     {"port": 53, "protocol": "TCP"}])
            self.assertEqual(dns_rules[0].get("to"), dns)

    # ---- cert-manager ---------------------------------------------------------------------------

    def cert_manager(self, docs):
        objs = [d for d in docs if d["kind"] in CERT_MANAGER_KINDS]
        for d in objs:
            self.assertEqual(d["apiVersion"], "cert-manager.io/v1")
        return {(d["kind"], d["metadata"]["name"]): d for d in objs}

    def test_cert_manager_objects_only_when_enabled(self):
        for name, path in values_cases():
            if name != "secure-values.yaml":
                with self.subTest(values=name):
                    self.assertEqual(self.cert_manager(self.helm.render(path)), {})
        self.assertEqual(self.cert_manager(self.render(EXISTING)), {})

        f = FULLNAME
        docs = self.render(secure=True)
        objs = self.cert_manager(docs)
        self.assertEqual(sorted(objs), [
            ("Certificate", f + "-internal"), ("Certificate", f + "-internal-ca"),
            ("Certificate", f + "-router"), ("Issuer", f + "-internal-ca"),
            ("Issuer", f + "-selfsigned")])
        # The chain: self-signed Issuer -> CA Certificate -> CA Issuer -> internal Certificate.
        self.assertEqual(objs[("Issuer", f + "-selfsigned")]["spec"], {"selfSigned": {}})
        ca = objs[("Certificate", f + "-internal-ca")]["spec"]
        self.assertIs(ca["isCA"], True)
        self.assertEqual(ca["issuerRef"], {"group": "cert-manager.io", "kind": "Issuer",
                                           "name": f + "-selfsigned"})
        self.assertEqual(ca["privateKey"]["rotationPolicy"], "Never")
        self.assertEqual(objs[("Issuer", f + "-internal-ca")]["spec"],
                         {"ca": {"secretName": ca["secretName"]}})
        leaf = objs[("Certificate", f + "-internal")]["spec"]
        self.assertEqual(leaf["issuerRef"], {"group": "cert-manager.io", "kind": "Issuer",
                                             "name": f + "-internal-ca"})
        self.assertNotIn("isCA", leaf)
        self.assertIn("sambay-internal", leaf["dnsNames"])
        self.assertIn("%s-decode.%s.svc.cluster.local" % (f, NAMESPACE), leaf["dnsNames"])
        self.assertTrue({"server auth", "client auth"} <= set(leaf["usages"]))
        self.assertNotEqual(leaf["secretName"], ca["secretName"], "pods never get the CA key")
        # The public Certificate: the values' issuer, the router Service's names.
        pub = objs[("Certificate", f + "-router")]["spec"]
        self.assertEqual(pub["issuerRef"], {"name": "sambay-public-ca", "kind": "ClusterIssuer",
                                            "group": "cert-manager.io"})
        for dns in ("%s-router" % f, "%s-router.%s.svc" % (f, NAMESPACE),
                    "%s-router.%s.svc.cluster.local" % (f, NAMESPACE), "sambay.example.com"):
            self.assertIn(dns, pub["dnsNames"])
        self.assertIn("server auth", pub["usages"])
        # The pods mount what cert-manager writes.
        for c, pod in self.pods(docs).items():
            secrets = {v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"]
                       if "secret" in v}
            self.assertEqual(secrets["internal-tls"], leaf["secretName"], c)
            self.assertNotIn(ca["secretName"], secrets.values(), c)
            if c == "router":
                self.assertEqual(secrets["tls"], pub["secretName"])
                self.assertEqual(secrets["client-ca"], pub["secretName"])

        # One side from cert-manager, the other from an existing Secret.
        objs = self.cert_manager(self.render(EXISTING[:2] + (
            "internalTLS.enabled=true", "internalTLS.certManager.enabled=true",
            "internalTLS.serverName=mesh.internal")))
        self.assertEqual(sorted(n for _, n in objs), sorted(
            [f + "-selfsigned", f + "-internal-ca", f + "-internal-ca", f + "-internal"]))
        self.assertIn("mesh.internal", objs[("Certificate", f + "-internal")]["spec"]["dnsNames"])
        objs = self.cert_manager(self.render((
            "router.tls.enabled=true", "router.tls.certManager.enabled=true",
            "router.tls.certManager.issuerRef.name=corp",
            "router.tls.certManager.issuerRef.kind=Issuer")))
        self.assertEqual(list(objs), [("Certificate", f + "-router")])
        self.assertEqual(objs[("Certificate", f + "-router")]["spec"]["issuerRef"],
                         {"name": "corp", "kind": "Issuer", "group": "cert-manager.io"})

    # ---- monitoring -----------------------------------------------------------------------------

    def test_service_monitor_and_scrape_annotations(self):
        sm = list(by_kind(self.render(secure=True), "ServiceMonitor").values())[0]
        ep = sm["spec"]["endpoints"][0]
        self.assertEqual(ep["scheme"], "https")
        self.assertEqual(ep["tlsConfig"], {"ca": {"secret": {"name": "sambay-metrics-tls",
                                                             "key": "ca.crt"}},
                                           "serverName": "sambay-metrics"})
        self.assertEqual(ep["authorization"], {"type": "Bearer", "credentials": {
            "name": "sambay-metrics-token", "key": "token"}})
        sm = list(by_kind(self.render(["serviceMonitor.enabled=true"]),
                          "ServiceMonitor").values())[0]
        ep = sm["spec"]["endpoints"][0]
        self.assertEqual(ep["scheme"], "http")
        self.assertNotIn("tlsConfig", ep)
        self.assertNotIn("authorization", ep)

        for tls in (False, True):
            sets = ["podScrapeAnnotations=true"]
            if tls:
                sets += ["metrics.tls.enabled=true", "metrics.tls.existingSecret=m"]
            for c, pod in self.pods(self.render(sets)).items():
                ann = pod["metadata"]["annotations"]
                self.assertEqual(ann.get("prometheus.io/scheme"), "https" if tls else None, c)

    # ---- NOTES ----------------------------------------------------------------------------------

    def notes(self, *sets):
        args = ["install", RELEASE, CHART, "--namespace", NAMESPACE, "--dry-run=client",
                "-f", SECURE]
        for s in sets:
            args += ["--set", s]
        out = self.helm(*args, check=False)
        if out.returncode != 0 and "Kubernetes cluster unreachable" in out.stderr:
            self.skipTest("helm install --dry-run=client needs a cluster here")
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout.split("NOTES:", 1)[1]

    def test_notes(self):
        notes = self.notes()
        self.assertIn("--tls-ca ca.crt --tls-server-name %s-router.%s.svc --tls-cert client.crt "
                      "--tls-key client.key --health" % (FULLNAME, NAMESPACE), notes)
        self.assertIn("export SAMBAY_API_KEY=", notes)
        self.assertIn("gRPC reflection is off", notes)
        self.assertNotIn("WARNING", notes)
        notes = self.notes("router.http.enabled=true")
        self.assertNotIn("WARNING", notes)  # the HTTP port takes the router's TLS
        self.assertIn("curl -s https://127.0.0.1:", notes)
        self.assertIn('-H "Authorization: Bearer $SAMBAY_API_KEY"', notes)
        notes = self.notes("router.http.enabled=true", "router.tls.enabled=false",
                           "router.tls.certManager.enabled=false",
                           "router.tls.clientCA.enabled=false")
        self.assertIn("WARNING: the HTTP API (router.http.enabled) is plain HTTP without "
                      "router.tls.enabled: API keys", notes)

    # ---- contradictions -------------------------------------------------------------------------

    def test_contradictions_fail_naming_the_values(self):
        cm = ("router.tls.certManager.enabled=true", "router.tls.certManager.issuerRef.name=ca")
        cases = {
            ("router.tls.enabled=true",):
                "router.tls.enabled is true but neither router.tls.existingSecret nor "
                "router.tls.certManager.enabled is set",
            ("router.tls.enabled=true", "router.tls.existingSecret=x") + cm:
                "router.tls.existingSecret and router.tls.certManager.enabled are both set",
            cm: "router.tls.certManager.enabled needs router.tls.enabled",
            ("router.tls.enabled=true", "router.tls.certManager.enabled=true"):
                "router.tls.certManager.issuerRef.name is required",
            ("router.tls.clientCA.enabled=true",):
                "router.tls.clientCA.enabled (mTLS) needs router.tls.enabled",
            ("router.apiKeys.enabled=true",):
                "router.apiKeys.enabled needs router.apiKeys.existingSecret",
            ("internalTLS.enabled=true",):
                "internalTLS.enabled is true but neither internalTLS.existingSecret nor "
                "internalTLS.certManager.enabled is set",
            ("internalTLS.enabled=true", "internalTLS.existingSecret=x",
             "internalTLS.certManager.enabled=true"):
                "internalTLS.existingSecret and internalTLS.certManager.enabled are both set",
            ("internalTLS.certManager.enabled=true",):
                "internalTLS.certManager.enabled needs internalTLS.enabled",
            ("metrics.tls.enabled=true",): "metrics.tls.enabled needs metrics.tls.existingSecret",
            ("metrics.bearerToken.enabled=true",):
                "metrics.bearerToken.enabled needs metrics.bearerToken.existingSecret",
            ("serviceMonitor.enabled=true", "metrics.tls.enabled=true",
             "metrics.tls.existingSecret=m"): "metrics.tls.serverName is required",
            ("networkPolicy.enabled=false", "networkPolicy.egress.enabled=true"):
                "networkPolicy.egress.enabled needs networkPolicy.enabled",
            ("router.tls.enabled=true", "router.tls.existingSecret=x",
             "router.tls.clientCA.enabled=true", "router.http.enabled=true",
             "router.probes.type=http"):
                "the kubelet has no client certificate for the HTTPS port",
            ("router.tls.enabled=true", "router.tls.existingSecret=x", "router.healthPort=8000"):
                "router.healthPort (8000) is already one of the router's ports",
            ("internalTLS.enabled=true", "internalTLS.existingSecret=x", "decode.healthPort=9400"):
                "decode.healthPort (9400) is already one of the decode's ports",
        }
        for sets, message in cases.items():
            with self.subTest(sets=sets):
                out = self.helm.render(sets=sets, check=False)
                self.assertIsInstance(out, subprocess.CompletedProcess)
                self.assertNotEqual(out.returncode, 0)
                self.assertIn(message, out.stderr)
        # The same port numbers are fine while no health port is in use.
        self.render(["router.healthPort=8000", "decode.healthPort=9400"])


if __name__ == "__main__":
    chart_util.main()
