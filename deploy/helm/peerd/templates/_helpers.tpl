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

{{/* memoryBudgetBytes of the config file: memoryBudget.bytes, else
     memoryBudget.percentOfMemoryLimit of resources.limits.memory (a Kubernetes quantity:
     plain bytes or a Ki/Mi/Gi/Ti, k/M/G/T suffix), else nothing (the binary's default). */}}
{{- define "peerd.memoryBudgetBytes" -}}
{{- $budget := .Values.memoryBudget -}}
{{- if gt (int64 $budget.bytes) 0 -}}
{{- int64 $budget.bytes -}}
{{- else -}}
{{- $limit := dig "limits" "memory" "" .Values.resources | toString -}}
{{- if $limit -}}
{{- $units := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- $number := $limit -}}
{{- $factor := 1 -}}
{{- range $suffix, $multiplier := $units -}}
{{- if hasSuffix $suffix $limit -}}
{{- $number = trimSuffix $suffix $limit -}}
{{- $factor = $multiplier -}}
{{- end -}}
{{- end -}}
{{- if not (regexMatch "^[0-9]+$" $number) -}}
{{- fail (printf "resources.limits.memory %q: memoryBudget needs a whole number with an optional Ki/Mi/Gi/Ti/k/M/G/T suffix, or set memoryBudget.bytes" $limit) -}}
{{- end -}}
{{- div (mul (int64 $number) (int64 $factor) (int64 $budget.percentOfMemoryLimit)) 100 -}}
{{- end -}}
{{- end -}}
{{- end }}
