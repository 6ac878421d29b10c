#!/usr/bin/env bash
# Roll the churn API image out to one environment's Kubernetes namespace.
#
# Usage: scripts/deploy.sh <staging|production> <image-ref>
#   image-ref: an immutable reference (ghcr.io/org/repo/churn-api@sha256:...)
# Env:   KUBECONFIG_DATA  kubeconfig contents for the target cluster (a CI secret). When
#                         empty the script only prints what it would apply and exits 0, so
#                         the pipeline runs end to end in a fork without a cluster.
#        NAMESPACE        default churn-<environment>
#
# Applies deploy/k8s (kustomize) with the image pinned, waits for the rollout, and undoes
# it when the new pods never become ready.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 <staging|production> <image-ref>" >&2
    exit 2
fi
environment="$1"
image="$2"
case "$environment" in
    staging | production) ;;
    *)
        echo "error: environment must be staging or production, got '$environment'" >&2
        exit 2
        ;;
esac
if [[ "$image" != *@sha256:* ]]; then
    echo "error: deploy an immutable digest reference (...@sha256:...), got '$image'" >&2
    exit 2
fi
namespace="${NAMESPACE:-churn-$environment}"
manifests="$(cd "$(dirname "$0")/../deploy/k8s" && pwd)"

if [[ -z "${KUBECONFIG_DATA:-}" ]]; then
    echo "::notice::no cluster configured for $environment (KUBECONFIG_DATA empty);" \
        "would deploy $image to namespace $namespace from $manifests"
    exit 0
fi

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
export KUBECONFIG="$workdir/kubeconfig"
printf '%s' "$KUBECONFIG_DATA" >"$KUBECONFIG"
chmod 600 "$KUBECONFIG"

# An overlay in a temp dir pins the image without editing the checked-in manifests. The base
# is named by a relative path: kustomize refuses an absolute one ("new root cannot be absolute").
base="$(realpath --relative-to="$workdir" "$manifests")"
cat >"$workdir/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $namespace
resources:
  - $base
images:
  - name: ghcr.io/example/churn-mlops/churn-api
    newName: ${image%@*}
    digest: ${image#*@}
YAML

kubectl get namespace "$namespace" >/dev/null 2>&1 || kubectl create namespace "$namespace"
kubectl apply -k "$workdir"
if ! kubectl -n "$namespace" rollout status deployment/churn-api --timeout=300s; then
    echo "::error::rollout of $image to $environment did not become ready; rolling back" >&2
    kubectl -n "$namespace" rollout undo deployment/churn-api
    exit 1
fi
echo "deployed $image to $environment ($namespace)"
