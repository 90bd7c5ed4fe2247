#!/usr/bin/env bash
# The live deployment tests, as CI runs them: the image, the container, the sidecar Pod and the
# Debian package under Docker and systemd (the #[ignore]d tests of tests/deploy.rs).
#
#   bash deploy/test/run.sh                   everything below, then the tests (as root)
#   bash deploy/test/run.sh prepare-packages  only install docker.io and debootstrap if missing
#   bash deploy/test/run.sh prepare           that, and make the base images' root file systems
#                                             (no engine needed; .ci/run starts it early, in
#                                             the background)
#
# Installs what is missing: Debian's docker.io and debootstrap, and cargo-deb. Starts a Docker
# engine with no bridge network when none answers, and stops it on exit. Makes the base images
# when missing (cached, see base-images.sh). Any failure, an engine that does not start
# included, fails the run: nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-all}

if [ "$(id -u)" -ne 0 ]; then
  echo "error: the deployment tests need root (Docker, network namespaces, systemd machines)" >&2
  exit 1
fi
docker=${DOCKER:-/usr/bin/docker}
export DOCKER=$docker

missing=()
if [ ! -x "$docker" ] || ! command -v dockerd >/dev/null 2>&1; then missing+=(docker.io); fi
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  log=$(mktemp)
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: could not install ${missing[*]}" >&2
    exit 1
  fi
  rm -f "$log"
fi
case $mode in
  prepare-packages) exit 0 ;;
  prepare)
    bash deploy/test/base-images.sh --cache-only runtime systemd
    exit 0
    ;;
  all) ;;
  *)
    echo "usage: $0 [prepare-packages|prepare]" >&2
    exit 2
    ;;
esac

if ! cargo deb --version >/dev/null 2>&1; then
  echo "== cargo install cargo-deb"
  cargo install cargo-deb --locked --version 3.8.0
fi

engine_pid=
stop_engine() {
  if [ -n "$engine_pid" ]; then
    echo "== stopping the Docker engine started for the tests"
    kill "$engine_pid" 2>/dev/null || true
    wait "$engine_pid" 2>/dev/null || true
  fi
}
trap stop_engine EXIT
if ! "$docker" info >/dev/null 2>&1; then
  engine_log=$(mktemp /tmp/dockerd.XXXXXX.log)
  echo "== dockerd --bridge=none --iptables=false (log: $engine_log)"
  dockerd --bridge=none --iptables=false >"$engine_log" 2>&1 &
  engine_pid=$!
  for _ in $(seq 1 120); do
    if "$docker" info >/dev/null 2>&1 || ! kill -0 "$engine_pid" 2>/dev/null; then break; fi
    sleep 0.5
  done
  if ! "$docker" info >/dev/null 2>&1; then
    tail -30 "$engine_log" >&2
    echo "error: the Docker engine did not start" >&2
    exit 1
  fi
fi

echo "== base images"
bash deploy/test/base-images.sh runtime systemd

# The image and the package carry the release binary, built once; the tests themselves are the
# debug build that `cargo test` has already made.
echo "== cargo build --release --bin sparkify"
cargo build --release --locked --bin sparkify
export DEPLOY_TEST_BINARY="$PWD/${CARGO_TARGET_DIR:-target}/release/sparkify"
case ${CARGO_TARGET_DIR:-} in /*) DEPLOY_TEST_BINARY="$CARGO_TARGET_DIR/release/sparkify" ;; esac

echo "== cargo test --test deploy -- --include-ignored"
cargo test --locked --test deploy -- --include-ignored
