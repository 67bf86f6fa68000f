{{/* Labels on every object. The Kustomize base carries the same set minus helm.sh/chart. */}}
{{- define "peerd.labels" -}}
app.kubernetes.io/name: peerd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: peerd
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* Labels that select the DaemonSet's pods (immutable once installed). */}}
{{- define "peerd.selectorLabels" -}}
app.kubernetes.io/name: peerd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
