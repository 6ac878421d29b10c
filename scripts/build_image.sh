#!/usr/bin/env bash
# Build the project's container images with podman (chroot isolation: no daemon, no
# cgroup-managed runtime needed), on top of the local base from build_base_image.sh.
#
# Usage: scripts/build_image.sh [api|trainer|mlflow|all]...   (default: api)
# Env:   BASE_IMAGE  base to build FROM (default localhost/churn-base:bookworm, built and
#                    cached by scripts/build_base_image.sh when missing). Set it to
#                    python:3.12-slim where a registry is reachable.
#        IMAGE_PREFIX (default localhost/churn), IMAGE_TAG (default latest)
#        BUILD_CONTEXT build context directory (default: the repo root)
#        CA_BUNDLE   host CA bundle mounted into RUN steps so pip trusts this network's
#                    TLS (default /etc/ssl/certs/ca-certificates.crt; empty to disable)
set -euo pipefail

cd "$(dirname "$0")/.."

BASE_IMAGE="${BASE_IMAGE:-localhost/churn-base:bookworm}"
IMAGE_PREFIX="${IMAGE_PREFIX:-localhost/churn}"
IMAGE_TAG="${IMAGE_TAG:-latest}"
CA_BUNDLE="${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
BUILD_CONTEXT="${BUILD_CONTEXT:-.}"

if ! command -v podman >/dev/null; then
    echo "error: podman is not installed (apt-get install -y podman); with Docker use" \
        "'docker build -t churn-api .' directly" >&2
    exit 1
fi

if [[ "$BASE_IMAGE" == localhost/churn-base:* ]]; then
    BASE_IMAGE="$BASE_IMAGE" scripts/build_base_image.sh
fi

common=(--isolation chroot --format docker --layers --build-arg "BASE_IMAGE=$BASE_IMAGE")
if [[ -n "$CA_BUNDLE" ]]; then
    if [[ ! -f "$CA_BUNDLE" ]]; then
        echo "error: CA_BUNDLE=$CA_BUNDLE does not exist (set CA_BUNDLE= to disable)" >&2
        exit 1
    fi
    # `--volume` only exists while RUN steps execute: the bundle is not copied into layers.
    common+=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro"
        --build-arg "PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
fi

build() {
    local name="$1"
    shift
    local image="$IMAGE_PREFIX-$name:$IMAGE_TAG"
    local start
    start=$(date +%s)
    echo "==> building $image"
    podman build "${common[@]}" --tag "$image" "$@" "$BUILD_CONTEXT"
    local size
    size=$(podman image inspect --format '{{.Size}}' "$image")
    echo "==> $image: $((size / 1000000)) MB, built in $(($(date +%s) - start))s"
}

targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(api)
[[ " ${targets[*]} " == *" all "* ]] && targets=(api trainer mlflow)

for target in "${targets[@]}"; do
    case "$target" in
        api) build api --file "$BUILD_CONTEXT/Dockerfile" --target runtime ;;
        trainer) build trainer --file "$BUILD_CONTEXT/Dockerfile" --target trainer ;;
        mlflow) build mlflow --file "$BUILD_CONTEXT/docker/mlflow.Dockerfile" ;;
        *)
            echo "error: unknown image '$target' (expected api, trainer, mlflow or all)" >&2
            exit 2
            ;;
    esac
done
