#!/usr/bin/env bash
# Static checks of the systemd unit, run by .ci/run:
#   1. `systemd-analyze verify` finds nothing to say about deploy/systemd/sparkify.service
#      (unknown or misspelt directives, bad values and missing executables all print a line);
#   2. `systemd-analyze security --offline=yes` rates its exposure at 2.0 or lower ("OK").
# The container and Kubernetes files are checked by `cargo test --test deploy` instead.
# Installs Debian's systemd package when systemd-analyze is missing (CI images have only Rust).
set -euo pipefail
cd "$(dirname "$0")/.."

unit=deploy/systemd/sparkify.service
max_exposure=2.0

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "systemd-analyze not found: installing Debian's systemd package"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
  log=$(mktemp)
  if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends systemd; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: could not install systemd (for systemd-analyze)" >&2
    exit 1
  fi
  rm -f "$log"
fi
version=$(systemd-analyze --version | awk 'NR == 1 { print $2 }')
echo "systemd-analyze $version"
if [ "${version%%.*}" -lt 250 ] 2>/dev/null; then
  echo "error: systemd $version is too old for 'security --offline' (needs 250 or newer)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# verify refuses a unit whose ExecStart binary does not exist. The unit names the installed
# path (/usr/bin/sparkify); check a copy that points at a stub instead, so the check
# needs no build and no install. The executable's content does not matter to verify.
stub="$work/bin/sparkify"
mkdir -p "$work/bin"
printf '#!/bin/sh\nexit 0\n' >"$stub"
chmod 0755 "$stub"

# Prints what verify says about the unit at $1; fails if it says anything or exits non-zero.
# Lines about other units (the host's own configuration) are shown but not counted.
verify_unit() {
  local out status=0
  out=$(systemd-analyze verify --man=no "$1" 2>&1) || status=$?
  if [ -n "$out" ]; then
    printf '%s\n' "$out" | sed 's/^/  /'
  fi
  if [ "$status" -ne 0 ] || printf '%s\n' "$out" | grep -q 'sparkify'; then
    return 1
  fi
}

mkdir -p "$work/unit" "$work/broken"
sed "s|/usr/bin/sparkify|$stub|g" "$unit" >"$work/unit/sparkify.service"
if ! grep -q "^ExecStart=$stub run" "$work/unit/sparkify.service"; then
  echo "error: $unit no longer starts /usr/bin/sparkify run; update deploy/check.sh" >&2
  exit 1
fi

echo "== systemd-analyze verify $unit"
if ! verify_unit "$work/unit/sparkify.service"; then
  echo "error: systemd-analyze verify found problems in $unit" >&2
  exit 1
fi
echo "  no problems"

# The check above must be able to fail: a misspelt directive has to be reported.
sed 's/^ProtectSystem=/ProtectSytem=/' "$work/unit/sparkify.service" >"$work/broken/sparkify.service"
if verify_unit "$work/broken/sparkify.service" >/dev/null; then
  echo "error: verify did not notice a misspelt directive; this check proves nothing" >&2
  exit 1
fi

echo "== systemd-analyze security --offline=yes $unit"
report=$(systemd-analyze security --offline=yes --no-pager "$work/unit/sparkify.service" 2>&1) || true
printf '%s\n' "$report"
exposure=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for sparkify.service: \([0-9.]*\).*/\1/p')
if [ -z "$exposure" ]; then
  echo "error: no overall exposure level in the output above" >&2
  exit 1
fi
if awk -v e="$exposure" -v max="$max_exposure" 'BEGIN { exit !(e > max) }'; then
  echo "error: exposure $exposure is above $max_exposure; tighten the sandbox in $unit" >&2
  exit 1
fi
echo "exposure $exposure <= $max_exposure: OK"
