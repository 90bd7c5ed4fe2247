#!/usr/bin/env bash
# Checks of the Prometheus files, run by .ci/run:
#   1. `promtool check config` on the example prometheus.yml (and the rules file it loads);
#   2. `promtool check rules` on sparkify-rules.yml;
#   3. `promtool test rules`: the unit tests in sparkify-rules.test.yml.
# Installs Debian's prometheus package (which ships promtool) when either program is missing,
# and stops and disables the service the package starts: the live test in tests/prometheus.rs
# runs a Prometheus of its own on a loopback port.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "promtool or prometheus not found: installing Debian's prometheus package"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
  log=$(mktemp)
  if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends prometheus; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: could not install prometheus (for promtool and the live test)" >&2
    exit 1
  fi
  rm -f "$log"
  # Under systemd the package enables and starts prometheus.service; elsewhere its init
  # script may have started it. Either way, nothing of it is left running.
  if [ -d /run/systemd/system ]; then
    "${sudo[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  else
    "${sudo[@]}" service prometheus stop >/dev/null 2>&1 || true
  fi
fi
promtool --version | head -n 1

promtool check config prometheus.yml
promtool check rules sparkify-rules.yml
promtool test rules sparkify-rules.test.yml
