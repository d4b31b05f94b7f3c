{{/* The chart's name, or nameOverride. */}}
{{- define "tidegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The base of every resource name: fullnameOverride, or the release name, joined with the
chart's name unless the release name contains it. Names add a suffix (-controller,
-proxy-admin: 12 characters at most), so the base stops at 50.
*/}}
{{- define "tidegate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tidegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "tidegate.labels" -}}
helm.sh/chart: {{ include "tidegate.chart" . }}
app.kubernetes.io/name: {{ include "tidegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tidegate
{{- end }}

{{/* Selector labels of one component: include "tidegate.selectorLabels" (list . "proxy") */}}
{{- define "tidegate.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "tidegate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Labels of one component's resources: include "tidegate.componentLabels" (list . "proxy") */}}
{{- define "tidegate.componentLabels" -}}
{{ include "tidegate.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "tidegate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "tidegate.controllerName" -}}
{{- printf "%s-controller" (include "tidegate.fullname" .) }}
{{- end }}

{{- define "tidegate.proxyName" -}}
{{- printf "%s-proxy" (include "tidegate.fullname" .) }}
{{- end }}

{{/* The namespace the proxies route: proxy.watchNamespace, else controller.watchNamespace. */}}
{{- define "tidegate.proxyWatchNamespace" -}}
{{- default .Values.controller.watchNamespace .Values.proxy.watchNamespace }}
{{- end }}

{{/* The port of a `host:port` listen address. */}}
{{- define "tidegate.port" -}}
{{- . | toString | splitList ":" | last }}
{{- end }}

{{/* The proxies' first listener's port, and their admin port. */}}
{{- define "tidegate.proxyPort" -}}
{{- $listeners := .Values.proxy.config.listeners | default list }}
{{- if not $listeners }}
{{- fail "proxy.config.listeners needs at least one listener" }}
{{- end }}
{{- include "tidegate.port" (index $listeners 0).listen }}
{{- end }}

{{- define "tidegate.adminPort" -}}
{{- $admin := .Values.proxy.config.admin | default dict }}
{{- $listen := $admin.listen | default "127.0.0.1:9901" }}
{{- if hasPrefix "127." $listen }}
{{- fail "proxy.config.admin.listen must not be loopback: the controller reads the proxies' /metrics" }}
{{- end }}
{{- include "tidegate.port" $listen }}
{{- end }}

{{/* Pod placement shared by the controller and the proxies: include "tidegate.placement" (list . "proxy") */}}
{{- define "tidegate.placement" -}}
{{- $root := index . 0 -}}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $root.Values.affinity }}
affinity:
  {{- toYaml $root.Values.affinity | nindent 2 }}
{{- else }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "tidegate.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end }}

{{/* The pods' and containers' security settings: the restricted Pod Security Standard. */}}
{{- define "tidegate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "tidegate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}
