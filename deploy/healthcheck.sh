#!/bin/bash
# Container HEALTHCHECK: GET /healthz on the service's own port, without curl in the image.
# Port: APP__HTTP__PORT when set, else the service's compiled-in default (written at build time).
# Exit 0 on HTTP 200, 1 otherwise (Docker's convention).
set -uo pipefail
port="${APP__HTTP__PORT:-$(cat /etc/service/default-port 2>/dev/null || echo 8080)}"
path="${1:-/healthz}"
exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' "${path}" >&3
IFS= read -r -t 2 status <&3 || exit 1
exec 3<&- 3>&-
[[ "${status}" == HTTP/1.[01]\ 200* ]] || { echo "unhealthy: ${status:-no answer}" >&2; exit 1; }
