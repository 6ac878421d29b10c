"""A stand-in `kubectl` for tests of scripts/deploy_bluegreen.py (an edge mock: the script is
what is under test, not Kubernetes).

It keeps a small cluster in a JSON file (FAKE_KUBECTL_STATE): the Service's selector, each
Deployment's image, annotations and ready replicas, and the local port each colour's Service
forwards to. Every call is recorded there. `apply --kustomize DIR` renders DIR with the real
kubectl (FAKE_KUBECTL_REAL: kustomize is part of kubectl, no cluster needed) and applies only
the objects matching `--selector`, so the test sees exactly what would reach the cluster.
`port-forward` prints kubectl's "Forwarding from" line for the configured port and waits to
be stopped, like the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

STATE = Path(os.environ["FAKE_KUBECTL_STATE"])


def load() -> dict[str, Any]:
    state: dict[str, Any] = json.loads(STATE.read_text())
    return state


def save(state: dict[str, Any]) -> None:
    STATE.write_text(json.dumps(state, indent=2))


def option(args: list[str], *names: str) -> str | None:
    for name in names:
        if name in args:
            return args[args.index(name) + 1]
        for arg in args:
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    return None


def fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def deployment_json(name: str, deployment: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": deployment.get("annotations", {})},
        "spec": {
            "template": {"spec": {"containers": [{"name": "api", "image": deployment["image"]}]}}
        },
        "status": {"readyReplicas": deployment.get("ready", 0)},
    }


def get(state: dict[str, Any], kind: str, name: str) -> int:
    if kind == "namespace":
        print(json.dumps({"kind": "Namespace", "metadata": {"name": name}}))
        return 0
    if kind == "service":
        selector = state["services"].get(name)
        if selector is None:
            return fail(f'Error from server (NotFound): services "{name}" not found')
        print(json.dumps({"kind": "Service", "spec": {"selector": selector}}))
        return 0
    deployment = state["deployments"].get(name)
    if deployment is None:
        return fail(f'Error from server (NotFound): deployments.apps "{name}" not found')
    print(json.dumps(deployment_json(name, deployment)))
    return 0


def apply(state: dict[str, Any], args: list[str]) -> int:
    directory = option(args, "--kustomize", "-k")
    selector = option(args, "--selector", "-l")
    if directory is None:
        return fail("the fake kubectl applies only `--kustomize DIR [--selector k=v]`")
    rendered = subprocess.run(
        [os.environ["FAKE_KUBECTL_REAL"], "kustomize", directory],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if rendered.returncode != 0:
        return fail(rendered.stderr)
    key, value = selector.split("=", 1) if selector else ("", "")
    for doc in yaml.safe_load_all(rendered.stdout):
        if selector and doc["metadata"].get("labels", {}).get(key) != value:
            continue
        state["applied"].append(doc)
        if doc["kind"] == "Deployment":
            name = doc["metadata"]["name"]
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            deployment = state["deployments"].setdefault(name, {"ready": 0})
            deployment["image"] = container["image"]
            deployment["annotations"] = doc["metadata"].get("annotations", {})
        print(f"{doc['kind'].lower()}/{doc['metadata']['name']} configured")
    return 0


def patch(state: dict[str, Any], args: list[str]) -> int:
    name = args[2]
    body = json.loads(option(args, "--patch", "-p") or "{}")
    if name not in state["services"]:
        return fail(f'Error from server (NotFound): services "{name}" not found')
    state["services"][name].update(body["spec"]["selector"])
    print(f"service/{name} patched")
    return 0


def port_forward(state: dict[str, Any], args: list[str]) -> int:
    target = next(a for a in args if a.startswith("service/"))
    port = state["ports"].get(target.split("/", 1)[1])
    if port is None:
        return fail(f'error: services "{target}" not found')
    print(f"Forwarding from 127.0.0.1:{port} -> 8000", flush=True)
    while True:  # until the script stops us, as with the real port-forward
        time.sleep(1)


def main(argv: list[str]) -> int:
    state = load()
    namespace = option(argv, "--namespace", "-n")
    args = [a for a in argv if a not in {"--namespace", "-n", namespace}]
    state["calls"].append({"namespace": namespace, "args": args})
    save(state)
    command = args[0]
    if command == "get":
        return get(state, args[1], args[2])
    if command == "rollout":
        if args[2].split("/", 1)[1] in state["never_ready"]:
            return fail(f"error: {args[2]} exceeded its progress deadline")
        print(f"{args[2]} successfully rolled out")
        return 0
    if command == "port-forward":
        return port_forward(state, args)
    handler = {"apply": apply, "patch": patch}.get(command)
    if handler is None:
        return fail(f"the fake kubectl does not know `{command}`")
    code = handler(state, args)
    save(state)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
