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
{{- include "convostream.securityConfig" (dict "root" .root "config" $shared) }}
{{- with .values }}
{{- /* A graceful stop must end before the kubelet's SIGKILL. */}}
{{- $_ := set $shared "CONVOSTREAM_SHUTDOWN_TIMEOUT" (toString (max 5 (sub (int .terminationGracePeriodSeconds) 5))) }}
{{- end }}
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

{{/* The operations port, its probes and the security context of a container. */}}
{{- define "convostream.containerCommon" -}}
image: {{ include "convostream.image" .root }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
ports:
  - name: metrics
    containerPort: {{ .root.Values.metrics.port }}
    protocol: TCP
{{- /* More ports of a component (e.g. the webhook receiver's): pass "ports" (a list). */}}
{{- with .ports }}
{{- toYaml . | nindent 2 }}
{{- end }}
# /healthz: the event loop answers (restart if not); /readyz: broker reachable, partitions
# assigned (and for processors tables recovered and SQL reachable). The startup probe gives a
# component the time to wait for Kafka (CONVOSTREAM_STARTUP_TIMEOUT) before liveness counts.
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml .root.Values.probes.startup | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml .root.Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
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
{{- if .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml .values.topologySpreadConstraints | nindent 2 }}
{{- else if .root.Values.topologySpread.enabled }}
# Replicas of a component on different nodes (and zones) where the cluster allows it.
topologySpreadConstraints:
  {{- range .root.Values.topologySpread.topologyKeys }}
  - maxSkew: {{ $.root.Values.topologySpread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $.root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "convostream.selectorLabels" $ | nindent 8 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* extraEnv of every component then of this one; pass the component context. */}}
{{- define "convostream.extraEnv" -}}
{{- with concat .root.Values.extraEnv .values.extraEnv }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* The Secrets of Kafka and Schema Registry security, mounted as files (never in a ConfigMap,
never an environment variable): name, Secret, and which of its keys become which files. */}}
{{- define "convostream.securitySecrets" -}}
{{- $s := .Values.secrets }}
{{- $out := list }}
{{- if and (hasPrefix "SASL_" .Values.kafka.securityProtocol) $s.kafkaSaslPassword.existingSecret }}
{{- $out = append $out (dict "name" "kafka-sasl" "secret" $s.kafkaSaslPassword.existingSecret "items" (list (dict "key" $s.kafkaSaslPassword.key "path" "password"))) }}
{{- end }}
{{- if $s.kafkaTls.existingSecret }}
{{- $items := list (dict "key" $s.kafkaTls.caKey "path" "ca.crt") }}
{{- if $s.kafkaTls.certKey }}
{{- $items = append $items (dict "key" $s.kafkaTls.certKey "path" "tls.crt") }}
{{- $items = append $items (dict "key" $s.kafkaTls.keyKey "path" "tls.key") }}
{{- end }}
{{- $out = append $out (dict "name" "kafka-tls" "secret" $s.kafkaTls.existingSecret "items" $items) }}
{{- end }}
{{- if $s.schemaRegistryPassword.existingSecret }}
{{- $out = append $out (dict "name" "registry-auth" "secret" $s.schemaRegistryPassword.existingSecret "items" (list (dict "key" $s.schemaRegistryPassword.key "path" "password"))) }}
{{- end }}
{{- if $s.schemaRegistryCa.existingSecret }}
{{- $out = append $out (dict "name" "registry-tls" "secret" $s.schemaRegistryCa.existingSecret "items" (list (dict "key" $s.schemaRegistryCa.key "path" "ca.crt"))) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Non-secret security settings: protocol, mechanism, user names and the mounted files' paths.
Pass (dict "root" $ "config" dict-to-fill). */}}
{{- define "convostream.securityConfig" -}}
{{- $v := .root.Values }}
{{- $c := .config }}
{{- $dir := "/etc/convostream/secrets" }}
{{- $_ := set $c "CONVOSTREAM_KAFKA_SECURITY_PROTOCOL" $v.kafka.securityProtocol }}
{{- if hasPrefix "SASL_" $v.kafka.securityProtocol }}
{{- $_ := set $c "CONVOSTREAM_KAFKA_SASL_MECHANISM" $v.kafka.sasl.mechanism }}
{{- $_ := set $c "CONVOSTREAM_KAFKA_SASL_USERNAME" $v.kafka.sasl.username }}
{{- $_ := set $c "CONVOSTREAM_KAFKA_SASL_PASSWORD_FILE" (printf "%s/kafka-sasl/password" $dir) }}
{{- end }}
{{- with $v.secrets.kafkaTls }}
{{- if .existingSecret }}
{{- $_ := set $c "CONVOSTREAM_KAFKA_SSL_CA_FILE" (printf "%s/kafka-tls/ca.crt" $dir) }}
{{- if .certKey }}
{{- $_ := set $c "CONVOSTREAM_KAFKA_SSL_CERT_FILE" (printf "%s/kafka-tls/tls.crt" $dir) }}
{{- $_ := set $c "CONVOSTREAM_KAFKA_SSL_KEY_FILE" (printf "%s/kafka-tls/tls.key" $dir) }}
{{- end }}
{{- end }}
{{- end }}
{{- if $v.schemaRegistryUsername }}
{{- $_ := set $c "CONVOSTREAM_SCHEMA_REGISTRY_USERNAME" $v.schemaRegistryUsername }}
{{- end }}
{{- if $v.secrets.schemaRegistryPassword.existingSecret }}
{{- $_ := set $c "CONVOSTREAM_SCHEMA_REGISTRY_PASSWORD_FILE" (printf "%s/registry-auth/password" $dir) }}
{{- end }}
{{- if $v.secrets.schemaRegistryCa.existingSecret }}
{{- $_ := set $c "CONVOSTREAM_SCHEMA_REGISTRY_CA_FILE" (printf "%s/registry-tls/ca.crt" $dir) }}
{{- end }}
{{- end }}

{{/* The security Secrets' mounts, extraVolumeMounts of every component, then of this one. */}}
{{- define "convostream.extraVolumeMounts" -}}
{{- $mounts := list }}
{{- range include "convostream.securitySecrets" .root | fromJsonArray }}
{{- $mounts = append $mounts (dict "name" .name "mountPath" (printf "/etc/convostream/secrets/%s" .name) "readOnly" true) }}
{{- end }}
{{- with concat $mounts .root.Values.extraVolumeMounts .values.extraVolumeMounts }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{- define "convostream.extraVolumes" -}}
{{- $volumes := list }}
{{- range include "convostream.securitySecrets" .root | fromJsonArray }}
{{- $volumes = append $volumes (dict "name" .name "secret" (dict "secretName" .secret "items" .items "defaultMode" 288)) }}
{{- end }}
{{- with concat $volumes .root.Values.extraVolumes .values.extraVolumes }}
{{- toYaml . }}
{{- end }}
{{- end }}
