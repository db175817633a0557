#!/usr/bin/env bash
# bases.sh RUST_TAG RUN_TAG: builds, once per machine, the two images the Dockerfile's
# stages start from, for a machine that cannot pull from a container registry (the test
# machine reaches Debian's mirror and crates.io, not Docker Hub):
#   RUN_TAG   Debian bookworm, minbase (stands in for debian:bookworm-slim)
#   RUST_TAG  the same with gcc and libc6-dev, plus this machine's Rust toolchain in
#             /usr/local (stands in for rust:<version>-bookworm) and this machine's CA
#             bundle, so that cargo inside the build trusts the same TLS as cargo here.
# Needs root, debootstrap and podman. Serialized by the caller (flock).
set -euo pipefail
rust_tag=$1
run_tag=$2
work=${TASKRAFT_CONTAINER_CACHE:-/var/cache/taskraft-tests/container}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$work"

rootfs() { # DIR [EXTRA PACKAGES]
  local dir=$1 extra=${2:-}
  rm -rf "$dir"
  debootstrap --variant=minbase ${extra:+--include=$extra} bookworm "$dir" "$mirror" >"$dir.log" 2>&1 \
    || { tail -20 "$dir.log" >&2; exit 1; }
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
}

if ! podman image exists "$run_tag"; then
  rootfs "$work/run"
  tar -C "$work/run" -c . | podman import --change 'CMD ["/bin/bash"]' - "$run_tag" >/dev/null
  rm -rf "$work/run"
fi

if ! podman image exists "$rust_tag"; then
  rootfs "$work/build" gcc,libc6-dev,ca-certificates
  sysroot=$(rustc --print sysroot)
  cp -a "$sysroot/bin/." "$work/build/usr/local/bin/"
  cp -a "$sysroot/lib/." "$work/build/usr/local/lib/"
  cp /etc/ssl/certs/ca-certificates.crt "$work/build/etc/ssl/certs/ca-certificates.crt"
  tar -C "$work/build" -c . | podman import \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$rust_tag" >/dev/null
  rm -rf "$work/build"
fi
