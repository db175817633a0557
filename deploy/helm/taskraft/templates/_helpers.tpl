{{- define "taskraft.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "taskraft.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "taskraft.labels" -}}
{{ include "taskraft.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The initial cluster: node N+1 is pod <fullname>-N, by its stable DNS name. */}}
{{- define "taskraft.peers" -}}
{{- $name := include "taskraft.fullname" . -}}
{{- $peers := list -}}
{{- range $i := until (int (.Values.initialReplicas | default .Values.replicas)) -}}
{{- $peers = append $peers (printf "%d=%s-%d.%s-headless:%d" (add $i 1) $name $i $name (int $.Values.ports.grpc)) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{- define "taskraft.tokenSecret" -}}
{{- if .Values.token.existingSecret -}}
{{- .Values.token.existingSecret -}}
{{- else -}}
{{- include "taskraft.fullname" . }}-token
{{- end -}}
{{- end -}}
