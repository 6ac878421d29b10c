"""The shared state the workers follow reloads through (app.workers), on a real directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.workers import StateDir, WorkerRecord, pid_alive, state_root


def _record(pid: int, heartbeat: float | None = None, generation: int = 0) -> WorkerRecord:
    return WorkerRecord(
        pid=pid,
        status="serving",
        generation=generation,
        heartbeat=time.time() if heartbeat is None else heartbeat,
        model_version="3",
    )


def test_concurrent_bumps_never_lose_a_generation(tmp_path: Path) -> None:
    state = StateDir(tmp_path, stale_after=5)
    assert state.generation() == 0
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: state.bump(), range(40)))
    assert sorted(results) == list(range(1, 41))
    assert state.generation() == 40


def test_only_live_fresh_workers_count(tmp_path: Path) -> None:
    state = StateDir(tmp_path, stale_after=5)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not pid_alive(dead.pid)
    state.write(_record(os.getpid(), generation=2))
    state.write(_record(dead.pid))
    state.write(_record(os.getppid(), heartbeat=time.time() - 60))  # alive but silent
    (state.workers / "garbage.json").write_text("{not json")
    live = state.live()
    assert [(r.pid, r.generation) for r in live] == [(os.getpid(), 2)]
    assert not (state.workers / f"{dead.pid}.json").exists()  # the dead worker's file is gone
    state.remove(os.getpid())
    assert state.live() == []


def test_the_state_dir_defaults_to_the_metrics_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert state_root(None) is None
    assert state_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert state_root(None) == tmp_path / "model-state"
