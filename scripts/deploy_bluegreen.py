#!/usr/bin/env python3
"""Blue/green deploys of the churn API on Kubernetes (deploy/k8s-bluegreen).

The Service `churn-api` selects one colour (`colour: blue|green`); the other colour is idle.

    deploy    put a new image (and model version) on the idle colour, wait for its rollout,
              smoke-test it through its own Service (ready, health, one /predict of a known
              customer answered by the expected model version, metrics), then switch the
              selector and read it back.
              A failed rollout or smoke test leaves the Service where it was (exit 1).
    rollback  switch the selector back to the other colour, which kept running (exit 1 when
              it has no ready pod: switching to it would take the service down).
    status    the live colour and what each colour runs.

Exit codes: 0 done, 1 refused (nothing switched), 2 usage or cluster error. Standard library
only, like scripts/smoke_test.py (whose checks it reuses), so it runs on a bare CD runner with
kubectl and a kubeconfig.

    python3 scripts/deploy_bluegreen.py --namespace churn-production \\
        deploy --image ghcr.io/org/churn-api@sha256:... --model-version 7
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smoke_test import SmokeTestFailure
from smoke_test import run as smoke_test

MANIFESTS = Path(__file__).resolve().parents[1] / "deploy" / "k8s-bluegreen"
SERVICE = "churn-api"
COLOURS = ("blue", "green")
CONTAINER = "api"
# The image name the base manifests use (deploy/k8s/kustomization.yaml `images`).
BASE_IMAGE = "ghcr.io/example/churn-mlops/churn-api"
# On the colour's Deployment and pod template: which model version the colour serves. On the
# template it also forces a rollout when only the model changes (same image, new MODEL_URI).
VERSION_ANNOTATION = "churn-mlops/model-version"
FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")


class Refused(RuntimeError):
    """The deploy or rollback stopped before switching; the Service is unchanged."""


class ClusterError(RuntimeError):
    """kubectl failed or the cluster is not in a blue/green shape."""


def other(colour: str) -> str:
    return COLOURS[1 - COLOURS.index(colour)]


class Kubectl:
    """kubectl in one namespace (or the kubeconfig's current one)."""

    def __init__(self, namespace: str | None) -> None:
        self.prefix = ["kubectl", *(["--namespace", namespace] if namespace else [])]

    def run(self, *args: str, timeout: float = 120.0) -> str:
        try:
            result = subprocess.run(
                [*self.prefix, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterError(f"kubectl {args[0]} could not run: {exc}") from exc
        if result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def get(self, kind: str, name: str) -> dict[str, Any]:
        text = self.run("get", kind, name, "--output", "json")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ClusterError(f"kubectl get {kind} {name} returned no JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ClusterError(f"kubectl get {kind} {name} returned {type(value).__name__}")
        return value

    def rollout_ready(self, colour: str, timeout_s: int) -> bool:
        try:
            self.run(
                "rollout", "status", f"deployment/{SERVICE}-{colour}",
                f"--timeout={timeout_s}s", timeout=timeout_s + 30,
            )  # fmt: skip
        except ClusterError as exc:
            print(exc, file=sys.stderr)
            return False
        return True


def live_colour(kubectl: Kubectl) -> str:
    """The colour the Service selects now; anything else than one of COLOURS is an error."""
    try:
        service = kubectl.get("service", SERVICE)
    except ClusterError as exc:
        raise ClusterError(
            f"{exc}\ncannot read the live colour from service/{SERVICE}; create the blue/green "
            f"objects once with: kubectl apply -k {MANIFESTS}"
        ) from exc
    selector = service.get("spec", {}).get("selector") or {}
    colour = selector.get("colour")
    if colour not in COLOURS:
        raise ClusterError(
            f"service/{SERVICE} selects {selector!r}: its 'colour' must be one of {COLOURS}"
        )
    return str(colour)


def switch(kubectl: Kubectl, colour: str) -> None:
    """Point the Service at `colour`, then read it back: a switch is only reported once true."""
    patch = json.dumps({"spec": {"selector": {"colour": colour}}})
    kubectl.run("patch", "service", SERVICE, "--type", "merge", "--patch", patch)
    now = live_colour(kubectl)
    if now != colour:
        raise ClusterError(f"service/{SERVICE} still selects colour {now} after the patch")


def ready_replicas(kubectl: Kubectl, colour: str) -> int:
    deployment = kubectl.get("deployment", f"{SERVICE}-{colour}")
    return int(deployment.get("status", {}).get("readyReplicas") or 0)


def overlay(
    workdir: Path,
    namespace: str | None,
    image: str,
    colour: str,
    model_version: str,
    model_uri: str | None,
) -> dict[str, Any]:
    """A kustomization in `workdir` over deploy/k8s-bluegreen pinning the image and the idle
    colour's model.

    JSON is YAML, so no YAML writer is needed. kustomize refuses absolute resource paths,
    hence the relative one. Only the idle colour's objects are applied (`-l colour=<idle>`);
    the live colour and the Service are not touched.
    """
    name, digest = image.split("@", 1)
    container: dict[str, Any] = {"name": CONTAINER}
    if model_uri:
        container["env"] = [{"name": "MODEL_URI", "value": model_uri}]
    annotations = {VERSION_ANNOTATION: model_version}
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{SERVICE}-{colour}", "annotations": annotations},
        "spec": {
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {"containers": [container]},
            }
        },
    }
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS, workdir)],
        "images": [{"name": BASE_IMAGE, "newName": name, "digest": digest}],
        "patches": [{"patch": json.dumps(patch)}],
    }
    if namespace:
        kustomization["namespace"] = namespace
    return kustomization


@contextlib.contextmanager
def port_forward(kubectl: Kubectl, colour: str, wait_s: float = 30.0) -> Iterator[str]:
    """`kubectl port-forward` to the colour's own Service on a free local port; yields its URL."""
    argv = [*kubectl.prefix, "port-forward", "--address", "127.0.0.1"]
    process = subprocess.Popen(
        [*argv, f"service/{SERVICE}-{colour}", ":80"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{forwarded_port(process, wait_s)}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def forwarded_port(process: subprocess.Popen[str], wait_s: float) -> int:
    """The local port kubectl reports ("Forwarding from 127.0.0.1:PORT -> 8000")."""
    assert process.stdout is not None
    deadline = time.monotonic() + wait_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=left):
                break
            line = process.stdout.readline()
            if not line:  # kubectl exited
                error = process.stderr.read() if process.stderr else ""
                raise Refused(f"kubectl port-forward ended: {error.strip() or 'no output'}")
            if match := FORWARDING.search(line):
                return int(match.group(1))
    raise Refused(f"kubectl port-forward reported no local port within {wait_s:.0f}s")


def deploy(kubectl: Kubectl, args: argparse.Namespace) -> str:
    """Idle colour: apply, roll out, smoke-test, switch. Returns the new live colour."""
    live = live_colour(kubectl)
    idle = other(live)
    print(f"live colour: {live}; deploying {args.image} (model {args.model_version}) to {idle}")
    with tempfile.TemporaryDirectory(prefix="bluegreen-") as tmp:
        workdir = Path(tmp)
        kustomization = overlay(
            workdir, args.namespace, args.image, idle, args.model_version, args.model_uri
        )
        (workdir / "kustomization.yaml").write_text(json.dumps(kustomization, indent=2))
        kubectl.run("apply", "--kustomize", str(workdir), "--selector", f"colour={idle}")
    if not kubectl.rollout_ready(idle, args.timeout):
        raise Refused(f"{idle} did not become ready within {args.timeout}s")
    try:
        if args.smoke_url:
            url = args.smoke_url.replace("{colour}", idle)
            smoke_test(url, args.wait, True, args.model_version)
        else:
            with port_forward(kubectl, idle) as url:
                smoke_test(url, args.wait, True, args.model_version)
    except (SmokeTestFailure, urllib.error.URLError, OSError, ValueError) as exc:
        raise Refused(f"the smoke test of {idle} failed: {exc}") from exc
    print(f"smoke test of {idle} passed (model {args.model_version})")
    switch(kubectl, idle)
    print(
        f"switched service/{SERVICE} from {live} to {idle}; {live} keeps running for an "
        f"instant rollback: {Path(sys.argv[0]).name} rollback"
    )
    return idle


def rollback(kubectl: Kubectl) -> str:
    """Switch back to the other colour if it has a ready pod. Returns the new live colour."""
    live = live_colour(kubectl)
    previous = other(live)
    ready = ready_replicas(kubectl, previous)
    if ready < 1:
        raise Refused(f"{previous} has no ready pod; switching to it would stop the service")
    switch(kubectl, previous)
    print(f"rolled back service/{SERVICE} from {live} to {previous} ({ready} ready pods)")
    return previous


def status(kubectl: Kubectl) -> None:
    live = live_colour(kubectl)
    for colour in COLOURS:
        deployment = kubectl.get("deployment", f"{SERVICE}-{colour}")
        containers = deployment.get("spec", {}).get("template", {}).get("spec", {})
        images = [c.get("image") for c in containers.get("containers", [])]
        version = deployment.get("metadata", {}).get("annotations", {}).get(VERSION_ANNOTATION)
        ready = deployment.get("status", {}).get("readyReplicas") or 0
        role = "live" if colour == live else "idle"
        print(f"{colour:<5} {role:<4} ready={ready} model={version or '?'} image={images}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespace", help="Kubernetes namespace (default: kubeconfig's)")
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("deploy", help="deploy to the idle colour, smoke-test, switch")
    go.add_argument("--image", required=True, help="immutable image reference (...@sha256:...)")
    go.add_argument("--model-version", required=True, help="the model version the image/URI serves")
    go.add_argument(
        "--model-uri", help="MODEL_URI for the idle colour (models:/name/<version>), if not baked"
    )
    go.add_argument("--timeout", type=int, default=300, help="seconds for the rollout")
    go.add_argument("--wait", type=float, default=60.0, help="seconds for /ready to answer 200")
    go.add_argument(
        "--smoke-url",
        help="smoke-test this URL instead of a port-forward; {colour} is replaced by the idle "
        "colour (e.g. http://churn-api-{colour}.churn-production.svc from inside the cluster)",
    )
    commands.add_parser("rollback", help="switch the Service back to the other colour")
    commands.add_parser("status", help="the live colour and what each colour runs")
    args = parser.parse_args(argv)
    if args.command == "deploy":
        if "@sha256:" not in args.image:
            parser.error(f"--image must be a digest reference (...@sha256:...), got {args.image!r}")
        if args.model_uri is not None and not args.model_uri.startswith("models:/"):
            parser.error(f"--model-uri must be a models:/ URI, got {args.model_uri!r}")
        if args.smoke_url is not None and not args.smoke_url.startswith(("http://", "https://")):
            parser.error(f"--smoke-url must start with http:// or https://, got {args.smoke_url!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kubectl = Kubectl(args.namespace)
    try:
        if args.command == "deploy":
            deploy(kubectl, args)
        elif args.command == "rollback":
            rollback(kubectl)
        else:
            status(kubectl)
    except Refused as exc:
        print(f"REFUSED, service/{SERVICE} not switched: {exc}", file=sys.stderr)
        return 1
    except ClusterError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
