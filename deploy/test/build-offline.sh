#!/usr/bin/env bash
# Builds the image from source the way an air-gapped site does: local base images (made from
# Debian packages by base-images.sh, or your mirror's), the crates vendored into vendor/
# (`cargo vendor --locked`, from this machine's Cargo cache when it has every crate), and
# `docker build --network none`, so that nothing can come from a network. Prints how long the
# build took and the image's `--version`.
#
#   bash deploy/test/build-offline.sh [TAG]          (default sparkify:0.1.0)
#
# The first build compiles every dependency (about 8 minutes on two cores); BuildKit's cache
# mounts keep them, so a later build recompiles sparkify only.
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-sparkify:0.1.0}
docker=${DOCKER:-/usr/bin/docker}

bash deploy/test/base-images.sh runtime rust

echo "== cargo vendor --locked vendor"
# --offline first: the crates Cargo has already downloaded are enough when every target's
# dependencies were fetched once (cargo fetch); otherwise ask the registry.
if ! cargo vendor --locked --offline vendor >/dev/null 2>vendor.log; then
  cargo vendor --locked vendor >/dev/null 2>vendor.log || { cat vendor.log >&2; exit 1; }
fi
rm -f vendor.log
du -sh vendor

echo "== docker build --network none (BINARY_FROM=source)"
started=$SECONDS
DOCKER_BUILDKIT=1 "$docker" build --network none \
  -f deploy/docker/Dockerfile \
  --build-arg BUILD_IMAGE=sparkify-base/rust:bookworm \
  --build-arg RUNTIME_IMAGE=sparkify-base/runtime:bookworm \
  -t "$tag" .
echo "built $tag from source in $((SECONDS - started)) s"
"$docker" run --rm --network none "$tag" --version
