{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "convostream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already holds it. */}}
{{- define "convostream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "convostream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass (dict "root" $ "component" "collector"). */}}
{{- define "convostream.labels" -}}
helm.sh/chart: {{ include "convostream.chart" .root }}
{{ include "convostream.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: convostream
{{- end }}

{{- define "convostream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "convostream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Name of a component's objects: <fullname>-<component>. */}}
{{- define "convostream.componentName" -}}
{{- printf "%s-%s" (include "convostream.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "convostream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "convostream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "convostream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Non-secret settings of a component: the shared ones, then .Values.config, then its own. */}}
{{- define "convostream.config" -}}
{{- $values := .root.Values }}
{{- $shared := dict
  "CONVOSTREAM_KAFKA_BOOTSTRAP" $values.kafka.bootstrap
  "CONVOSTREAM_TOPIC_PREFIX" $values.kafka.topicPrefix
  "CONVOSTREAM_SCHEMA_REGISTRY_URL" $values.schemaRegistryUrl
  "CONVOSTREAM_UPSTREAM_URL" $values.upstreamUrl
  "CONVOSTREAM_LOG_LEVEL" $values.logLevel
  "CONVOSTREAM_LOG_FORMAT" "json"
  "CONVOSTREAM_METRICS_PORT" (toString $values.metrics.port) }}
{{- $merged := merge (deepCopy .config) (deepCopy $values.config) $shared }}
{{- range $key, $value := $merged }}
{{- /* YAML numbers arrive as float64: keep whole ones as integers, not 1.34217728e+08. */}}
{{- if and (kindIs "float64" $value) (eq $value (float64 (int64 $value))) }}
{{- $value = int64 $value }}
{{- end }}
{{ $key }}: {{ toString $value | quote }}
{{- end }}
{{- end }}

{{/* The ConfigMap of a component; pass (dict "root" $ "component" "collector" "config" map). */}}
{{- define "convostream.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "convostream.componentName" . }}
  labels:
    {{- include "convostream.labels" . | nindent 4 }}
data:
  {{- include "convostream.config" . | trim | nindent 2 }}
{{- end }}

{{/* Pod annotations: config checksum (rolls pods on change) and prometheus.io/* scraping. */}}
{{- define "convostream.podAnnotations" -}}
checksum/config: {{ include "convostream.config" . | sha256sum }}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .root.Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The metrics port, HTTP probes on /metrics and the security context of a container. */}}
{{- define "convostream.containerCommon" -}}
image: {{ include "convostream.image" .root }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
ports:
  - name: metrics
    containerPort: {{ .root.Values.metrics.port }}
    protocol: TCP
livenessProbe:
  httpGet:
    path: /metrics
    port: metrics
  {{- toYaml .root.Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /metrics
    port: metrics
  {{- toYaml .root.Values.probes.readiness | nindent 2 }}
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
envFrom:
  - configMapRef:
      name: {{ include "convostream.componentName" . }}
{{- end }}

{{/* CONVOSTREAM_API_KEY from secrets.apiKey.existingSecret. */}}
{{- define "convostream.apiKeyEnv" -}}
- name: CONVOSTREAM_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.apiKey.existingSecret }}
      key: {{ .Values.secrets.apiKey.key }}
{{- end }}

{{/* Scheduling and pod-level settings shared by the workloads. */}}
{{- define "convostream.podCommon" -}}
serviceAccountName: {{ include "convostream.serviceAccountName" .root }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ .values.terminationGracePeriodSeconds }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
