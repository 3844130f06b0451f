{{/* Names are cut to 63 characters: Kubernetes names and label values allow no more. */}}
{{- define "jobnest.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jobnest.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "jobnest.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jobnest.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "jobnest.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "jobnest.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "jobnest.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jobnest.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "jobnest.adminTokenSecret" -}}
{{- default (printf "%s-admin-token" (include "jobnest.fullname" .)) .Values.server.adminToken.existingSecret }}
{{- end }}

{{/* The claim holding the state folder, which job Pods mount too; empty without persistence. */}}
{{- define "jobnest.claimName" -}}
{{- if .Values.persistence.enabled }}
{{- default (include "jobnest.fullname" .) .Values.persistence.existingClaim }}
{{- end }}
{{- end }}

{{- define "jobnest.jobsNamespace" -}}
{{- default .Release.Namespace .Values.kubernetes.namespace }}
{{- end }}

{{/* A map of labels as key=value,key=value, sorted, for --k8s-node-selector. */}}
{{- define "jobnest.nodeSelector" -}}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}
