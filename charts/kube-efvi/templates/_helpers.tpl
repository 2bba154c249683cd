{{- define "kube-efvi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kube-efvi.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kube-efvi.agentName" -}}
{{- printf "%s-agent" (include "kube-efvi.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kube-efvi.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kube-efvi.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kube-efvi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kube-efvi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "kube-efvi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kube-efvi.agentName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kube-efvi.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kube-efvi.privileged" -}}
{{- if or .Values.agent.privileged (eq .Values.bpf.mountPropagation "Bidirectional") -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{- define "kube-efvi.apiEnv" -}}
{{- if .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.apiServer.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.apiServer.port | default "443" | quote }}
{{- end }}
{{- end -}}

{{- define "kube-efvi.cniMounts" -}}
- name: cni-bin
  mountPath: /host/opt/cni/bin
- name: cni-conf
  mountPath: /host/etc/cni/net.d
{{- end -}}
