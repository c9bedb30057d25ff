{{/* Names, labels and the per-service settings shared by every template. */}}

{{- define "platform.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Object name of one service: (dict "root" $ "name" "campaign-api") */}}
{{- define "platform.svcFullname" -}}
{{- printf "%s-%s" (include "platform.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "platform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "platform.commonLabels" -}}
helm.sh/chart: {{ include "platform.chart" . }}
app.kubernetes.io/part-of: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of one service: (dict "root" $ "name" …) */}}
{{- define "platform.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "platform.labels" -}}
{{ include "platform.commonLabels" .root }}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/component: {{ .component | default "server" }}
{{- end -}}

{{- define "platform.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "platform.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* One service's settings: `defaults` deep-merged under its own block, as YAML. */}}
{{- define "platform.settings" -}}
{{- $svc := index .root.Values.services .name -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.defaults) (deepCopy $svc)) -}}
{{- end -}}

{{- define "platform.image" -}}
{{- $g := .root.Values.global.image -}}
{{- $img := .svc.image | default dict -}}
{{- $repo := $img.repository | default (printf "%s/%s/%s" $g.registry $g.repositoryPrefix .name) -}}
{{- $tag := $img.tag | default $g.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* Fails the render when a pod could be killed before it finished draining. */}}
{{- define "platform.checkDrain" -}}
{{- $d := .svc.drain -}}
{{- $needed := add (int $d.preStopSleepSecs) (div (int $d.drainDelayMs) 1000) (int $d.shutdownTimeoutSecs) -}}
{{- if le (int .svc.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "services.%s: terminationGracePeriodSeconds (%d) must exceed preStopSleepSecs + drainDelayMs/1000 + shutdownTimeoutSecs (%d)" .name (int .svc.terminationGracePeriodSeconds) (int $needed)) -}}
{{- end -}}
{{- if ge (int $d.preStopSleepSecs) (int .svc.terminationGracePeriodSeconds) -}}
{{- fail (printf "services.%s: preStopSleepSecs must be below terminationGracePeriodSeconds" .name) -}}
{{- end -}}
{{- end -}}

{{/* Plain (non-secret) configuration of one service, APP__SECTION__KEY: value. */}}
{{- define "platform.configData" -}}
{{- $g := .root.Values.global -}}
{{- $svc := .svc -}}
{{- $data := dict
  "APP__HTTP__HOST" "0.0.0.0"
  "APP__HTTP__PORT" (toString $svc.port)
  "APP__HTTP__DRAIN_DELAY_MS" (toString (int $svc.drain.drainDelayMs))
  "APP__HTTP__SHUTDOWN_TIMEOUT_SECS" (toString (int $svc.drain.shutdownTimeoutSecs))
  "APP__REDIS__MODE" $g.redis.mode
  "APP__REDIS__KEY_PREFIX" $g.redis.keyPrefix
-}}
{{- if not $g.redis.existingSecret }}{{ $_ := set $data "APP__REDIS__URL" $g.redis.url }}{{ end -}}
{{- if $g.otlp.endpoint }}{{ $_ := set $data "APP__TELEMETRY__OTLP_ENDPOINT" $g.otlp.endpoint }}{{ end -}}
{{- if $svc.simpro -}}
{{- $_ := set $data "APP__SIMPRO__BASE_URL" $g.simpro.baseUrl -}}
{{- $_ := set $data "APP__SIMPRO__COMPANY_ID" (toString $g.simpro.companyId) -}}
{{- if and $svc.cronJob $svc.cronJob.enabled }}{{ $_ := set $data "APP__REFRESH__SCHEDULE_ENABLED" "false" }}{{ end -}}
{{- end -}}
{{- if $svc.tenantAuth -}}
{{- $t := $g.tenantAuth -}}
{{- $_ := set $data "APP__TENANT_AUTH__ORG_CLAIM" $t.orgClaim -}}
{{- $_ := set $data "APP__TENANT_AUTH__ISSUERS" $t.issuers -}}
{{- $_ := set $data "APP__TENANT_AUTH__AUDIENCES" $t.audiences -}}
{{- $_ := set $data "APP__TENANT_AUTH__JWKS_URLS" $t.jwksUrls -}}
{{- $_ := set $data "APP__TENANT_AUTH__MINT_TTL_SECS" (toString (int $t.mintTtlSecs)) -}}
{{- end -}}
{{- range $k, $v := $g.env }}{{ $_ := set $data $k (toString $v) }}{{ end -}}
{{- range $k, $v := $svc.env }}{{ $_ := set $data $k (toString $v) }}{{ end -}}
{{- toYaml $data -}}
{{- end -}}

{{/* Secrets, by reference only (secretKeyRef), for one service's container. */}}
{{- define "platform.secretEnv" -}}
{{- $g := .root.Values.global -}}
{{- $svc := .svc -}}
- name: APP__AUTH__ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ required "global.auth.existingSecret is required" $g.auth.existingSecret }}
      key: {{ $g.auth.adminTokenKey }}
{{- if $g.redis.existingSecret }}
- name: APP__REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ $g.redis.existingSecret }}
      key: {{ $g.redis.urlKey }}
{{- end }}
{{- if $svc.database }}
- name: APP__DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ required "global.postgres.existingSecret is required" $g.postgres.existingSecret }}
      key: {{ required (printf "global.postgres.urlKeys.%s is required" .name) (index $g.postgres.urlKeys .name) }}
{{- end }}
{{- if $svc.stripeKey }}
- name: {{ $g.stripe.secretKeyEnv }}
  valueFrom:
    secretKeyRef:
      name: {{ required "global.stripe.existingSecret is required" $g.stripe.existingSecret }}
      key: {{ $g.stripe.secretKeyKey }}
{{- end }}
{{- if $svc.webhookSecrets }}
- name: {{ $g.stripe.webhookSecretsEnv }}
  valueFrom:
    secretKeyRef:
      name: {{ required "global.stripe.existingSecret is required" $g.stripe.existingSecret }}
      key: {{ $g.stripe.webhookSecretsKey }}
{{- end }}
{{- if $svc.tenantAuth }}
{{- /* Required: without it the development secret of config/default.toml would be trusted. */}}
- name: APP__TENANT_AUTH__HS256_SECRETS
  valueFrom:
    secretKeyRef:
      name: {{ required "global.tenantAuth.existingSecret is required" $g.tenantAuth.existingSecret }}
      key: {{ $g.tenantAuth.hs256SecretsKey }}
{{- end }}
{{- if $svc.simpro }}
- name: APP__SIMPRO__TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ required "global.simpro.existingSecret is required" $g.simpro.existingSecret }}
      key: {{ $g.simpro.tokenKey }}
{{- end }}
{{- end -}}

{{/* Names of the Secrets a service reads (hashed into checksum/secret-refs). */}}
{{- define "platform.secretRefs" -}}
{{- $g := .root.Values.global -}}
{{- list $g.auth $g.tenantAuth $g.redis $g.postgres $g.stripe $g.simpro | toJson -}}
{{- end -}}

{{- define "platform.probe" -}}
httpGet:
  path: {{ .probe.path }}
  port: http
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end -}}

{{/* The publicRoutes of enabled services, as YAML: a list of {service, name, port, path,
pathType, sse}. */}}
{{- define "platform.publicRoutes" -}}
{{- $out := list -}}
{{- range $name, $routes := .Values.publicRoutes -}}
{{- $svc := include "platform.settings" (dict "root" $ "name" $name) | fromYaml -}}
{{- if $svc.enabled -}}
{{- range $routes -}}
{{- $out = append $out (dict "service" $name "name" (include "platform.svcFullname" (dict "root" $ "name" $name)) "port" $svc.port "path" .path "pathType" .pathType "sse" (default false .sse)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "routes" $out) -}}
{{- end -}}

{{/* "true" when the Ingress or the HTTPRoute sends traffic to service .name. */}}
{{- define "platform.routedPublicly" -}}
{{- $v := .root.Values -}}
{{- if and (or $v.ingress.enabled $v.httpRoute.enabled) (index $v.publicRoutes .name) -}}true{{- end -}}
{{- end -}}

{{/* Labels of one alert: (dict "root" $ "severity" "warning") */}}
{{- define "platform.alertLabels" -}}
severity: {{ .severity }}
{{- with .root.Values.prometheusRule.alertLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* runbook_url of one alert: (dict "root" $ "alert" "Name"): a heading of docs/operations.md. */}}
{{- define "platform.runbookUrl" -}}
{{- printf "%s#%s" .root.Values.prometheusRule.runbookUrl (lower .alert) | quote -}}
{{- end -}}
