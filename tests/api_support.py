"""Helpers shared by the API and prediction-log tests: settings, customers, Postgres, a proxy."""

from __future__ import annotations

import contextlib
import errno
import random
import select
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.settings import Settings
from tests._tools import free_port
from tests.mlflow_server import postgres_database as _postgres_database

ADMIN_TOKEN = "test-admin-token"

CUSTOMER: dict[str, Any] = {
    "tenure": 12,
    "monthly_charges": 70.5,
    "total_charges": 846.0,
    "num_products": 2,
    "contract_type": "Month-to-month",
    "payment_method": "Electronic check",
    "internet_service": "Fiber optic",
}


def make_settings(model_path: Path, tmp: Path, **overrides: Any) -> Settings:
    """Settings for a test app: the given bundle, a private SQLite log, fast flushing."""
    values: dict[str, Any] = {
        "model_path": model_path,
        "database_url": f"sqlite:///{tmp / 'prediction_log.db'}",
        "prediction_log_flush_interval": 0.05,
        "model_required": False,
        "log_level": "WARNING",
        "environment": "test",
        **overrides,
    }
    return Settings(**values)


def copy_bundle(source_dir: Path, target: Path) -> Path:
    """A private copy of a bundle directory (tests tamper with or re-version it)."""
    shutil.copytree(source_dir, target)
    return target / "model.pkl"


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, step: float = 0.05) -> bool:
    """Poll until `condition()` is true; False on timeout (the caller asserts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` in Prometheus text whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# ---------------------------------------------------------------------------- PostgreSQL


# One helper for every test that needs a throwaway database (re-exported here).
postgres_database = _postgres_database


# ---------------------------------------------------------------------------- TCP proxy


def free_port_outside_ephemeral_range() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.sample(range(max(1024, low - 12000), low), 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


class TcpProxy:
    """A loopback TCP proxy we can take down and bring back, to simulate a store outage."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        # Below the kernel's ephemeral range: while the proxy is down, its port must not be
        # handed out as the local port of some outgoing connection (the restart's bind
        # would then fail with "Address already in use").
        self.port = free_port_outside_ephemeral_range()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._running = False

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # The previous listener's accept thread may still hold its socket for up to one accept
        # timeout after stop(); a restart waits that out instead of failing with EADDRINUSE.
        deadline = time.monotonic() + 5.0
        while True:
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    listener.close()
                    raise
                time.sleep(0.1)
        listener.listen(16)
        listener.settimeout(0.2)
        self._listener = listener
        self._running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut every open one (an outage, not a clean close)."""
        self._running = False
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.close()
            self._conns.clear()

    def _accept(self) -> None:
        listener = self._listener
        while self._running and listener is not None:
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=3)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while self._running:
                ready, _, _ = select.select([a, b], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()


class Prober:
    """Calls /predict in a thread until stopped; records every status and served version
    (a test of a switch under traffic asserts none failed and which versions answered)."""

    def __init__(self, url: str, customer: dict[str, Any], pause: float = 0.1) -> None:
        self.url, self.customer, self.pause = url, customer, pause
        self.statuses: list[int | str] = []
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/predict", json=self.customer)
                except httpx.HTTPError as exc:
                    self.statuses.append(type(exc).__name__)
                else:
                    self.statuses.append(response.status_code)
                    if response.status_code == 200:
                        self.versions.append(response.json()["model_version"])
                self._stop.wait(self.pause)
