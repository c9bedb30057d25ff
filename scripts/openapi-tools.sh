#!/usr/bin/env bash
# Installs the OpenAPI checkers of the e2e suite (schemathesis and openapi-spec-validator, from
# PyPI, every version pinned in scripts/openapi-tools.txt) into a virtualenv under
# ${XDG_CACHE_HOME:-~/.cache}/platform-openapi-tools/<hash of the pins>, once, and prints the
# virtualenv's bin directory (the tests read it from OPENAPI_TOOLS). Progress goes to stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

pins=openapi-tools.txt
key=$(sha256sum "$pins" | cut -c1-16)
venv="${XDG_CACHE_HOME:-$HOME/.cache}/platform-openapi-tools/$key"

# The marker is written last, so an interrupted install is redone rather than half used.
if [[ ! -f "$venv/.installed" ]]; then
    echo "openapi-tools: installing schemathesis and openapi-spec-validator into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --no-input --disable-pip-version-check -r "$pins" >&2
    touch "$venv/.installed"
fi
echo "$venv/bin"
