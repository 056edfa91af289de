{{/* Names, labels and the pieces shared by the router and the two worker groups. */}}

{{- define "sambay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix; component names are appended (-router, -prefill, -decode), so it is
kept to 52 characters. */}}
{{- define "sambay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sambay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sambay.labels" -}}
helm.sh/chart: {{ include "sambay.chart" . }}
{{ include "sambay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sambay-serve
{{- end }}

{{- define "sambay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sambay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (dict "root" $ "component" "router"). */}}
{{- define "sambay.componentLabels" -}}
{{ include "sambay.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "sambay.componentSelectorLabels" -}}
{{ include "sambay.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every worker pod of the release carries this label (the NetworkPolicy's peer selector). */}}
{{- define "sambay.workerPeerLabels" -}}
{{ include "sambay.selectorLabels" . }}
sambay.dev/worker: "true"
{{- end }}

{{- define "sambay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sambay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sambay.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* --model: the mounted volume plus subPath. */}}
{{- define "sambay.modelDir" -}}
{{- $m := .Values.model }}
{{- if $m.subPath }}
{{- printf "%s/%s" (trimSuffix "/" $m.mountPath) (trimPrefix "/" $m.subPath) }}
{{- else }}
{{- $m.mountPath }}
{{- end }}
{{- end }}

{{- define "sambay.modelClaimName" -}}
{{- if eq .Values.model.source "existingClaim" }}
{{- required "model.existingClaim is required when model.source is existingClaim" .Values.model.existingClaim }}
{{- else }}
{{- printf "%s-models" (include "sambay.fullname" .) }}
{{- end }}
{{- end }}

{{/* The model volume (read-only everywhere), /tmp and, for workers, /dev/shm. */}}
{{- define "sambay.modelVolume" -}}
- name: models
{{- if eq .Values.model.source "hostPath" }}
  hostPath:
    path: {{ required "model.hostPath.path is required when model.source is hostPath" .Values.model.hostPath.path }}
    type: {{ .Values.model.hostPath.type }}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ include "sambay.modelClaimName" . }}
    readOnly: true
{{- end }}
{{- end }}

{{/* Pod annotations: prometheus.io/* (podScrapeAnnotations) and the component's own.
Arguments: (dict "root" $ "v" <component values>). */}}
{{- define "sambay.podAnnotations" -}}
{{- $a := dict }}
{{- if .root.Values.podScrapeAnnotations }}
{{- $_ := set $a "prometheus.io/scrape" "true" }}
{{- $_ := set $a "prometheus.io/port" (toString .v.metricsPort) }}
{{- $_ := set $a "prometheus.io/path" "/metrics" }}
{{- if .root.Values.metrics.tls.enabled }}
{{- $_ := set $a "prometheus.io/scheme" "https" }}
{{- end }}
{{- end }}
{{- $a = merge (deepCopy (.v.podAnnotations | default dict)) $a }}
{{- if $a -}}
annotations:
  {{- toYaml $a | nindent 2 }}
{{- end }}
{{- end }}

{{/* Grace period: explicit, or preStop + drain + 15 s. Argument: a component's values. */}}
{{- define "sambay.gracePeriod" -}}
{{- if kindIs "invalid" .terminationGracePeriodSeconds }}
{{- add (int .preStopDelaySeconds) (int .drainTimeoutSeconds) 15 }}
{{- else }}
{{- int .terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* GPUs per pod of a worker group: gpus, or tp when gpus is null. */}}
{{- define "sambay.gpus" -}}
{{- if kindIs "invalid" .gpus }}{{ int .tp }}{{ else }}{{ int .gpus }}{{ end }}
{{- end }}

{{/* Discovery name of a worker group: its headless Service's FQDN and gRPC port.
Argument: (dict "root" $ "role" "prefill"). */}}
{{- define "sambay.workerDns" -}}
{{- $v := index .root.Values .role }}
{{- printf "%s-%s.%s.svc.%s:%d" (include "sambay.fullname" .root) .role .root.Release.Namespace .root.Values.clusterDomain (int $v.grpcPort) }}
{{- end }}

{{/* Native gRPC probes. Arguments: (dict "p" <probe values> "port" N "service" S). */}}
{{- define "sambay.grpcProbe" -}}
grpc:
  port: {{ .port }}
  service: {{ .service | quote }}
periodSeconds: {{ .p.periodSeconds }}
timeoutSeconds: {{ .p.timeoutSeconds }}
failureThreshold: {{ .p.failureThreshold }}
{{- end }}

{{/* HTTP GET probes (the router's HTTP API: /health, /ready).
Arguments: (dict "p" <probe values> "port" N "path" P). */}}
{{- define "sambay.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
  scheme: {{ .scheme | default "HTTP" }}
periodSeconds: {{ .p.periodSeconds }}
timeoutSeconds: {{ .p.timeoutSeconds }}
failureThreshold: {{ .p.failureThreshold }}
{{- end }}

{{/* The PodDisruptionBudget spec body. Argument: pdb values. */}}
{{- define "sambay.pdbSpec" -}}
{{- if not (kindIs "invalid" .minAvailable) -}}
minAvailable: {{ .minAvailable }}
{{- else -}}
maxUnavailable: {{ .maxUnavailable | default 1 }}
{{- end }}
{{- end }}

{{/* The alert rules (deploy/prometheus/alerts.yml is this with the default thresholds). */}}
{{- define "sambay.alertGroups" -}}
{{- $t := .Values.prometheusRule -}}
- name: sambay
  rules:
    - alert: SambayHighTimeToFirstToken
      expr: histogram_quantile(0.99, sum by (namespace, le) (rate(sambay_router_time_to_first_token_seconds_bucket[5m]))) > {{ $t.ttftP99Seconds }}
      for: 5m
      labels:
        severity: warning
      annotations:
        summary: p99 time to first token is above {{ $t.ttftP99Seconds }} s
        description: 'The routers'' p99 time to first token over 5 minutes is {{ "{{" }} $value | humanizeDuration {{ "}}" }}: prefill workers are saturated or failing (queue, prefill time, handoff).'
    - alert: SambayHighInterTokenLatency
      expr: histogram_quantile(0.99, sum by (namespace, le) (rate(sambay_router_inter_token_latency_seconds_bucket[5m]))) > {{ $t.itlP99Seconds }}
      for: 5m
      labels:
        severity: warning
      annotations:
        summary: p99 inter-token latency is above {{ $t.itlP99Seconds }} s
        description: 'The routers'' p99 gap between streamed tokens over 5 minutes is {{ "{{" }} $value | humanizeDuration {{ "}}" }}: decode batches are too large or decode workers too few.'
    - alert: SambayRequestQueueBacklog
      expr: sum by (namespace) (sambay_router_waiting_requests) > {{ $t.queueLength }}
      for: 3m
      labels:
        severity: warning
      annotations:
        summary: more than {{ $t.queueLength }} requests wait in the routers' queues
        description: '{{ "{{" }} $value {{ "}}" }} requests are queued in the routers: raise --max-concurrent or add workers.'
    - alert: SambayStateMemoryHigh
      expr: sambay_worker_state_memory_used_bytes / sambay_worker_state_memory_total_bytes > {{ $t.stateMemoryRatio }}
      for: 5m
      labels:
        severity: warning
      annotations:
        summary: a worker's state memory is above {{ $t.stateMemoryRatio }} of its budget
        description: 'Worker {{ "{{" }} $labels.instance {{ "}}" }} has reserved {{ "{{" }} $value | humanizePercentage {{ "}}" }} of its state memory: new sequences will be refused (RESOURCE_EXHAUSTED).'
    - alert: SambayMigrations
      expr: sum by (namespace) (increase(sambay_router_migrations_total[10m])) > {{ $t.migrationsPer10m }}
      labels:
        severity: warning
      annotations:
        summary: more than {{ $t.migrationsPer10m }} sequences migrated in 10 minutes
        description: '{{ "{{" }} $value {{ "}}" }} sequences moved to another decode worker in 10 minutes: decode workers are failing or restarting.'
    - alert: SambayWorkerDown
      expr: sambay_router_worker_up == 0
      for: 2m
      labels:
        severity: critical
      annotations:
        summary: a worker is out of the routers' placement
        description: 'Worker {{ "{{" }} $labels.worker {{ "}}" }} ({{ "{{" }} $labels.role {{ "}}" }}) fails its health probes or serves another model.'
{{- end }}
