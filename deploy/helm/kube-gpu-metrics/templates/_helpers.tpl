{{/* Labels every object carries. */}}
{{- define "kgm.labels" -}}
app.kubernetes.io/part-of: kube-gpu-metrics
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Selector labels of one component: agent or adapter. */}}
{{- define "kgm.selector" -}}
app.kubernetes.io/name: kube-gpu-metrics
app.kubernetes.io/component: {{ . }}
{{- end }}

{{- define "kgm.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The adapter's serving certificate Secret, when there is one. */}}
{{- define "kgm.tlsSecret" -}}
{{- if eq .Values.tls.mode "cert-manager" -}}
kube-gpu-metrics-adapter-tls
{{- else if eq .Values.tls.mode "secret" -}}
{{ required "tls.secretName is required with tls.mode secret" .Values.tls.secretName }}
{{- end -}}
{{- end }}

{{- define "kgm.check" -}}
{{- if not (has .Values.agent.names (list "native" "dcgm" "both")) -}}
{{ fail "agent.names must be native, dcgm or both" }}
{{- end -}}
{{- if not (has .Values.agent.dcgmHostnameLabel (list "hostname" "Hostname")) -}}
{{ fail "agent.dcgmHostnameLabel must be hostname or Hostname" }}
{{- end -}}
{{- if not (has .Values.adapter.source (list "agents" "prometheus")) -}}
{{ fail "adapter.source must be agents or prometheus" }}
{{- end -}}
{{- if and (eq .Values.adapter.source "prometheus") (not .Values.adapter.prometheus.url) -}}
{{ fail "adapter.prometheus.url is required with adapter.source prometheus" }}
{{- end -}}
{{- if not (has .Values.tls.mode (list "self-signed" "cert-manager" "secret")) -}}
{{ fail "tls.mode must be self-signed, cert-manager or secret" }}
{{- end -}}
{{- if and (eq .Values.tls.mode "secret") (not .Values.tls.caBundle) -}}
{{ fail "tls.caBundle (base64 PEM of the CA) is required with tls.mode secret" }}
{{- end -}}
{{- end }}
