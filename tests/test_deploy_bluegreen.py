"""scripts/deploy_bluegreen.py against a stand-in kubectl and a real API.

The kubectl on PATH is tests/fake_kubectl.py (it records calls, serves canned JSON, and renders
the overlay the script writes with the real kubectl's kustomize). The idle colour's Service
port-forwards to a real API process serving the session's trained bundle, so the smoke test
is the real one: /ready, /health, one /predict of a known customer and its model_version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._tools import require_binary
from tests.conftest import TrainedModel
from tests.processes import api_server

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "deploy_bluegreen.py"
FAKE = Path(__file__).with_name("fake_kubectl.py")
IMAGE = "ghcr.io/acme/churn-api@sha256:" + "ab" * 32
NAMESPACE = "churn-production"


@pytest.fixture(scope="module")
def api_url(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real API worker serving the trained bundle: what the idle colour runs."""
    tmp = tmp_path_factory.mktemp("bluegreen-api")
    (tmp / "prometheus").mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
        "MODEL_PATH": str(trained_model.model_path),
        "MODEL_REQUIRED": "true",
        "DATABASE_URL": f"sqlite:///{tmp / 'log.db'}",
        "LOG_LEVEL": "WARNING",
        "ENVIRONMENT": "test",
    }
    with api_server(env, tmp / "uvicorn.log") as url:
        yield url


@dataclass
class Cluster:
    """The fake cluster's state file and a way to run the script against it."""

    state_path: Path
    bin_dir: Path
    real: str  # the real kubectl, for kustomize

    @property
    def state(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.state_path.read_text())
        return value

    def update(self, **values: Any) -> None:
        self.state_path.write_text(json.dumps({**self.state, **values}))

    def commands(self) -> list[str]:
        return [" ".join(call["args"][:2]) for call in self.state["calls"]]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_KUBECTL_STATE": str(self.state_path),
            "FAKE_KUBECTL_REAL": self.real,
        }
        return subprocess.run(
            [sys.executable, str(SCRIPT), "--namespace", NAMESPACE, *args],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip


@pytest.fixture
def cluster(tmp_path: Path, api_url: str) -> Cluster:
    """Blue live (old image, version 1), green idle; green's Service reaches the real API."""
    real = require_binary("kubectl")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    kubectl.chmod(0o755)
    port = int(api_url.rsplit(":", 1)[1])
    old = {"image": "ghcr.io/acme/churn-api@sha256:" + "00" * 32, "ready": 2}
    state = {
        "services": {"churn-api": {"app": "churn-api", "colour": "blue"}},
        "deployments": {
            "churn-api-blue": {**old, "annotations": {"churn-mlops/model-version": "1"}},
            "churn-api-green": {**old, "annotations": {"churn-mlops/model-version": "1"}},
        },
        "ports": {"churn-api-green": port, "churn-api-blue": port},
        "never_ready": [],
        "applied": [],
        "calls": [],
    }
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(state))
    return Cluster(path, bin_dir, real)


@pytest.fixture
def version(trained_model: TrainedModel) -> str:
    return trained_model.result.model_version


def deploy(cluster: Cluster, version: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cluster.run(
        "deploy", "--image", IMAGE, "--model-version", version, "--wait", "10", *extra
    )


@pytest.mark.integration
def test_deploy_goes_to_the_idle_colour_smoke_tests_it_then_switches(
    cluster: Cluster, version: str
) -> None:
    result = deploy(cluster, version)
    assert result.returncode == 0, result.stderr
    state = cluster.state
    assert state["services"]["churn-api"] == {"app": "churn-api", "colour": "green"}
    assert cluster.commands() == [
        "get service",  # the live colour
        "apply --kustomize",  # the idle colour's objects
        "rollout status",
        "port-forward --address",  # the smoke test through churn-api-green
        "patch service",
        "get service",  # the switch read back
    ]
    assert all(call["namespace"] == NAMESPACE for call in state["calls"])
    assert "deployment/churn-api-green" in state["calls"][2]["args"]
    assert "service/churn-api-green" in state["calls"][3]["args"]
    # Only green's objects were applied: the live colour and the shared Service are untouched.
    applied = {(doc["kind"], doc["metadata"]["name"]) for doc in state["applied"]}
    assert ("Deployment", "churn-api-green") in applied
    assert ("Service", "churn-api-green") in applied
    assert not {name for _, name in applied} & {"churn-api", "churn-api-blue"}
    assert {doc["metadata"]["namespace"] for doc in state["applied"]} == {NAMESPACE}
    assert {doc["metadata"]["labels"]["colour"] for doc in state["applied"]} == {"green"}
    green = state["deployments"]["churn-api-green"]
    assert green["image"] == IMAGE
    assert green["annotations"]["churn-mlops/model-version"] == version
    assert state["deployments"]["churn-api-blue"]["image"].endswith("00" * 32)
    assert "blue keeps running" in result.stdout
    assert "rollback" in result.stdout


@pytest.mark.integration
def test_a_failed_smoke_test_refuses_to_switch(cluster: Cluster, version: str) -> None:
    """The idle colour answers with another model version than the one being deployed."""
    result = deploy(cluster, "999")
    assert result.returncode == 1
    assert "REFUSED, service/churn-api not switched" in result.stderr
    assert f"answered by model_version {version!r}, expected '999'" in result.stderr
    assert cluster.state["services"]["churn-api"]["colour"] == "blue"
    assert "patch service" not in cluster.commands()


@pytest.mark.integration
def test_an_unreachable_idle_colour_refuses_to_switch(cluster: Cluster, version: str) -> None:
    """Green's Service forwards to a port where nothing answers: /ready never says 200."""
    state = cluster.state
    state["ports"]["churn-api-green"] = 9  # discard: nothing listens
    cluster.update(ports=state["ports"])
    result = cluster.run("deploy", "--image", IMAGE, "--model-version", version, "--wait", "1")
    assert result.returncode == 1
    assert "the smoke test of green failed: GET /ready did not return 200" in result.stderr
    assert cluster.state["services"]["churn-api"]["colour"] == "blue"


@pytest.mark.integration
def test_a_rollout_that_never_gets_ready_refuses_before_the_smoke_test(
    cluster: Cluster, version: str
) -> None:
    cluster.update(never_ready=["churn-api-green"])
    result = deploy(cluster, version)
    assert result.returncode == 1
    assert "green did not become ready within 300s" in result.stderr
    assert "exceeded its progress deadline" in result.stderr
    assert cluster.commands()[-1] == "rollout status"
    assert cluster.state["services"]["churn-api"]["colour"] == "blue"


@pytest.mark.integration
def test_deploy_then_rollback_then_deploy_again_alternates_colours(
    cluster: Cluster, version: str
) -> None:
    assert deploy(cluster, version).returncode == 0
    rolled = cluster.run("rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert "rolled back service/churn-api from green to blue" in rolled.stdout
    assert cluster.state["services"]["churn-api"]["colour"] == "blue"
    # Rollback only reads and patches: no apply, no rollout, the colours keep their images.
    tail = cluster.commands()[-4:]
    assert tail == ["get service", "get deployment", "patch service", "get service"]
    assert cluster.state["deployments"]["churn-api-green"]["image"] == IMAGE
    # The next deploy goes to green again (the idle colour), over the rolled-back release.
    again = deploy(cluster, version)
    assert again.returncode == 0, again.stderr
    assert "deploying" in again.stdout and "to green" in again.stdout
    assert cluster.state["services"]["churn-api"]["colour"] == "green"


@pytest.mark.integration
def test_rollback_refuses_a_colour_without_ready_pods(cluster: Cluster) -> None:
    state = cluster.state
    state["deployments"]["churn-api-green"]["ready"] = 0
    cluster.update(deployments=state["deployments"])
    result = cluster.run("rollback")
    assert result.returncode == 1
    assert "green has no ready pod" in result.stderr
    assert cluster.state["services"]["churn-api"]["colour"] == "blue"


@pytest.mark.integration
def test_model_uri_and_an_in_cluster_smoke_url(
    cluster: Cluster, version: str, api_url: str
) -> None:
    """--model-uri reaches the idle Deployment's env; --smoke-url replaces the port-forward."""
    uri = f"models:/churn-classifier/{version}"
    result = deploy(cluster, version, "--model-uri", uri, "--smoke-url", api_url)
    assert result.returncode == 0, result.stderr
    assert "port-forward --address" not in cluster.commands()
    (deployment,) = [d for d in cluster.state["applied"] if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "MODEL_URI", "value": uri} in container["env"]
    # The model version is on the pod template too: a new model alone still rolls the pods.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["churn-mlops/model-version"] == version


@pytest.mark.integration
@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (None, 'services "churn-api" not found'),
        ({"app": "churn-api"}, "its 'colour' must be one of ('blue', 'green')"),
        ({"app": "churn-api", "colour": "red"}, "selects {'app': 'churn-api', 'colour': 'red'}"),
    ],
)
def test_a_service_not_in_blue_green_shape_is_an_error(
    cluster: Cluster, version: str, selector: dict[str, str] | None, message: str
) -> None:
    cluster.update(services={} if selector is None else {"churn-api": selector})
    result = deploy(cluster, version)
    assert result.returncode == 2
    assert message in result.stderr
    assert cluster.commands() == ["get service"]


@pytest.mark.integration
def test_status_names_the_live_colour_and_each_colours_model(
    cluster: Cluster, version: str
) -> None:
    assert deploy(cluster, version).returncode == 0
    result = cluster.run("status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("blue  idle ready=2 model=1 ")
    assert lines[1].startswith(f"green live ready=2 model={version} image=['{IMAGE}']")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["deploy", "--image", "churn-api:latest", "--model-version", "3"], "--image must be"),
        (["deploy", "--image", IMAGE], "--model-version"),
        (
            ["deploy", "--image", IMAGE, "--model-version", "3", "--model-uri", "runs:/x"],
            "models:/",
        ),
        (["deploy", "--image", IMAGE, "--model-version", "3", "--smoke-url", "ftp://x"], "http://"),
        (["switch"], "invalid choice: 'switch'"),
    ],
)
def test_bad_arguments_are_named(args: list[str], message: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PATH": str(tmp_path)},  # no kubectl: nothing may run it
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr


def test_the_script_pins_the_image_name_the_base_manifests_use() -> None:
    """The overlay's `images` entry must name the base's image, or it pins nothing."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import deploy_bluegreen
    finally:
        sys.path.remove(str(SCRIPT.parent))
    base = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())
    assert [image["name"] for image in base["images"]] == [deploy_bluegreen.BASE_IMAGE]
    assert deploy_bluegreen.MANIFESTS == ROOT / "deploy/k8s-bluegreen"


@pytest.mark.integration
def test_deploy_sh_applies_the_base_with_the_image_pinned(cluster: Cluster) -> None:
    """scripts/deploy.sh (the single-colour deploy) renders its overlay with the real kustomize:
    every base object, in the environment's namespace, the image pinned by digest."""
    result = subprocess.run(
        [str(ROOT / "scripts/deploy.sh"), "staging", IMAGE],
        capture_output=True, text=True, timeout=120, check=False,
        env={
            **os.environ,
            "PATH": f"{cluster.bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_KUBECTL_STATE": str(cluster.state_path),
            "FAKE_KUBECTL_REAL": cluster.real,
            "KUBECONFIG_DATA": "apiVersion: v1\nkind: Config\n",
        },
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    state = cluster.state
    applied = {(doc["kind"], doc["metadata"]["name"]) for doc in state["applied"]}
    assert ("Deployment", "churn-api") in applied and ("Service", "churn-api") in applied
    assert {doc["metadata"]["namespace"] for doc in state["applied"]} == {"churn-staging"}
    assert state["deployments"]["churn-api"]["image"] == IMAGE
    assert cluster.commands()[-1] == "rollout status"
