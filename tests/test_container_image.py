"""The container images, built for real with podman and run the way a runtime would run them.

No container runtime works on the build machine (crun refuses its cgroups), so each image is
run by scripts/run_image_chroot.py: the image's own ENTRYPOINT + CMD, chroot-ed into a fresh
container filesystem, as the image's USER, with its ENV and WORKDIR. What is checked is what a
deployment relies on: the API answers /health, /ready and /predict from the baked model
bundle, its processes are not root, the HEALTHCHECK command works, nothing from training
(data, MLflow stores, tests) leaked in, and the MLflow image serves /health.

Builds are cached (the debootstrap base in podman's storage, pip layers by requirement
files), so only the first run pays several minutes. Needs root, podman, debootstrap and
util-linux: skipped locally without them, failed under CI=true.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests._tools import free_port, missing, require_binary
from tests.api_support import CUSTOMER

pytestmark = [pytest.mark.container, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
IMAGE_PREFIX = "localhost/churn"
IMAGE_TAG = "test"
SERVICE_UID = 10001
START_TIMEOUT_S = 180.0  # a hang guard, not a speed assertion
# Serving stack only: a training dependency in the API image means the wrong requirements
# file went in (it roughly doubles the image).
TRAINING_ONLY_PACKAGES = ("skl2onnx", "matplotlib", "pyarrow", "onnx/")
API_IMAGE_MAX_MB = 900


@dataclass(frozen=True)
class BuiltImage:
    """An image in podman's storage and what building it cost."""

    ref: str
    size_bytes: int
    build_seconds: float

    def config(self) -> dict:
        out = _podman("image", "inspect", "--format", "{{json .Config}}", self.ref)
        return dict(json.loads(out))


def _podman(*args: str) -> str:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _require_build_tools() -> None:
    for binary in ("podman", "debootstrap", "unshare", "mount", "chroot"):
        require_binary(binary)
    if os.geteuid() != 0:
        missing("building and running images with debootstrap/chroot needs root")


def _build(target: str) -> BuiltImage:
    """Run scripts/build_image.sh for one image; fail with the build's tail when it breaks."""
    start = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "scripts/build_image.sh"), target],
        cwd=ROOT,
        env={**os.environ, "IMAGE_PREFIX": IMAGE_PREFIX, "IMAGE_TAG": IMAGE_TAG},
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - start
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise AssertionError(f"building the {target} image failed:\n{tail}")
    ref = f"{IMAGE_PREFIX}-{target}:{IMAGE_TAG}"
    size = int(_podman("image", "inspect", "--format", "{{.Size}}", ref))
    print(f"\n{ref}: {size / 1e6:.0f} MB, build {seconds:.0f}s")
    return BuiltImage(ref=ref, size_bytes=size, build_seconds=seconds)


@pytest.fixture(scope="session")
def model_bundle() -> Path:
    """artifacts/ holds a promoted bundle (the API image bakes it in); train and promote one
    if missing (training alone writes only candidates/)."""
    _require_build_tools()
    from churn.bundle import BundleError, verify_bundle

    artifacts = ROOT / "artifacts"
    try:
        verify_bundle(artifacts)  # signed with the tests' key (conftest), else retrained
        usable = True
    except BundleError:
        usable = False
    if not usable:
        if not (ROOT / "data/churn_train.csv").exists():
            subprocess.run([sys.executable, "-m", "churn.datagen"], cwd=ROOT, check=True)
        subprocess.run([sys.executable, "train.py"], cwd=ROOT, check=True)
        subprocess.run([sys.executable, "promote_model.py"], cwd=ROOT, check=True)
    return artifacts


@pytest.fixture(scope="session")
def api_image(model_bundle: Path) -> BuiltImage:
    return _build("api")


@pytest.fixture(scope="session")
def mlflow_image() -> BuiltImage:
    _require_build_tools()
    return _build("mlflow")


@pytest.fixture(scope="session")
def api_rootfs(api_image: BuiltImage) -> Iterator[Path]:
    """The API image's filesystem, mounted read-only for inspection."""
    path = Path(_podman("image", "mount", api_image.ref))
    try:
        yield path
    finally:
        _podman("image", "unmount", api_image.ref)


@dataclass
class RunningImage:
    """An image's command started by run_image_chroot.py, reachable on a loopback port."""

    process: subprocess.Popen[bytes]
    pid: int
    url: str
    log: Path

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def _start(
    image: str, tmp_path: Path, port: int, env: dict[str, str], command: list[str] | None = None
) -> RunningImage:
    """Start the image's command; return once its process id is known."""
    pidfile = tmp_path / f"{port}.pid"
    log = tmp_path / f"{port}.log"
    argv = [
        sys.executable,
        str(ROOT / "scripts/run_image_chroot.py"),
        image,
        "--pidfile",
        str(pidfile),
    ]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    if command is not None:
        argv += ["--", *command]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{image} did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.2)
    return RunningImage(process, int(pidfile.read_text()), f"http://127.0.0.1:{port}", log)


def _stop(running: RunningImage) -> None:
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGTERM)
        try:
            running.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait()


def _wait_for(running: RunningImage, path: str) -> httpx.Response:
    """Poll a GET endpoint until it answers 200 (or the server dies / the guard expires)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise AssertionError(
                f"server exited ({running.process.returncode}):\n{running.log_tail()}"
            )
        try:
            response = httpx.get(running.url + path, timeout=5)
            if response.status_code == 200:
                return response
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"GET {path} never answered 200: {last}\n{running.log_tail()}")


def _uids(pid: int) -> dict[int, int]:
    """Real uid of a process and of its children (the uvicorn workers), from /proc."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    uids = {}
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                uids[p] = int(line.split()[1])
    return uids


@pytest.fixture(scope="module")
def api(api_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningImage]:
    port = free_port()
    env = {"PORT": str(port), "BUNDLE_SIGNING_KEY": os.environ["BUNDLE_SIGNING_KEY"]}
    running = _start(api_image.ref, tmp_path_factory.mktemp("api"), port, env)
    try:
        _wait_for(running, "/ready")
        yield running
    finally:
        _stop(running)


def test_api_image_config_runs_non_root_with_healthcheck(api_image: BuiltImage) -> None:
    config = api_image.config()
    user = config.get("User", "")
    assert user.split(":")[0] not in {"", "0", "root"}, f"image runs as root (USER={user!r})"
    assert "8000/tcp" in config.get("ExposedPorts", {})
    assert config.get("WorkingDir") == "/app"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    assert env["MODEL_PATH"] == "/app/artifacts/model.pkl"
    assert env["WEB_CONCURRENCY"] == "2"
    assert env["PATH"].startswith("/opt/venv/bin:")
    health = json.loads(
        _podman("image", "inspect", "--format", "{{json .HealthCheck}}", api_image.ref)
    )
    assert health, "HEALTHCHECK missing: podman drops it unless built with --format docker"
    assert "churn-healthcheck" in " ".join(health["Test"])


def test_api_image_holds_the_bundle_and_nothing_from_training(
    api_rootfs: Path, model_bundle: Path
) -> None:
    baked = api_rootfs / "app/artifacts/model.pkl"
    assert baked.is_file(), "the model bundle is not baked into /app/artifacts"
    digest = hashlib.sha256(baked.read_bytes()).hexdigest()
    assert digest == hashlib.sha256((model_bundle / "model.pkl").read_bytes()).hexdigest()
    app_files = [p.relative_to(api_rootfs / "app") for p in (api_rootfs / "app").rglob("*")]
    leaked = [
        str(p)
        for p in app_files
        if p.suffix in {".csv", ".parquet", ".db", ".sqlite"}
        or p.parts[0] in {"data", "tests", "mlruns", "mlartifacts", ".git", ".venv", "notebooks"}
        or p.name in {".env", "Dockerfile"}
    ]
    assert leaked == [], f"files that must stay out of the image: {leaked}"
    site = next((api_rootfs / "opt/venv/lib").glob("python3*/site-packages"))
    training = [pkg for pkg in TRAINING_ONLY_PACKAGES if (site / pkg.rstrip("/")).exists()]
    assert training == [], f"training-only packages in the serving image: {training}"
    assert not (api_rootfs / "usr/bin/gcc").exists(), "build tools leaked into the final stage"


def test_api_image_size_is_recorded_and_bounded(
    api_image: BuiltImage, mlflow_image: BuiltImage
) -> None:
    record = {
        image.ref: {
            "size_mb": round(image.size_bytes / 1e6, 1),
            "build_seconds_this_run": round(image.build_seconds, 1),
        }
        for image in (api_image, mlflow_image)
    }
    out = ROOT / "bench/results/container_images.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    assert api_image.size_bytes / 1e6 < API_IMAGE_MAX_MB, (
        f"API image is {api_image.size_bytes / 1e6:.0f} MB (limit {API_IMAGE_MAX_MB}); "
        "did the training stack or a build cache end up in the final stage?"
    )


def test_api_serves_health_ready_and_predictions(api: RunningImage) -> None:
    health = httpx.get(api.url + "/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["status"] == "healthy"
    assert httpx.get(api.url + "/ready", timeout=5).status_code == 200
    response = httpx.post(api.url + "/predict", json=CUSTOMER, timeout=10)
    assert response.status_code == 200, response.text
    assert 0.0 <= response.json()["churn_probability"] <= 1.0
    metrics = httpx.get(api.url + "/metrics", timeout=5)
    assert metrics.status_code == 200
    assert "# TYPE" in metrics.text


def test_api_processes_are_not_root(api: RunningImage) -> None:
    uids = _uids(api.pid)
    assert len(uids) >= 2, f"expected the uvicorn supervisor plus workers, saw {uids}"
    assert all(uid == SERVICE_UID for uid in uids.values()), f"process uids: {uids}"


def test_api_uses_prometheus_multiprocess_dir(api: RunningImage) -> None:
    httpx.post(api.url + "/predict", json=CUSTOMER, timeout=10)
    metric_files = list(Path(f"/proc/{api.pid}/root/tmp/prometheus").glob("*.db"))
    assert metric_files, "no multiprocess metric files: workers would report separate counters"


def test_image_healthcheck_command_passes_against_the_server(
    api_image: BuiltImage, api: RunningImage, tmp_path: Path
) -> None:
    health = json.loads(
        _podman("image", "inspect", "--format", "{{json .HealthCheck}}", api_image.ref)
    )
    command = health["Test"][1:]  # ["CMD", ...]
    port = api.url.rsplit(":", 1)[1]
    probe = _start(api_image.ref, tmp_path, free_port(), {"PORT": port}, command)
    assert probe.process.wait(timeout=60) == 0, probe.log_tail()
    _stop(probe)


def test_mlflow_image_serves_health(mlflow_image: BuiltImage, tmp_path: Path) -> None:
    config = mlflow_image.config()
    assert config.get("User", "").split(":")[0] not in {"", "0", "root"}
    command = list(config["Cmd"])
    port = free_port()
    command[command.index("--port") + 1] = str(port)  # the image's command, another port
    running = _start(mlflow_image.ref, tmp_path, port, {}, command)
    try:
        response = _wait_for(running, "/health")
        assert response.text.strip() == "OK"
        assert all(uid == SERVICE_UID for uid in _uids(running.pid).values())
    finally:
        _stop(running)
