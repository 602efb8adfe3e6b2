{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "bizpilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: the release name, with the chart name unless it already has it. */}}
{{- define "bizpilot.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The mode, checked. */}}
{{- define "bizpilot.mode" -}}
{{- if not (has .Values.mode (list "gateway" "sidecar")) -}}
{{- fail (printf "mode must be gateway or sidecar, not %q" .Values.mode) -}}
{{- end -}}
{{- .Values.mode -}}
{{- end -}}

{{- define "bizpilot.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "bizpilot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bizpilot
{{- end -}}

{{- define "bizpilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bizpilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ include "bizpilot.mode" . }}
{{- end -}}

{{- define "bizpilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bizpilot.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "bizpilot.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The bizpilot configuration of the mode, as YAML. */}}
{{- define "bizpilot.config" -}}
{{- $config := index .Values.config (include "bizpilot.mode" .) -}}
{{- if not $config -}}
{{- fail (printf "config.%s is empty: bizpilot needs a configuration" .Values.mode) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
The bizpilot container. Used by the gateway Deployment and rendered, in sidecar mode, as the
snippet to add to an application's pod (see NOTES.txt). In sidecar mode it is a native sidecar:
an init container with restartPolicy: Always.
*/}}
{{- define "bizpilot.container" -}}
{{- $sidecar := eq (include "bizpilot.mode" .) "sidecar" -}}
{{- $listen := ternary "127.0.0.1" "0.0.0.0" $sidecar -}}
name: bizpilot
image: {{ include "bizpilot.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- if $sidecar }}
restartPolicy: Always
{{- end }}
args: ["run", "--config", "/etc/bizpilot/config.yaml"]
env:
  - name: BIZPILOT_OTLP_GRPC_ENDPOINT
    value: {{ printf "%s:%v" $listen .Values.ports.otlpGrpc | quote }}
  - name: BIZPILOT_OTLP_HTTP_ENDPOINT
    value: {{ printf "%s:%v" $listen .Values.ports.otlpHttp | quote }}
  - name: BIZPILOT_ADMIN_ENDPOINT
    value: {{ printf "0.0.0.0:%v" .Values.ports.admin | quote }}
  - name: BIZPILOT_HEALTH_ENDPOINT
    value: {{ printf "0.0.0.0:%v" .Values.ports.health | quote }}
{{- if $sidecar }}
  - name: BIZPILOT_GATEWAY_ENDPOINT
    value: {{ .Values.sidecar.gatewayEndpoint | quote }}
  - name: BIZPILOT_HASH_KEY
    valueFrom:
      secretKeyRef:
        name: {{ .Values.sidecar.hashKeySecret.name }}
        key: {{ .Values.sidecar.hashKeySecret.key }}
{{- else }}
  - name: BIZPILOT_PROMETHEUS_ENDPOINT
    value: {{ printf "0.0.0.0:%v" .Values.ports.prometheus | quote }}
  - name: BIZPILOT_OTLP_BACKEND_ENDPOINT
    value: {{ .Values.gateway.otlpBackendEndpoint | quote }}
  - name: BIZPILOT_STORAGE_DIR
    value: {{ .Values.storage.mountPath | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . | indent 2 }}
{{- end }}
ports:
{{- if not $sidecar }}
  - name: otlp-grpc
    containerPort: {{ .Values.ports.otlpGrpc }}
    protocol: TCP
  - name: otlp-http
    containerPort: {{ .Values.ports.otlpHttp }}
    protocol: TCP
  - name: prometheus
    containerPort: {{ .Values.ports.prometheus }}
    protocol: TCP
{{- end }}
  - name: {{ ternary "bizpilot-admin" "admin" $sidecar }}
    containerPort: {{ .Values.ports.admin }}
    protocol: TCP
  - name: {{ ternary "bizpilot-health" "health" $sidecar }}
    containerPort: {{ .Values.ports.health }}
    protocol: TCP
{{- $health := .Values.ports.health -}}
{{- range $field, $probe := dict "startupProbe" .Values.probes.startup "livenessProbe" .Values.probes.liveness "readinessProbe" .Values.probes.readiness }}
{{- if and $probe $probe.enabled }}
{{ $field }}:
  httpGet:
    path: {{ $probe.path }}
    port: {{ $health }}
  {{- with omit $probe "enabled" "path" }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end }}
{{- if .Values.preStopSleepSeconds }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ .Values.preStopSleepSeconds }}
{{- end }}
resources:
  {{- toYaml (ternary .Values.sidecar.resources .Values.gateway.resources $sidecar) | nindent 2 }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: bizpilot-config
    mountPath: /etc/bizpilot
    readOnly: true
  - name: bizpilot-tmp
    mountPath: /tmp
{{- if not $sidecar }}
  - name: bizpilot-state
    mountPath: {{ .Values.storage.mountPath }}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The volumes the container mounts. */}}
{{- define "bizpilot.volumes" -}}
- name: bizpilot-config
  configMap:
    name: {{ include "bizpilot.fullname" . }}
- name: bizpilot-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if ne (include "bizpilot.mode" .) "sidecar" }}
- name: bizpilot-state
  {{- toYaml .Values.storage.volume | nindent 2 }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}
