{{/* Names and labels. */}}
{{- define "llmgw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name; components append `-<role>` (at most 9 more characters). */}}
{{- define "llmgw.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llmgw.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmgw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmgw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llmgw.labels" -}}
helm.sh/chart: {{ include "llmgw.chart" . }}
{{ include "llmgw.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llmgw
{{- end }}

{{/* The roles deployed: split -> the five services, all -> one. */}}
{{- define "llmgw.roles" -}}
{{- if eq .Values.mode "all" }}["all"]{{ else }}["edge","auth","router","adapter","metering"]{{ end }}
{{- end }}

{{/* The internal gRPC services: role -> the gRPC service its health check names. */}}
{{- define "llmgw.grpcServices" -}}
{"auth":"llmgw.v1.Auth","router":"llmgw.v1.Router","adapter":"llmgw.v1.Adapter","metering":"llmgw.v1.Metering"}
{{- end }}

{{/* A role's Deployment name: the edge's Service and the all-in-one take the release's. */}}
{{- define "llmgw.roleName" -}}
{{- $full := include "llmgw.fullname" .root }}
{{- if eq .role "all" }}{{ $full }}{{ else }}{{ printf "%s-%s" $full .role }}{{ end }}
{{- end }}

{{- define "llmgw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llmgw.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llmgw.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* Whether a role keeps its store in SQLite files (auth, metering, all without a database). */}}
{{- define "llmgw.sqlite" -}}
{{- if and (has .role (list "auth" "metering" "all")) (not .root.Values.secrets.database.existingSecret) }}true{{ end }}
{{- end }}

{{/* Whether a role's data dir is a PersistentVolumeClaim. */}}
{{- define "llmgw.persistent" -}}
{{- if and .root.Values.persistence.enabled (include "llmgw.sqlite" .) }}true{{ end }}
{{- end }}

{{/* terminationGracePeriodSeconds: longer than the preStop sleep plus shutdown.drain. */}}
{{- define "llmgw.gracePeriod" -}}
{{- $s := .Values.shutdown }}
{{- add (int $s.preStopSleepSeconds) (int $s.drainSeconds) (int $s.graceMarginSeconds) }}
{{- end }}

{{/*
Provider fields that hold secrets: each must be a ${VAR} reference (a secretEnv
entry), never the secret itself, so no credential is ever in a ConfigMap.
*/}}
{{- define "llmgw.checkProviders" -}}
{{- range $i, $p := .Values.config.providers }}
{{- range $field := list "api_key" "azure_ad_token" "credentials" "access_key_id" "secret_access_key" "session_token" }}
{{- $v := get $p $field }}
{{- if and $v (not (regexMatch "^\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}$" (toString $v))) }}
{{- fail (printf "config.providers[%d].%s must be a ${VAR} reference to a Secret (see secretEnv), not the value itself" $i $field) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Refuses what cannot work. */}}
{{- define "llmgw.validate" -}}
{{- include "llmgw.checkProviders" . }}
{{- $root := . }}
{{- range $role := include "llmgw.roles" . | fromJsonArray }}
{{- $c := index $root.Values.components $role }}
{{- if and (include "llmgw.sqlite" (dict "root" $root "role" $role)) (or (gt (int $c.replicas) 1) $c.hpa.enabled) }}
{{- fail (printf "components.%s: more than one replica needs a shared store; set secrets.database (PostgreSQL), or replicas: 1 and hpa.enabled: false" $role) }}
{{- end }}
{{- end }}
{{- if and .Values.secrets.database.existingSecret (not .Values.secrets.masterKey.existingSecret) }}
{{- fail "secrets.masterKey.existingSecret is required with secrets.database: auth must not keep its master key on a pod's disk" }}
{{- end }}
{{- end }}

{{/*
gateway.yaml for one role (dict "root" $ "role" ROLE), built as data and
written with toYaml, so every key is one llmgw knows.
*/}}
{{- define "llmgw.gatewayConfig" -}}
{{- $root := .root }}
{{- $role := .role }}
{{- $v := $root.Values }}
{{- $cfg := dict "data_dir" $v.dataDir }}
{{- if $v.log }}{{ $_ := set $cfg "log" $v.log }}{{ end }}
{{- $edge := omit (deepCopy (default dict $v.config.edge)) "http_addr" "grpc_addr" }}
{{- $_ := set $edge "http_addr" (printf "0.0.0.0:%d" (int $v.ports.http)) }}
{{- $_ := set $edge "grpc_addr" (printf "0.0.0.0:%d" (int $v.ports.grpc)) }}
{{- $_ := set $cfg "edge" $edge }}
{{- with $v.config.providers }}{{ $_ := set $cfg "providers" . }}{{ end }}
{{- with $v.config.models }}{{ $_ := set $cfg "models" . }}{{ end }}
{{- with $v.config.routing }}{{ $_ := set $cfg "routing" . }}{{ end }}
{{- with $v.config.metering }}{{ $_ := set $cfg "metering" . }}{{ end }}
{{- with $v.config.byok }}{{ $_ := set $cfg "byok" . }}{{ end }}
{{- if and $v.secrets.database.existingSecret (has $role (list "auth" "metering" "all")) }}
{{- $_ := set $cfg "database" (dict "url" "${LLMGW_DATABASE_URL}" "max_connections" (int $v.secrets.database.maxConnections)) }}
{{- end }}
{{- if and $v.secrets.redis.existingSecret (has $role (list "edge" "all")) }}
{{- $_ := set $cfg "redis" (dict "url" "${LLMGW_REDIS_URL}") }}
{{- end }}
{{- $consul := eq $v.discovery.mode "consul" }}
{{- $services := dict "discovery" $v.discovery.mode }}
{{- if $consul }}
{{- $c := $v.discovery.consul }}
{{- $addr := default (printf "%s://${HOST_IP}:%d" $c.scheme (int $c.port)) $c.addr }}
{{- $_ := set $services "consul" (dict "addr" $addr "advertise_host" "${POD_IP}") }}
{{- end }}
{{- $ns := $root.Release.Namespace }}
{{- $full := include "llmgw.fullname" $root }}
{{- range $svc := list "auth" "router" "adapter" "metering" }}
{{- $port := int (index $v.ports $svc) }}
{{- $addr := printf "0.0.0.0:%d" $port }}
{{- if not (or $consul (eq $role $svc) (eq $role "all")) }}
{{- /* static discovery: where this role dials the others, their headless Services */}}
{{- $addr = printf "%s-%s.%s.svc.%s:%d" $full $svc $ns $v.clusterDomain $port }}
{{- end }}
{{- $_ := set $services $svc (dict "addr" $addr) }}
{{- end }}
{{- $_ := set $cfg "services" $services }}
{{- if $v.telemetry.otlpEndpoint }}
{{- $_ := set $cfg "telemetry" (dict "otlp_endpoint" $v.telemetry.otlpEndpoint "sample_ratio" $v.telemetry.sampleRatio) }}
{{- end }}
{{- $_ := set $cfg "shutdown" (dict "drain" (printf "%ds" (int $v.shutdown.drainSeconds))) }}
{{- toYaml $cfg }}
{{- end }}

{{/* The environment of a role's container. */}}
{{- define "llmgw.env" -}}
{{- $root := .root }}
{{- $role := .role }}
{{- $v := $root.Values -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: HOST_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- with $v.secrets.masterKey }}
{{- if and .existingSecret (has $role (list "auth" "all")) }}
- name: LLMGW_MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .key }}
{{- if .previousKey }}
- name: LLMGW_MASTER_KEY_PREVIOUS
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .previousKey }}
      optional: true
{{- end }}
{{- end }}
{{- end }}
{{- with $v.secrets.database }}
{{- if and .existingSecret (has $role (list "auth" "metering" "all")) }}
- name: LLMGW_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- with $v.secrets.redis }}
{{- if and .existingSecret (has $role (list "edge" "all")) }}
- name: LLMGW_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- range $v.secretEnv }}
{{- if or (not .components) (has $role .components) }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- if hasKey . "optional" }}
      optional: {{ .optional }}
{{- end }}
{{- end }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
