#!/bin/bash
# Container HEALTHCHECK: GET /healthz from the daemon's own HTTP endpoint; exit 0 on HTTP 200.
#
# Why a bash script: the runtime image has no curl or wget, sparkify has no "health"
# subcommand, and installing an HTTP client only for this would add packages (and CVEs) to
# every image. bash, which debian:bookworm-slim already has, can open a TCP connection through
# /dev/tcp, and HTTP/1.0 needs no more than one request line. The address comes from the same
# variable the daemon reads, so changing the port in one place keeps the probe right.
set -u

addr=${SPARKIFY_TELEMETRY__HTTP_ADDR-0.0.0.0:9108}
if [ -z "$addr" ]; then
  echo "telemetry.http_addr is empty: the endpoint is disabled, nothing to probe" >&2
  exit 1
fi
port=${addr##*:}
host=${addr%:*}
host=${host#[}
host=${host%]}
# A wildcard bind is reached through loopback.
case $host in
  0.0.0.0 | "") host=127.0.0.1 ;;
  ::) host=::1 ;;
esac

exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 5 status <&3 || exit 1
case $status in
  "HTTP/1."?" 200"*) exit 0 ;;
  *) echo "healthz: ${status%$'\r'}" >&2; exit 1 ;;
esac
