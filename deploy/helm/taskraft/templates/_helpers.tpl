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

{{/* The initial cluster: node N+1 is pod <fullname>-N, by its stable DNS name, as
CLIENT/PEER so that ports.peer need not be ports.grpc + 2. */}}
{{- define "taskraft.peers" -}}
{{- $name := include "taskraft.fullname" . -}}
{{- $peers := list -}}
{{- range $i := until (int (.Values.initialReplicas | default .Values.replicas)) -}}
{{- $host := printf "%s-%d.%s-headless" $name $i $name -}}
{{- $peers = append $peers (printf "%d=%s:%d/%s:%d" (add $i 1) $host (int $.Values.ports.grpc) $host (int $.Values.ports.peer)) -}}
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

{{- define "taskraft.clusterSecret" -}}
{{- if .Values.clusterSecret.existingSecret -}}
{{- .Values.clusterSecret.existingSecret -}}
{{- else -}}
{{- include "taskraft.fullname" . }}-cluster
{{- end -}}
{{- end -}}

{{/* "true" when peers authenticate each other: a cluster secret or mutual TLS. */}}
{{- define "taskraft.peerAuth" -}}
{{- if or .Values.clusterSecret.value .Values.clusterSecret.existingSecret (and .Values.tls.enabled .Values.tls.clientCA) -}}
true
{{- end -}}
{{- end -}}

{{/* Where the peer service listens. A node whose peer port is reachable from other pods
refuses to start without peer authentication, so: every pod's address with it; a
single node without it keeps the port on loopback; more nodes without it fail here,
before anything is applied. */}}
{{- define "taskraft.peerListen" -}}
{{- $size := max (int .Values.replicas) (int (.Values.initialReplicas | default .Values.replicas)) -}}
{{- if include "taskraft.peerAuth" . -}}
{{- printf "0.0.0.0:%d" (int .Values.ports.peer) -}}
{{- else if le $size 1 -}}
{{- printf "127.0.0.1:%d" (int .Values.ports.peer) -}}
{{- else -}}
{{- fail (printf "taskraft: %d nodes need peer authentication: set clusterSecret.existingSecret (a Secret holding the shared secret under clusterSecret.key) or clusterSecret.value, or mutual TLS (tls.enabled and tls.clientCA). See deploy/README.md, \"TLS, tokens and the cluster secret\"." $size) -}}
{{- end -}}
{{- end -}}
