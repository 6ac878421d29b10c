"""The loop's memory of refused candidates, kept as tags in the model registry.

Why the registry: it is the one store every place that runs the loop already shares (the
compose service, the scheduled workflow on a fresh runner, a developer's `make closed-loop`),
so a refusal is remembered wherever the next cycle runs; a local state file would be lost
with a CI runner or a container.

Tags on the registered model:

* ``closed_loop.refused.<window digest>`` = {"version", "at"}: the gate refused the model
  trained on that data window; the loop never retrains on the same window again;
* ``closed_loop.backoff`` = {"refusals", "last_refused_at"}: consecutive refusals, for the
  exponential, bounded wait before the next attempt on a new window.

A promotion clears both. The refused version itself stays registered (its run, metrics and
the gate's verdict are the audit trail) and is tagged ``closed_loop.refused_window``.
Reading the memory fails closed: an unreadable or corrupt tag is an error, never "no memory".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from monitoring.closed_loop.results import ClosedLoopError
from monitoring.drift.sources import OUTCOME_COLUMN, PREDICTION_ID_COLUMN

REFUSED_PREFIX = "closed_loop.refused."
BACKOFF_TAG = "closed_loop.backoff"
VERSION_TAG = "closed_loop.refused_window"
MAX_REMEMBERED = 50  # refused windows kept; the oldest are forgotten first


@dataclass(frozen=True)
class Backoff:
    """Wait ``base`` after the first refusal, doubling per further refusal, at most ``cap``."""

    base: timedelta = timedelta(hours=4)
    cap: timedelta = timedelta(days=3)

    def delay(self, refusals: int) -> timedelta:
        if refusals <= 0:
            return timedelta(0)
        return min(self.base * 2 ** min(refusals - 1, 32), self.cap)


@dataclass(frozen=True)
class RefusedWindow:
    version: str
    at: datetime


@dataclass(frozen=True)
class LoopMemory:
    """What the registry remembers: refused windows and the run of consecutive refusals."""

    refused: Mapping[str, RefusedWindow] = field(default_factory=dict)
    refusals: int = 0
    last_refused_at: datetime | None = None

    def next_attempt_at(self, backoff: Backoff) -> datetime | None:
        if self.last_refused_at is None or self.refusals <= 0:
            return None
        return self.last_refused_at + backoff.delay(self.refusals)


def window_digest(
    production_version: str, current: pd.DataFrame, train_digest: str, config_json: str
) -> str:
    """What a retrain would be trained on, as one SHA-256: the production version it would
    replace, the labelled predictions (ids and outcomes), the training data file's digest and
    the config. Any new label, new training data or config change makes a new window."""
    digest = hashlib.sha256()
    for part in (production_version, train_digest, config_json):
        digest.update(part.encode())
        digest.update(b"\0")
    if not current.empty and OUTCOME_COLUMN in current:
        labelled = current.loc[current[OUTCOME_COLUMN].notna()]
        pairs = zip(labelled[PREDICTION_ID_COLUMN], labelled[OUTCOME_COLUMN], strict=True)
        for pid, outcome in sorted(pairs):
            digest.update(f"{pid}:{int(outcome)}\n".encode())
    return digest.hexdigest()


def _parse(key: str, value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return data
    except ValueError as exc:
        raise ClosedLoopError(
            f"registry tag '{key}' is not the JSON the closed loop writes ({exc}); "
            "delete the tag to reset the loop's memory"
        ) from None


def memory_from_tags(tags: Mapping[str, str]) -> LoopMemory:
    """Parse the registered model's tags (errors name the corrupt tag)."""
    refused: dict[str, RefusedWindow] = {}
    try:
        for key, value in tags.items():
            if key.startswith(REFUSED_PREFIX):
                data = _parse(key, value)
                refused[key.removeprefix(REFUSED_PREFIX)] = RefusedWindow(
                    str(data["version"]), datetime.fromisoformat(data["at"])
                )
        backoff = _parse(BACKOFF_TAG, tags[BACKOFF_TAG]) if BACKOFF_TAG in tags else {}
        last = backoff.get("last_refused_at")
        return LoopMemory(
            refused,
            int(backoff.get("refusals", 0)),
            datetime.fromisoformat(last) if last else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ClosedLoopError(
            f"the closed loop's registry tags are malformed ({type(exc).__name__}: {exc}); "
            f"delete the '{BACKOFF_TAG}' and '{REFUSED_PREFIX}*' tags to reset its memory"
        ) from None


class RegistryMemory:
    """Reads and writes the loop's memory on one registered model."""

    def __init__(self, mlflow_client: Any, model_name: str) -> None:
        self._client = mlflow_client
        self._name = model_name

    def _tags(self) -> dict[str, str]:
        return dict(self._client.get_registered_model(self._name).tags or {})

    def load(self) -> LoopMemory:
        return memory_from_tags(self._tags())

    def remember_refusal(self, window: str, version: str, now: datetime) -> LoopMemory:
        """Record the refused window, tag the refused version, count one more refusal."""
        before = self.load()
        stamp = now.isoformat(timespec="seconds")
        self._client.set_model_version_tag(self._name, version, VERSION_TAG, window)
        self._client.set_registered_model_tag(
            self._name, REFUSED_PREFIX + window, json.dumps({"version": version, "at": stamp})
        )
        refusals = before.refusals + 1
        self._client.set_registered_model_tag(
            self._name,
            BACKOFF_TAG,
            json.dumps({"refusals": refusals, "last_refused_at": stamp}),
        )
        oldest_first = sorted(before.refused.items(), key=lambda item: item[1].at)
        for digest, _ in oldest_first[: max(0, len(oldest_first) + 1 - MAX_REMEMBERED)]:
            self._client.delete_registered_model_tag(self._name, REFUSED_PREFIX + digest)
        return self.load()

    def forget(self) -> None:
        """After a promotion: the refused windows were judged against a model that is no
        longer in production, and the run of refusals has ended."""
        for key in self._tags():
            if key == BACKOFF_TAG or key.startswith(REFUSED_PREFIX):
                self._client.delete_registered_model_tag(self._name, key)
