#!/usr/bin/env bash
# Makes the local base images that the image build and the deployment tests start from, when
# they are missing. No image registry is needed: each image is a Debian bookworm root file
# system made with debootstrap from a Debian package mirror and imported with `docker import`.
#
#   bash deploy/test/base-images.sh [--cache-only] [runtime] [systemd] [rust]
#
# (default: runtime systemd). --cache-only makes the root file systems in the cache and
# imports nothing, so it needs no Docker engine (CI runs it in the background early on).
#
#   sparkify-base/runtime:bookworm  debootstrap --variant=minbase: the runtime stage's base,
#                                   in place of debian:bookworm-slim (build arg RUNTIME_IMAGE)
#   sparkify-base/systemd:bookworm  minbase with systemd, systemd-sysv and dbus: a machine
#                                   that boots systemd as PID 1, for the .deb and unit tests
#   sparkify-base/rust:bookworm     minbase with build-essential and this machine's Rust
#                                   toolchain (`rustc --print sysroot`, docs left out), laid out
#                                   like the rust:*-bookworm images (CARGO_HOME=/usr/local/cargo)
#                                   in place of rust:1.95-bookworm (build arg BUILD_IMAGE)
#
# Caching, so that only the first run on a machine takes minutes: downloaded packages and the
# finished root file systems (as tarballs) are kept under $BASE_IMAGE_CACHE (default
# ~/.cache/sparkify-images). An image already known to the engine is left alone; one whose
# tarball is cached is imported in seconds. Delete the cache directory to start over (the
# rust image is also remade when the host's rustc version changes).
#
# Environment: DOCKER (default /usr/bin/docker), DEBIAN_MIRROR (default
# http://deb.debian.org/debian; point it at a local mirror in an air-gapped site).
set -euo pipefail

docker=${DOCKER:-/usr/bin/docker}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
cache=${BASE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sparkify-images}
mkdir -p "$cache/debs"

cache_only=
if [ "${1:-}" = "--cache-only" ]; then
  cache_only=1
  shift
fi
want=("$@")
if [ ${#want[@]} -eq 0 ]; then want=(runtime systemd); fi

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "error: $1 not found (apt-get install $2)" >&2
    exit 1
  fi
}
need debootstrap debootstrap
if [ -z "$cache_only" ] && ! "$docker" info >/dev/null 2>&1; then
  echo "error: no Docker engine answers $docker (start dockerd first)" >&2
  exit 1
fi

# debootstrap into a fresh directory, then pack it; prints nothing on success but the time.
# $1 name, $2 extra packages (comma-separated, may be empty), $3 a hook run in the new root.
bootstrap() {
  local name=$1 include=$2 hook=${3:-} root log started
  root=$(mktemp -d "$cache/root-$name.XXXXXX")
  log="$cache/debootstrap-$name.log"
  started=$SECONDS
  echo "   debootstrap --variant=minbase ${include:+--include=$include }$suite (log: $log)"
  if ! debootstrap --variant=minbase ${include:+--include="$include"} \
    --cache-dir="$cache/debs" "$suite" "$root" "$mirror" >"$log" 2>&1; then
    tail -20 "$log" >&2
    rm -rf "$root"
    echo "error: debootstrap of $name failed (full log: $log)" >&2
    exit 1
  fi
  # What docker import should not carry: package lists and caches, logs, the host's name.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
    "$root"/etc/hostname "$root"/etc/machine-id
  if [ -n "$hook" ]; then "$hook" "$root"; fi
  tar -C "$root" --numeric-owner -cf "$cache/$name.tar.part" .
  mv "$cache/$name.tar.part" "$cache/$name.tar"
  rm -rf "$root"
  echo "   made $cache/$name.tar in $((SECONDS - started)) s"
}

# The systemd machine: an empty machine-id is set at boot; no getty on a console that is not
# there.
systemd_hook() {
  : >"$1/etc/machine-id"
  rm -f "$1"/etc/systemd/system/getty.target.wants/* 2>/dev/null || true
}

# The host's Rust toolchain under /usr/local/rust, the binaries on PATH through
# /usr/local/cargo/bin as in the official rust images. share/ (docs, ~800 MB) is left out.
rust_hook() {
  local sysroot
  sysroot=$(rustc --print sysroot)
  mkdir -p "$1/usr/local/rust" "$1/usr/local/cargo/bin"
  tar -C "$sysroot" -c --exclude=./share/doc . | tar -C "$1/usr/local/rust" -x
  for tool in cargo rustc rustdoc; do
    ln -s "/usr/local/rust/bin/$tool" "$1/usr/local/cargo/bin/$tool"
  done
  # The ca-certificates bundle of this machine, for a build that does reach a registry.
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$1/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"
  fi
}

# $1 name, $2 tag, $3 packages, $4 hook, then `docker import --change` arguments.
image() {
  local name=$1 tag=$2 include=$3 hook=$4
  shift 4
  if [ -n "$cache_only" ]; then
    if [ -f "$cache/$name.tar" ]; then
      echo "== $name: cached"
    else
      echo "== $name: making the root file system"
      bootstrap "$name" "$include" "$hook"
    fi
    return
  fi
  if "$docker" image inspect "$tag" >/dev/null 2>&1; then
    echo "== $tag: present"
    return
  fi
  echo "== $tag: missing"
  if [ ! -f "$cache/$name.tar" ]; then
    bootstrap "$name" "$include" "$hook"
  else
    echo "   from the cache: $cache/$name.tar"
  fi
  "$docker" import "$@" "$cache/$name.tar" "$tag" >/dev/null
  echo "   imported $tag"
}

for which in "${want[@]}"; do
  case $which in
    runtime)
      image runtime sparkify-base/runtime:$suite "" "" \
        --change 'CMD ["/bin/bash"]'
      ;;
    systemd)
      image systemd sparkify-base/systemd:$suite systemd,systemd-sysv,dbus systemd_hook \
        --change 'ENV container=docker' \
        --change 'CMD ["/lib/systemd/systemd"]'
      ;;
    rust)
      need rustc "a Rust toolchain (rustup)"
      version=$(rustc --version | awk '{ print $2 }')
      # A toolchain update on the host makes a new image, not a stale one.
      if [ -f "$cache/rust.version" ] && [ "$(cat "$cache/rust.version")" != "$version" ]; then
        rm -f "$cache/rust.tar"
        "$docker" image rm sparkify-base/rust:$suite >/dev/null 2>&1 || true
      fi
      image rust sparkify-base/rust:$suite build-essential,ca-certificates rust_hook \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]'
      echo "$version" >"$cache/rust.version"
      ;;
    *)
      echo "usage: $0 [runtime] [systemd] [rust]" >&2
      exit 2
      ;;
  esac
done
