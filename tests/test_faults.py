"""Fault injection against real processes: what a bad day in operations does to the service.

Each scenario runs a real uvicorn (`--workers 2` as the image does where the workers matter,
one worker where only the store does) under load from loopback clients, injects one fault,
stops the server with SIGTERM and then counts, from the outside:

- requests sent and failed (a client never retries: a reset connection is a failure);
- served: predictions answered 200;
- written: rows in the prediction log store afterwards;
- dropped: ``prediction_log_dropped_total`` summed over the workers' multiprocess files
  (they outlive the processes, a killed one's included).

The promise under test: served == written + dropped, exactly, whatever the store does; and no
request fails where a surviving worker could answer it. The figures are printed as a table at
the end of the module (shown with ``-s`` or in the terminal summary) and quoted in the
README's reliability section.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from churn.prediction_log import read_predictions
from tests._tools import free_port, missing
from tests.api_support import CUSTOMER, wait_until
from tests.conftest import TrainedModel
from tests.processes import ApiProcess, api_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WRITE_TIMEOUT = 1.0  # PREDICTION_LOG_WRITE_TIMEOUT: short, so shutdown with a bad store is quick


@dataclass
class Figures:
    """One scenario's outcome, as the README's table shows it."""

    scenario: str
    sent: int
    failed: int
    served: int
    written: int
    dropped: dict[str, int]
    note: str = ""

    @property
    def unaccounted(self) -> int:
        return self.served - self.written - sum(self.dropped.values())


RESULTS: list[Figures] = []


@pytest.fixture(scope="module", autouse=True)
def _print_table(request: pytest.FixtureRequest) -> Iterator[None]:
    """The figures of every scenario run, as one table at the end of the module."""
    yield
    if not RESULTS:
        return
    lines = [
        "",
        "fault injection (served = written + dropped):",
        f"{'scenario':<34} {'sent':>5} {'failed':>6} {'served':>6} {'written':>7} "
        f"{'dropped':>7} {'unaccounted':>11}  note",
    ]
    for r in RESULTS:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(r.dropped.items()) if v) or "0"
        lines.append(
            f"{r.scenario:<34} {r.sent:>5} {r.failed:>6} {r.served:>6} {r.written:>7} "
            f"{sum(r.dropped.values()):>7} {r.unaccounted:>11}  {dropped}; {r.note}"
        )
    # Past pytest's output capture, so the table shows without -s too.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n".join(lines), flush=True)


# --------------------------------------------------------------------------- load and counting


@dataclass
class Load:
    """`total` POST /predict requests from `concurrency` threads, each on a new connection
    (so the kernel spreads them over the workers), never retried."""

    url: str
    total: int
    concurrency: int = 4
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for _ in range(self.concurrency):
            thread = threading.Thread(target=self._work, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _work(self) -> None:
        # No keep-alive: every request opens its own connection, as many clients do.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=self.url, timeout=30, limits=limits) as client:
            self._send(client)

    def _send(self, client: httpx.Client) -> None:
        while True:
            with self._lock:
                if self._next >= self.total:
                    return
                i = self._next
                self._next += 1
            try:
                response = client.post(
                    "/predict", json=CUSTOMER, headers={"X-Request-ID": f"fault-{i}"}
                )
                good = response.status_code == 200
                reason = f"{response.status_code}: {response.text[:100]}"
            except httpx.HTTPError as exc:
                good, reason = False, f"{type(exc).__name__}: {exc}"
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.failures.append(reason)

    def wait_answered(self, n: int) -> None:
        assert wait_until(lambda: self.ok + len(self.failures) >= n, timeout=60)

    def join(self) -> Load:
        for thread in self._threads:
            thread.join(120)
        assert self.ok + len(self.failures) == self.total
        return self


def counters(multiproc_dir: Path) -> dict[tuple[str, str], float]:
    """Every counter sample summed over the worker files: (sample name, label values) ->
    value; read after the server has exited, so nothing is still being added."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc_dir))
    values: dict[tuple[str, str], float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            key = (sample.name, ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())))
            values[key] = values.get(key, 0.0) + sample.value
    return values


def dropped_by_reason(values: dict[tuple[str, str], float]) -> dict[str, int]:
    return {
        labels.removeprefix("reason="): int(v)
        for (name, labels), v in values.items()
        if name == "prediction_log_dropped_total"
    }


def environment(trained_model: TrainedModel, tmp_path: Path, database_url: str) -> dict[str, str]:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    return {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "MODEL_PATH": str(trained_model.model_path),
        "MODEL_REQUIRED": "true",
        "DATABASE_URL": database_url,
        "PREDICTION_LOG_FLUSH_INTERVAL": "0.05",
        "PREDICTION_LOG_WRITE_TIMEOUT": str(WRITE_TIMEOUT),
        "LOG_LEVEL": "INFO",
        "ENVIRONMENT": "test",
    }


def terminate(api: ApiProcess, limit: float) -> float:
    """SIGTERM the server and wait for it to exit; the seconds it took."""
    started = time.monotonic()
    api.process.send_signal(signal.SIGTERM)
    try:
        api.process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        tail = api.log()[-3000:]
        raise AssertionError(f"the server did not stop within {limit}s:\n{tail}") from None
    return time.monotonic() - started


def settle(scenario: str, load: Load, written: int, env: dict[str, str], note: str = "") -> Figures:
    figures = Figures(
        scenario=scenario,
        sent=load.total,
        failed=len(load.failures),
        served=load.ok,
        written=written,
        dropped=dropped_by_reason(counters(Path(env["PROMETHEUS_MULTIPROC_DIR"]))),
        note=note,
    )
    RESULTS.append(figures)
    return figures


# --------------------------------------------------------------------------- scenarios


@contextlib.contextmanager
def sqlite_write_lock(path: Path) -> Iterator[None]:
    """Another connection holding the store's write lock (BEGIN EXCLUSIVE) meanwhile."""
    import sqlite3

    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        holder.rollback()
        holder.close()


def test_sigterm_with_a_locked_store(trained_model: TrainedModel, tmp_path: Path) -> None:
    """Shutdown with the store locked: every served prediction is written (before the lock)
    or counted dropped, the batch being written at SIGTERM included; the wait is bounded by
    the write timeout; each worker's last log lines reach the output."""
    db = tmp_path / "log.db"
    env = environment(trained_model, tmp_path, f"sqlite:///{db}")
    with api_process(env, tmp_path / "uvicorn.log", workers=2) as api:
        first = Load(api.url, 20).start().join()
        assert wait_until(lambda: len(read_predictions(f"sqlite:///{db}")) == first.ok)
        workers = api.worker_pids()
        assert len(workers) == 2
        with sqlite_write_lock(db):
            load = Load(api.url, 40).start().join()
            response = httpx.get(f"{api.url}/model", headers={"X-Request-ID": "the-last-one"})
            assert "server" not in response.headers  # --no-server-header, as the image
            took = terminate(api, limit=30)
        log = api.log()
    written = len(read_predictions(f"sqlite:///{db}"))
    total = Load(api.url, first.total + load.total, ok=first.ok + load.ok)
    total.failures = first.failures + load.failures
    figures = settle("SIGTERM, store locked", total, written, env, f"stopped in {took:.1f}s")
    assert figures.failed == 0, load.failures[:3]
    assert written == first.ok  # nothing got past the lock
    assert figures.dropped.get("shutdown", 0) == load.ok
    assert figures.unaccounted == 0
    # Both workers wait at most the write timeout for a last try, then the lock wait itself.
    assert took < 2 * WRITE_TIMEOUT + 1 + 5
    # The last lines of each worker: the writer's summary, uvicorn's farewell, the access
    # line of the last request.
    for pid in workers:
        assert f"Finished server process [{pid}]" in log, log[-3000:]
    assert log.count('"prediction log closed') == 2
    assert '"request_id":"the-last-one"' in log


def test_kill_a_worker_under_load(trained_model: TrainedModel, tmp_path: Path) -> None:
    """kill -9 one of two workers mid-load: only requests the killed worker held fail (the
    other worker answers the rest), and nothing it answered is lost: what it had queued for
    the log but not written is in its spool, which a live worker adopts and writes.

    A long flush interval keeps what the workers answer queued in memory for seconds (as a
    slow store would), so the killed worker surely takes unwritten predictions with it."""
    db = tmp_path / "log.db"
    env = environment(trained_model, tmp_path, f"sqlite:///{db}")
    env["PREDICTION_LOG_FLUSH_INTERVAL"] = "30"
    concurrency = 4
    with api_process(env, tmp_path / "uvicorn.log", workers=2) as api:
        victim = api.worker_pids()[0]
        load = Load(api.url, 150, concurrency=concurrency).start()
        load.wait_answered(50)
        os.kill(victim, signal.SIGKILL)
        load.join()
        terminate(api, limit=60)
        log = api.log()
    written = len(read_predictions(f"sqlite:///{db}"))
    recovered = recovered_from(log, victim)
    figures = settle(
        "kill -9 one of 2 workers",
        load,
        written,
        env,
        f"{recovered} adopted from the killed worker's spool",
    )
    # Only connections the killed worker had accepted can fail: at most one per client.
    assert figures.failed <= concurrency, load.failures
    assert all("Error" in f for f in load.failures), load.failures  # resets, never a 5xx
    assert figures.unaccounted == 0, log[-3000:]
    assert recovered > 0, log[-3000:]  # the spool, not luck, accounted for them
    assert figures.dropped == {k: 0 for k in figures.dropped}  # written, not just counted
    # Every spool was adopted or removed at shutdown: nothing left behind to adopt twice.
    spool_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"]) / "prediction-spool"
    assert sorted(p.name for p in spool_dir.iterdir()) == []


def recovered_from(log: str, pid: int) -> int:
    """Predictions adopted from the spool of dead worker `pid`, per the adopters' log lines."""
    return sum(
        int(match)
        for match in re.findall(rf"adopted the spool of dead worker {pid}: (\d+) prediction", log)
    )


@dataclass
class PostgresCluster:
    """A throwaway PostgreSQL cluster in a temporary directory, owned by this test."""

    bin_dir: Path
    data: Path
    port: int
    user: str | None  # run as this user (initdb refuses root)

    def _run(self, *argv: str) -> None:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.data.parent / "server.log")  # not our pipe: pg_ctl would never return
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql://{self.user or 'postgres'}@127.0.0.1:{self.port}/postgres"


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    initdb = shutil.which("initdb") or next(
        iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)), None
    )
    if initdb is None:
        missing("PostgreSQL's initdb is not installed")
    bin_dir = Path(str(initdb)).resolve().parent  # pg_ctl lives beside the real initdb
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="churn-faults-pg-"))
    data = root / "data"
    if user is not None:
        shutil.chown(root, user)
    cluster = PostgresCluster(bin_dir, data, free_port(), user)
    try:
        cluster._run("initdb", "-D", str(data), "-A", "trust", "-U", user or "postgres")
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_restart_under_load(trained_model: TrainedModel, tmp_path: Path) -> None:
    """The log's PostgreSQL restarts mid-load (a throwaway cluster, not the shared server):
    no request fails, and every prediction is written once the store is back."""
    with postgres_cluster() as pg:
        env = environment(trained_model, tmp_path, pg.url)
        with api_process(env, tmp_path / "uvicorn.log", workers=1) as api:
            load = Load(api.url, 150).start()
            load.wait_answered(50)
            pg.stop()
            time.sleep(1.0)  # requests keep coming while the store is down
            pg.start()
            load.join()
            assert wait_until(lambda: len(read_predictions(pg.url)) == load.ok, timeout=40)
            terminate(api, limit=30)
        written = len(read_predictions(pg.url))
    figures = settle("PostgreSQL restart under load", load, written, env)
    assert figures.failed == 0, load.failures[:3]
    assert figures.unaccounted == 0
    assert written == load.ok  # the outage cost retries, not rows


@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` at `path` (root only), unmounted afterwards."""
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        missing("mounting a small tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        missing(f"cannot mount a tmpfs: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` with one file until writing fails (ENOSPC)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        chunk = b"\0" * 4096
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, chunk)
    finally:
        os.close(fd)
    return filler


def test_disk_full_under_the_sqlite_log(trained_model: TrainedModel, tmp_path: Path) -> None:
    """The SQLite log's disk fills up: predictions keep answering, rows wait (and count as
    dropped when the queue or shutdown gives up on them); space freed, writing resumes."""
    with small_disk(tmp_path / "disk") as disk:
        url = f"sqlite:///{disk / 'log.db'}"
        env = environment(trained_model, tmp_path, url)
        env["PREDICTION_LOG_QUEUE_SIZE"] = "50"
        with api_process(env, tmp_path / "uvicorn.log", workers=1) as api:
            filler = fill(disk)
            full = Load(api.url, 200).start().join()
            assert wait_until(lambda: "disk is full" in api.log(), timeout=20), api.log()[-2000:]
            filler.unlink()
            after = Load(api.url, 50).start().join()
            assert wait_until(lambda: len(read_predictions(url)) >= after.ok, timeout=30)
            terminate(api, limit=30)
        written = len(read_predictions(url))
    load = Load(api.url, full.total + after.total, ok=full.ok + after.ok)
    load.failures = full.failures + after.failures
    figures = settle("disk full under the SQLite log", load, written, env)
    assert figures.failed == 0, load.failures[:3]
    assert figures.dropped.get("queue_full", 0) > 0  # the full disk held rows back
    assert figures.unaccounted == 0


@dataclass
class ReadyProbe:
    """GET /ready every `interval` seconds on a new connection (so it reaches either worker)
    until stopped: every answer's status and the versions the ready answers named."""

    url: str
    interval: float = 0.05
    answers: int = 0
    not_ready: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ReadyProbe:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=self.url, timeout=30, limits=limits) as client:
            while not self._stop.wait(self.interval):
                try:
                    response = client.get("/ready")
                    if response.status_code == 200:
                        self.versions.append(str(response.json()["model_version"]))
                    else:
                        self.not_ready.append(f"{response.status_code}: {response.text[:100]}")
                except httpx.HTTPError as exc:
                    self.not_ready.append(f"{type(exc).__name__}: {exc}")
                self.answers += 1

    def stop(self) -> ReadyProbe:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        return self


def publish_version(tracking_uri: str, trained_model: TrainedModel, workdir: Path) -> str:
    """Register a new version of the session's model through the registry: a new run holding
    the session's bundle re-versioned and re-signed (as training would have written it)."""
    import json

    from churn.bundle import sign_bundle
    from churn.registry import BUNDLE_ARTIFACT_PATH
    from churn.registry import client as registry_client

    mlflow = registry_client(tracking_uri)
    name = trained_model.result.model_name
    experiment = mlflow.get_run(trained_model.result.run_id).info.experiment_id
    run = mlflow.create_run(experiment, run_name="fault-new-version")
    version = str(
        mlflow.create_model_version(
            name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        ).version
    )
    bundle = workdir / f"bundle-v{version}"
    shutil.copytree(trained_model.bundle_dir, bundle)
    metadata = json.loads((bundle / "metadata.json").read_text())
    metadata.update(model_version=version, run_id=run.info.run_id)
    (bundle / "metadata.json").write_text(json.dumps(metadata))
    sign_bundle(bundle)
    mlflow.log_artifacts(run.info.run_id, str(bundle), artifact_path=BUNDLE_ARTIFACT_PATH)
    mlflow.set_terminated(run.info.run_id)
    return version


def test_registry_stopped_during_a_reload(trained_model: TrainedModel, tmp_path: Path) -> None:
    """2 workers follow models:/<name>@production from a real `mlflow server`; mid-load the
    alias moves to a new version, an operator asks POST /admin/reload, and the MLflow server
    is stopped (SIGTERM) while that reload is in flight, then restarted on the same port.
    No request fails and /ready stays 200 (the old model serves while the registry is down),
    every prediction is written or counted, and both workers serve the new version soon
    after the registry is back."""
    from churn.registry import client as registry_client
    from tests.mlflow_server import mlflow_server

    began = time.monotonic()
    name, old = trained_model.result.model_name, trained_model.result.model_version
    # A private copy of the session's store, served by a real tracking server.
    store = Path(trained_model.tracking_uri.removeprefix("sqlite:///"))
    backend = f"sqlite:///{shutil.copy(store, tmp_path / 'mlflow.db')}"
    registry_client(backend).set_registered_model_alias(name, "production", old)
    port = free_port()
    token = "fault-admin-token"
    db = tmp_path / "log.db"
    with contextlib.ExitStack() as registry:
        tracking = registry.enter_context(mlflow_server(backend, tmp_path, port=port))
        env = environment(trained_model, tmp_path, f"sqlite:///{db}")
        del env["MODEL_PATH"]
        env |= {
            "MODEL_URI": f"models:/{name}@production",
            "MLFLOW_TRACKING_URI": tracking,
            "MODEL_WATCH_INTERVAL": "0.5",
            "MODEL_SYNC_INTERVAL": "0.2",
            "MODEL_RETRY_MAX_INTERVAL": "2",
            "MODEL_STATE_DIR": str(tmp_path / "model-state"),
            "ADMIN_TOKEN": token,
            "RELOAD_WAIT_TIMEOUT": "3",  # how long the reload answer waits for the other worker
        }
        with api_process(env, tmp_path / "uvicorn.log", workers=2) as api:

            def every_worker_on(version: str) -> bool:
                answer = httpx.get(f"{api.url}/model", timeout=10)
                if answer.status_code != 200:  # the worker asked has no model yet
                    return False
                workers = answer.json()["workers"]
                return len(workers) == 2 and all(w["model_version"] == version for w in workers)

            # Both workers load in the background: serving, not merely started.
            assert wait_until(lambda: every_worker_on(old), timeout=60), api.log()[-3000:]
            probe = ReadyProbe(api.url).start()
            before = Load(api.url, 100).start()
            before.wait_answered(30)
            new = publish_version(tracking, trained_model, tmp_path)
            registry_client(tracking).set_registered_model_alias(name, "production", new)
            reload_answer: list[httpx.Response | Exception] = []

            def ask_reload() -> None:
                try:
                    reload_answer.append(
                        httpx.post(
                            f"{api.url}/admin/reload",
                            headers={"Authorization": f"Bearer {token}"},
                            timeout=60,
                        )
                    )
                except httpx.HTTPError as exc:
                    reload_answer.append(exc)

            asking = threading.Thread(target=ask_reload, daemon=True)
            asking.start()
            time.sleep(0.1)  # the reload is under way: asking the registry, fetching the bundle
            stopping = time.monotonic()
            registry.close()  # SIGTERM to the MLflow server, waited for
            stop_took = time.monotonic() - stopping
            before.join()
            down = Load(api.url, 100).start().join()  # all of it while the registry is down
            asking.join(60)
            starting = time.monotonic()
            registry.enter_context(mlflow_server(backend, tmp_path, port=port))
            back_at = time.monotonic()
            assert wait_until(lambda: every_worker_on(new), timeout=30), api.log()[-3000:]
            swapped_after = time.monotonic() - back_at
            after = Load(api.url, 100).start().join()
            probe.stop()
            load = Load(api.url, before.total + down.total + after.total)
            load.ok = before.ok + down.ok + after.ok
            load.failures = before.failures + down.failures + after.failures
            assert wait_until(lambda: len(read_predictions(f"sqlite:///{db}")) == load.ok)
            terminate(api, limit=30)
    outage = back_at - stopping
    written = len(read_predictions(f"sqlite:///{db}"))
    answer = reload_answer[0] if reload_answer else None
    asked = f"{answer.status_code}" if isinstance(answer, httpx.Response) else type(answer).__name__
    if isinstance(answer, httpx.Response) and answer.status_code == 200:
        asked += f" (all swapped: {answer.json()['all_workers_swapped']})"
    failed_loads = sum(
        v
        for (metric, labels), v in counters(Path(env["PROMETHEUS_MULTIPROC_DIR"])).items()
        if metric == "model_reloads_total" and "result=failure" in labels
    )
    figures = settle(
        "MLflow server stopped mid-reload",
        load,
        written,
        env,
        f"registry down {outage:.1f}s (stop {stop_took:.1f}s, restart "
        f"{back_at - starting:.1f}s), {down.total} sent meanwhile; /admin/reload {asked}; "
        f"{failed_loads:.0f} loads failed (registry unreachable); "
        f"both workers on v{new} {swapped_after:.1f}s after restart; "
        f"scenario {time.monotonic() - began:.0f}s",
    )
    assert figures.failed == 0, load.failures[:3]
    assert down.ok == down.total  # the old model answered while the registry was down
    assert figures.unaccounted == 0
    assert probe.answers > 0 and not probe.not_ready, probe.not_ready[:3]
    assert set(probe.versions) == {old, new}
    # The reload asked as the registry went down is answered (swapped, or refused with a
    # reason), never a 500 or a hang.
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code in (200, 409), answer.text
