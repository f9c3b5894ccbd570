{{/* The release's full name: the release name when it contains the chart's, else RELEASE-ovc. */}}
{{- define "ovc.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ovc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ovc.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ovc.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Selector labels of one component: include "ovc.selectorLabels" (list . "api") */}}
{{- define "ovc.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ $ctx.Chart.Name }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Labels of every object: include "ovc.labels" (list . "api"); "" for no component. */}}
{{- define "ovc.labels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ $ctx.Chart.Name }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
{{- with index . 1 }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $ctx.Chart.Name $ctx.Chart.Version }}
{{- end -}}

{{/* The environment every ovc container shares: the database and the log filter. */}}
{{- define "ovc.databaseEnv" -}}
- name: OVC_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret: the Secret holding the PostgreSQL URL" .Values.database.existingSecret }}
      key: {{ .Values.database.key }}
{{- with .Values.database.schema }}
- name: OVC_PG_SCHEMA
  value: {{ . | quote }}
{{- end }}
- name: OVC_LOG
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{/* The environment of the processes that drive the host (API and workers). */}}
{{- define "ovc.hostEnv" -}}
- name: OVC_HOST
  value: {{ .Values.host | quote }}
{{- with .Values.kubeHosts }}
- name: OVC_KUBE_HOSTS
  value: {{ join "," . | quote }}
{{- end }}
{{- with .Values.vclusterChart }}
- name: OVC_KUBE_CHART
  value: {{ . | quote }}
{{- end }}
{{- with .Values.vclusterChartVersion }}
- name: OVC_VCLUSTER_VERSION
  value: {{ . | quote }}
- name: OVC_KUBE_CHART_VERSION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.otlp.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- if eq .Values.host "kube" }}
# helm's writable directories (the root filesystem is read-only)
- name: HELM_CACHE_HOME
  value: /tmp/helm/cache
- name: HELM_CONFIG_HOME
  value: /tmp/helm/config
- name: HELM_DATA_HOME
  value: /tmp/helm/data
{{- end }}
{{- end -}}
