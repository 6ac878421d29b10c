"""What every uvicorn worker serves, shared through a small state directory.

Workers are separate processes: a reload asked of one must reach the others. The state
directory (MODEL_STATE_DIR, by default ``model-state/`` inside PROMETHEUS_MULTIPROC_DIR, which
every worker of one server shares and the entrypoint empties at start) holds

- ``generation.json``: ``{"generation": N, ...}``, bumped (under an exclusive file lock) by
  the worker that answered ``POST /admin/reload``; every worker follows it and reloads when it
  is ahead of what it applied;
- ``workers/<pid>.json``: what that worker serves (version, alias, generation applied,
  loaded_at, status) and a heartbeat, rewritten atomically every sync interval.

A record whose process is gone (or whose heartbeat stopped) is not a live worker; its file is
removed by whoever notices. Everything here is blocking file I/O: call it in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GENERATION_FILE = "generation.json"
WORKERS_DIR = "workers"
_LOCK_FILE = "generation.lock"


@dataclass(frozen=True)
class WorkerRecord:
    """One worker's view of itself: what it serves and whether it followed the last reload."""

    pid: int
    status: str  # "loading", "serving" or "failed" (the last load failed; see reason)
    generation: int  # the newest reload generation this worker has applied (or tried)
    heartbeat: float  # time.time() of the last write
    model_version: str | None = None
    model_alias: str | None = None
    run_id: str | None = None
    loaded_at: float | None = None
    reason: str | None = None  # a stable, client-safe reason when not serving as asked

    def public(self) -> dict[str, Any]:
        return asdict(self)


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Replace `path` atomically: a reader sees the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, sort_keys=True))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class StateDir:
    """The shared generation record and the worker records of one server."""

    def __init__(self, root: Path, stale_after: float) -> None:
        self.root = root
        self.workers = root / WORKERS_DIR
        self.stale_after = stale_after
        self.workers.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / _LOCK_FILE).open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def generation(self) -> int:
        """The newest reload generation asked for (0 before any reload)."""
        record = _read_json(self.root / GENERATION_FILE) or {}
        value = record.get("generation", 0)
        return value if isinstance(value, int) else 0

    def bump(self) -> int:
        """Ask every worker to reload: the next generation, written under the file lock."""
        with self._locked():
            generation = self.generation() + 1
            _write_json(
                self.root / GENERATION_FILE,
                {"generation": generation, "requested_at": time.time(), "by_pid": os.getpid()},
            )
        return generation

    def write_extra(self, name: str, payload: dict[str, Any]) -> None:
        """Replace a small shared JSON file of this directory (e.g. the rollout's rollback,
        app.rollout) atomically."""
        _write_json(self.root / name, payload)

    def read_extra(self, name: str) -> dict[str, Any] | None:
        """A shared JSON file written by `write_extra`; None when absent or unreadable."""
        return _read_json(self.root / name)

    def write(self, record: WorkerRecord) -> None:
        _write_json(self.workers / f"{record.pid}.json", record.public())

    def remove(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.workers / f"{pid}.json").unlink()

    def live(self) -> list[WorkerRecord]:
        """Records of live workers, by pid; records of dead ones are removed on the way."""
        now = time.time()
        records = []
        for path in sorted(self.workers.glob("*.json")):
            raw = _read_json(path)
            try:
                record = WorkerRecord(**raw) if raw is not None else None
            except TypeError:
                record = None
            if record is None:
                continue
            if not pid_alive(record.pid):
                self.remove(record.pid)
                continue
            if now - record.heartbeat > self.stale_after:
                continue  # alive but stuck (or another host's): not counted as live
            records.append(record)
        return sorted(records, key=lambda r: r.pid)


def state_root(configured: Path | None) -> Path | None:
    """MODEL_STATE_DIR, else ``model-state/`` in PROMETHEUS_MULTIPROC_DIR, else None (one
    process: nothing to share)."""
    if configured is not None:
        return configured
    multiproc = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(multiproc) / "model-state" if multiproc else None
