#!/usr/bin/env bash
# Install the Debian packages the local run and the tests need, when they are missing.
#
#   scripts/deps.sh           redis-server, postgresql, curl, chromium + chromium-driver
#                             (the headless browser of usage-meter's dashboard test), and
#                             python3 with venv (scripts/openapi-tools.sh's OpenAPI checkers)
#   scripts/deps.sh --bench   the same plus wrk (HTTP load generator for `make bench`) and
#                             nodejs + npm (the Node webhook handler the webhook bench compares
#                             against; its npm packages are installed by the bench into .run/)
#
# Idempotent: does nothing (and does not touch apt) when everything is there. Runs
# `apt-get update` once, only when something has to be installed. Does not start the system
# services: `make run` and the tests start their own Redis and Postgres on their own ports
# and data directories.
set -euo pipefail

want_bench=0
for arg in "$@"; do
    case "$arg" in
        --bench) want_bench=1 ;;
        -h | --help)
            sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "deps.sh: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

have_postgres() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" && -x "$dir/psql" ]] && return 0
    done
    return 1
}

missing=()
[[ -x /usr/bin/redis-server ]] || missing+=(redis-server)
have_postgres || missing+=(postgresql)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
[[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)
have_python_venv() { python3 -c 'import venv, ensurepip' >/dev/null 2>&1; }
have_python_venv || missing+=(python3 python3-venv)
if ((want_bench)); then
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    # The benches pin processes (taskset, util-linux) and find Postgres' backends (pgrep).
    command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
    command -v pgrep >/dev/null 2>&1 || missing+=(procps)
    # Debian's own Node (bookworm: 18); npm is a separate Debian package.
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
fi

if ((${#missing[@]} == 0)); then
    echo "deps: all present (redis-server, postgresql, curl, chromium, chromedriver, python3-venv$( ((want_bench)) && echo ', wrk, taskset, pgrep, node, npm'))"
    exit 0
fi

echo "deps: missing Debian packages: ${missing[*]}"

if [[ "$(id -u)" -ne 0 ]]; then
    cat >&2 <<EOF
deps: not running as root, so not installing. Install them with:

    sudo apt-get update && sudo apt-get install -y ${missing[*]}

or run this script as root (sudo bash scripts/deps.sh$( ((want_bench)) && echo ' --bench')), then retry.
EOF
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: apt-get not found; install ${missing[*]} with this system's package manager" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# Keep the packages' maintainer scripts from starting the system-wide redis-server and
# postgresql services (Debian's standard switch: policy-rc.d exiting 101 = "do not start").
# Only when no policy is in place already; removed again afterwards.
policy=/usr/sbin/policy-rc.d
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# temporary, from scripts/deps.sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

echo "+ apt-get update -q"
apt-get update -q
echo "+ apt-get install -y -q --no-install-recommends ${missing[*]}"
apt-get install -y -q --no-install-recommends "${missing[@]}"

# Check again: a package that installed but left the binaries elsewhere is an error here,
# not a confusing failure later.
[[ -x /usr/bin/redis-server ]] || { echo "deps: /usr/bin/redis-server still missing" >&2; exit 1; }
have_postgres || { echo "deps: no /usr/lib/postgresql/<major>/bin/{initdb,pg_ctl,postgres,psql}" >&2; exit 1; }
command -v curl >/dev/null 2>&1 || { echo "deps: curl still missing" >&2; exit 1; }
[[ -x /usr/bin/chromium ]] || { echo "deps: /usr/bin/chromium still missing" >&2; exit 1; }
[[ -x /usr/bin/chromedriver ]] || { echo "deps: /usr/bin/chromedriver still missing" >&2; exit 1; }
have_python_venv || { echo "deps: python3 -m venv still unusable" >&2; exit 1; }
if ((want_bench)); then
    command -v wrk >/dev/null 2>&1 || { echo "deps: wrk still missing" >&2; exit 1; }
    command -v node >/dev/null 2>&1 || { echo "deps: node still missing" >&2; exit 1; }
    command -v npm >/dev/null 2>&1 || { echo "deps: npm still missing" >&2; exit 1; }
fi
id postgres >/dev/null 2>&1 || echo "deps: warning: no 'postgres' system user; Postgres cannot run as root" >&2
echo "deps: installed ${missing[*]}"
