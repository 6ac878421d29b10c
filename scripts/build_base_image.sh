#!/usr/bin/env bash
# Build the local base image the container images are built FROM on machines without a
# registry pull (no Docker Hub here): a Debian bookworm minbase root filesystem made with
# debootstrap, plus Python 3 with venv, imported into podman's storage.
#
# The image is the cache: when it already exists the script does nothing, so repeated
# `make image` / CI runs pay the ~3 minute debootstrap once. Pass --force to rebuild.
#
# Usage: scripts/build_base_image.sh [--force]
# Env:   BASE_IMAGE (default localhost/churn-base:bookworm)
#        DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SUITE (default bookworm)
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-localhost/churn-base:bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
# python-is-python3 gives /usr/bin/python, so Dockerfiles can say `python -m venv` on this
# base and on python:3.12-slim alike.
PACKAGES="python3,python3-venv,python-is-python3,ca-certificates"

force=0
if [[ "${1:-}" == "--force" ]]; then
    force=1
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--force]" >&2
    exit 2
fi

for tool in podman debootstrap; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: '$tool' is not installed (apt-get install -y podman debootstrap)" >&2
        exit 1
    fi
done
if [[ $(id -u) -ne 0 ]]; then
    echo "error: debootstrap needs root (run with sudo)" >&2
    exit 1
fi

if [[ $force -eq 0 ]] && podman image exists "$BASE_IMAGE"; then
    echo "base image $BASE_IMAGE already exists (cached); use --force to rebuild"
    exit 0
fi

rootfs="$(mktemp -d /var/tmp/churn-base.XXXXXX)"
cleanup() { rm -rf --one-file-system "$rootfs"; }
trap cleanup EXIT

start=$(date +%s)
echo "debootstrap $DEBIAN_SUITE (minbase + $PACKAGES) from $DEBIAN_MIRROR ..."
debootstrap --variant=minbase --include="$PACKAGES" "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" \
    >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2
    echo "error: debootstrap failed (full log: $rootfs.log)" >&2
    exit 1
}
rm -f "$rootfs.log"

# Trim what a runtime image never reads: package caches, docs, man pages, locales.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
# Same apt source as the official debian image, for anyone extending this base.
echo "deb $DEBIAN_MIRROR $DEBIAN_SUITE main" >"$rootfs/etc/apt/sources.list"

tar --numeric-owner -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap $DEBIAN_SUITE minbase + python3" \
    - "$BASE_IMAGE" >/dev/null

echo "built $BASE_IMAGE in $(($(date +%s) - start))s ($(podman image inspect --format '{{.Size}}' "$BASE_IMAGE") bytes)"
