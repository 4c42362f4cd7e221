{{/* Names, labels and the broker URL shared by every template. */}}

{{- define "ala.name" -}}
{{- printf "%s" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "ala.labels" -}}
app.kubernetes.io/part-of: ala
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ala.selector" -}}
app.kubernetes.io/part-of: ala
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{/* The broker: natsUrl if set, else the NATS this release installs. */}}
{{- define "ala.natsUrl" -}}
{{- if .Values.natsUrl -}}
{{- .Values.natsUrl -}}
{{- else -}}
{{- printf "nats://%s-nats:4222" .Release.Name -}}
{{- end -}}
{{- end -}}

{{- define "ala.image" -}}
{{- $image := merge (dict) .spec.image .root.Values.image -}}
{{- printf "%s:%s" $image.repository $image.tag -}}
{{- end -}}

{{/* "a", "b", ...: subjects for a NATS config (toJson would escape ">" as \u003e). */}}
{{- define "ala.quotedList" -}}
{{- range $i, $item := . }}{{ if $i }}, {{ end }}"{{ $item }}"{{ end -}}
{{- end -}}
