{{/* The locked-down profile: TLS, API keys and metrics authentication. Every certificate, key and
token comes from a Secret mounted read-only under /etc/sambay/ (never through values, flags or
environment); the binaries get file paths. Secret volumes are mounted whole (no subPath), so a
renewed Secret reaches the files and --tls-reload-seconds picks it up. */}}

{{/* Secret of the router's public certificate. */}}
{{- define "sambay.routerTlsSecret" -}}
{{- if .Values.router.tls.certManager.enabled }}
{{- printf "%s-router-tls" (include "sambay.fullname" .) }}
{{- else }}
{{- .Values.router.tls.existingSecret }}
{{- end }}
{{- end }}

{{/* Secret of the internal certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "sambay.internalTlsSecret" -}}
{{- if .Values.internalTLS.certManager.enabled }}
{{- printf "%s-internal-tls" (include "sambay.fullname" .) }}
{{- else }}
{{- .Values.internalTLS.existingSecret }}
{{- end }}
{{- end }}

{{/* The health port a component's gRPC probes use, or "" when they probe the main port: the
router's with public TLS and gRPC probes, the workers' with internal TLS (their gRPC port then
requires client certificates). Argument: (dict "root" $ "component" C). */}}
{{- define "sambay.healthPort" -}}
{{- $v := index .root.Values .component }}
{{- if eq .component "router" }}
{{- if and $v.tls.enabled (eq $v.probes.type "grpc") }}{{ $v.healthPort }}{{ end }}
{{- else if .root.Values.internalTLS.enabled }}{{ $v.healthPort }}
{{- end }}
{{- end }}

{{/* The Secret volumes of a component, as a YAML list of {name, secret, dir, items: [{key,
path}]}: the single source of the volumes, the mounts and the flags' paths.
Argument: (dict "root" $ "component" C). */}}
{{- define "sambay.secretVolumes" -}}
{{- $root := .root }}
{{- $out := list }}
{{- if eq .component "router" }}
{{- $r := $root.Values.router }}
{{- if $r.tls.enabled }}
{{- $out = append $out (dict "name" "tls" "secret" (include "sambay.routerTlsSecret" $root) "dir" "/etc/sambay/tls" "items" (list (dict "key" "tls.crt" "path" "tls.crt") (dict "key" "tls.key" "path" "tls.key"))) }}
{{- if $r.tls.clientCA.enabled }}
{{- $out = append $out (dict "name" "client-ca" "secret" ($r.tls.clientCA.existingSecret | default (include "sambay.routerTlsSecret" $root)) "dir" "/etc/sambay/client-ca" "items" (list (dict "key" $r.tls.clientCA.key "path" "ca.crt"))) }}
{{- end }}
{{- end }}
{{- if $r.apiKeys.enabled }}
{{- $out = append $out (dict "name" "api-keys" "secret" $r.apiKeys.existingSecret "dir" "/etc/sambay/api-keys" "items" (list (dict "key" $r.apiKeys.key "path" "api-keys"))) }}
{{- end }}
{{- end }}
{{- if $root.Values.internalTLS.enabled }}
{{- $out = append $out (dict "name" "internal-tls" "secret" (include "sambay.internalTlsSecret" $root) "dir" "/etc/sambay/internal-tls" "items" (list (dict "key" "tls.crt" "path" "tls.crt") (dict "key" "tls.key" "path" "tls.key") (dict "key" "ca.crt" "path" "ca.crt"))) }}
{{- end }}
{{- $m := $root.Values.metrics }}
{{- if $m.tls.enabled }}
{{- $out = append $out (dict "name" "metrics-tls" "secret" $m.tls.existingSecret "dir" "/etc/sambay/metrics-tls" "items" (list (dict "key" "tls.crt" "path" "tls.crt") (dict "key" "tls.key" "path" "tls.key"))) }}
{{- end }}
{{- if $m.bearerToken.enabled }}
{{- $out = append $out (dict "name" "metrics-token" "secret" $m.bearerToken.existingSecret "dir" "/etc/sambay/metrics-token" "items" (list (dict "key" $m.bearerToken.key "path" "token"))) }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* Pod volumes of the Secrets: owner-and-group readable (fsGroup), nothing for others. */}}
{{- define "sambay.secretPodVolumes" -}}
{{- range fromYamlArray (include "sambay.secretVolumes" .) }}
- name: {{ .name }}
  secret:
    secretName: {{ .secret }}
    defaultMode: 0440
    items:
      {{- toYaml .items | nindent 6 }}
{{- end }}
{{- end }}

{{/* Container mounts of the Secrets: read-only, whole directories. */}}
{{- define "sambay.secretMounts" -}}
{{- range fromYamlArray (include "sambay.secretVolumes" .) }}
- name: {{ .name }}
  mountPath: {{ .dir }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The security flags of a component (paths into the mounts above), the health port and the
reload period. Argument: (dict "root" $ "component" C). */}}
{{- define "sambay.securityArgs" -}}
{{- $root := .root }}
{{- $vols := dict }}
{{- range fromYamlArray (include "sambay.secretVolumes" .) }}
{{- $_ := set $vols .name .dir }}
{{- end }}
{{- if hasKey $vols "tls" }}
- --tls-cert={{ $vols.tls }}/tls.crt
- --tls-key={{ $vols.tls }}/tls.key
{{- end }}
{{- if hasKey $vols "client-ca" }}
- --tls-client-ca={{ index $vols "client-ca" }}/ca.crt
{{- end }}
{{- if hasKey $vols "api-keys" }}
- --api-keys-file={{ index $vols "api-keys" }}/api-keys
{{- end }}
{{- if and (eq .component "router") (not $root.Values.router.reflection) }}
- --reflection=false
{{- end }}
{{- if hasKey $vols "internal-tls" }}
- --internal-tls-cert={{ index $vols "internal-tls" }}/tls.crt
- --internal-tls-key={{ index $vols "internal-tls" }}/tls.key
- --internal-tls-ca={{ index $vols "internal-tls" }}/ca.crt
- --internal-tls-server-name={{ $root.Values.internalTLS.serverName }}
{{- end }}
{{- if hasKey $vols "metrics-tls" }}
- --metrics-tls-cert={{ index $vols "metrics-tls" }}/tls.crt
- --metrics-tls-key={{ index $vols "metrics-tls" }}/tls.key
{{- end }}
{{- if hasKey $vols "metrics-token" }}
- --metrics-bearer-token-file={{ index $vols "metrics-token" }}/token
{{- end }}
{{- if or (hasKey $vols "tls") (hasKey $vols "internal-tls") (hasKey $vols "metrics-tls") }}
- --tls-reload-seconds={{ $root.Values.tlsReloadSeconds }}
{{- end }}
{{- with include "sambay.healthPort" . }}
- --health-port={{ . }}
{{- end }}
{{- end }}

{{/* Settings that contradict each other fail the render, naming the values. */}}
{{- define "sambay.validateSecurity" -}}
{{- $v := .Values }}
{{- $t := $v.router.tls }}
{{- if and $t.enabled (not $t.existingSecret) (not $t.certManager.enabled) }}
{{- fail "router.tls.enabled is true but neither router.tls.existingSecret nor router.tls.certManager.enabled is set: name a Secret with tls.crt and tls.key, or let cert-manager issue one" }}
{{- end }}
{{- if and $t.existingSecret $t.certManager.enabled }}
{{- fail "router.tls.existingSecret and router.tls.certManager.enabled are both set: use one (cert-manager writes its own Secret)" }}
{{- end }}
{{- if and $t.certManager.enabled (not $t.enabled) }}
{{- fail "router.tls.certManager.enabled needs router.tls.enabled (the certificate would be issued and never used)" }}
{{- end }}
{{- if and $t.certManager.enabled (not $t.certManager.issuerRef.name) }}
{{- fail "router.tls.certManager.issuerRef.name is required with router.tls.certManager.enabled: the Issuer or ClusterIssuer that signs the public certificate" }}
{{- end }}
{{- if and $t.clientCA.enabled (not $t.enabled) }}
{{- fail "router.tls.clientCA.enabled (mTLS) needs router.tls.enabled: client certificates are checked in the TLS handshake" }}
{{- end }}
{{- if and $v.router.apiKeys.enabled (not $v.router.apiKeys.existingSecret) }}
{{- fail "router.apiKeys.enabled needs router.apiKeys.existingSecret: a Secret whose key router.apiKeys.key holds the keys file (keys are never taken from values)" }}
{{- end }}
{{- $i := $v.internalTLS }}
{{- if and $i.enabled (not $i.existingSecret) (not $i.certManager.enabled) }}
{{- fail "internalTLS.enabled is true but neither internalTLS.existingSecret nor internalTLS.certManager.enabled is set: name a Secret with tls.crt, tls.key and ca.crt, or let cert-manager issue one" }}
{{- end }}
{{- if and $i.existingSecret $i.certManager.enabled }}
{{- fail "internalTLS.existingSecret and internalTLS.certManager.enabled are both set: use one (cert-manager writes its own Secret)" }}
{{- end }}
{{- if and $i.certManager.enabled (not $i.enabled) }}
{{- fail "internalTLS.certManager.enabled needs internalTLS.enabled (the certificates would be issued and never used)" }}
{{- end }}
{{- $m := $v.metrics }}
{{- if and $m.tls.enabled (not $m.tls.existingSecret) }}
{{- fail "metrics.tls.enabled needs metrics.tls.existingSecret: a Secret with tls.crt, tls.key (and ca.crt for the ServiceMonitor)" }}
{{- end }}
{{- if and $m.bearerToken.enabled (not $m.bearerToken.existingSecret) }}
{{- fail "metrics.bearerToken.enabled needs metrics.bearerToken.existingSecret: a Secret whose key metrics.bearerToken.key holds the token" }}
{{- end }}
{{- if and $v.serviceMonitor.enabled $m.tls.enabled (not $m.tls.serverName) }}
{{- fail "metrics.tls.serverName is required with serviceMonitor.enabled and metrics.tls.enabled: Prometheus scrapes pod IPs, so it must check a DNS name the metrics certificate carries" }}
{{- end }}
{{- if and $v.networkPolicy.egress.enabled (not $v.networkPolicy.enabled) }}
{{- fail "networkPolicy.egress.enabled needs networkPolicy.enabled" }}
{{- end }}
{{- range $c := list "router" "prefill" "decode" }}
{{- $cv := index $v $c }}
{{- if include "sambay.healthPort" (dict "root" $ "component" $c) }}
{{- $taken := list (int $cv.grpcPort) (int $cv.metricsPort) }}
{{- if and (eq $c "router") $cv.http.enabled }}{{ $taken = append $taken (int $cv.http.port) }}{{ end }}
{{- if has (int $cv.healthPort) $taken }}
{{- fail (printf "%s.healthPort (%d) is already one of the %s's ports (gRPC, metrics or HTTP): pick another" $c (int $cv.healthPort) $c) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* NetworkPolicy egress rules, the same for the router and the workers: this release's worker
gRPC ports, DNS, extra rules. */}}
{{- define "sambay.egressRules" -}}
{{- $eg := .Values.networkPolicy.egress }}
{{- range $role := list "prefill" "decode" }}
{{- $w := index $.Values $role }}
{{- if $w.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "sambay.componentSelectorLabels" (dict "root" $ "component" $role) | nindent 10 }}
  ports:
    - port: {{ $w.grpcPort }}
      protocol: TCP
{{- end }}
{{- end }}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with $eg.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with $eg.extraRules }}
{{ toYaml . }}
{{- end }}
{{- end }}
