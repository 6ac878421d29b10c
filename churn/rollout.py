"""Progressive delivery: the rollout record of a challenger, kept in the model registry.

Roles: ``@production`` is the champion, which answers customers; ``@challenger`` is the version
being rolled out. Each challenger carries exactly one record, a JSON model-version tag
(``rollout``), so every worker of every replica reads the same state, and the record stays on
the version afterwards as its audit trail (every transition is kept in ``history``).

Stages and what the API does in each:

- ``shadow``: the champion answers every request; the challenger scores the same rows off the
  answer's critical path and both predictions are logged, paired.
- ``canary``: a deterministic, sticky ``share`` of traffic is answered by the challenger
  (``routing_bucket`` below decides, by a routing key).
- ``promoted``, ``rejected``, ``rolled_back``: final; the challenger answers nothing. A rollout
  that ends this way is restarted only by a new ``start`` (a new record).

A challenger without a readable record is never used (fail closed): the API serves the champion
alone and says why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from churn.registry import is_absent, model_version, registry_call, unavailable

CHALLENGER = "challenger"
CHAMPION = "production"
ROLLOUT_TAG = "rollout"

SHADOW = "shadow"
CANARY = "canary"
PROMOTED = "promoted"
REJECTED = "rejected"
ROLLED_BACK = "rolled_back"
STAGES = (SHADOW, CANARY, PROMOTED, REJECTED, ROLLED_BACK)
ACTIVE = frozenset({SHADOW, CANARY})
FINAL = frozenset({PROMOTED, REJECTED, ROLLED_BACK})

# Which stage may follow which. A canary may change its share (canary -> canary).
ALLOWED = {
    SHADOW: frozenset({CANARY, PROMOTED, REJECTED, ROLLED_BACK}),
    CANARY: frozenset({CANARY, PROMOTED, REJECTED, ROLLED_BACK}),
    PROMOTED: frozenset(),
    REJECTED: frozenset(),
    ROLLED_BACK: frozenset(),
}


class RolloutError(ValueError):
    """A record that cannot be read, or a transition that is not allowed; says which and why."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Transition:
    at: str
    stage: str
    share: float
    reason: str
    by: str

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise RolloutError(f"rollout stage {self.stage!r} is not one of {', '.join(STAGES)}")


@dataclass(frozen=True)
class RolloutRecord:
    """One challenger's rollout: where it stands and how it got there."""

    version: str
    champion: str | None  # the @production version when the rollout started
    stage: str
    share: float  # the canary share; 0.0 in every other stage
    started: str
    updated: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)  # the last evaluation's summary
    # The canary's guardrail bounds (from the config's rollout section when the rollout
    # started), carried here so every worker of every replica judges by the same numbers.
    guardrails: dict[str, float] = field(default_factory=dict)
    # In canary, whether the champion also scores the rows the challenger answers, so the
    # evidence stays paired on its customers (false: routing alone, about a tenth more model
    # work saved at a 10 % share; the pairs then come from the shadow stage).
    paired: bool = True
    history: tuple[Transition, ...] = ()

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise RolloutError(f"rollout stage {self.stage!r} is not one of {', '.join(STAGES)}")
        if not isinstance(self.share, (int, float)) or not math.isfinite(self.share):
            raise RolloutError(f"rollout share {self.share!r} is not a number")
        if self.stage == CANARY and not 0.0 < self.share <= 1.0:
            raise RolloutError(f"a canary share must be in (0, 1], got {self.share}")
        if self.stage != CANARY and self.share != 0.0:
            raise RolloutError(f"share must be 0 outside canary (stage {self.stage})")
        if not isinstance(self.paired, bool):
            raise RolloutError(f"rollout 'paired' must be true or false, got {self.paired!r}")

    @property
    def active(self) -> bool:
        return self.stage in ACTIVE

    @property
    def shadowing(self) -> bool:
        return self.stage == SHADOW

    @property
    def serving_share(self) -> float:
        """The share of traffic the challenger answers now (0 unless in canary)."""
        return self.share if self.stage == CANARY else 0.0

    @classmethod
    def start(
        cls,
        version: str,
        champion: str | None,
        reason: str,
        by: str,
        guardrails: Mapping[str, float] | None = None,
    ) -> RolloutRecord:
        at = now_iso()
        first = Transition(at=at, stage=SHADOW, share=0.0, reason=reason, by=by)
        return cls(
            version=str(version),
            champion=champion,
            stage=SHADOW,
            share=0.0,
            started=at,
            updated=at,
            reason=reason,
            guardrails=dict(guardrails or {}),
            history=(first,),
        )

    def moved(
        self,
        stage: str,
        reason: str,
        by: str,
        share: float = 0.0,
        evidence: Mapping[str, Any] | None = None,
        paired: bool | None = None,
    ) -> RolloutRecord:
        """The record after a transition (`paired` None: as it was); RolloutError when the
        stage may not follow."""
        if stage not in ALLOWED.get(self.stage, frozenset()):
            raise RolloutError(
                f"a rollout in stage {self.stage} cannot move to {stage}"
                + (" (it has ended; start a new one)" if self.stage in FINAL else "")
            )
        at = now_iso()
        step = Transition(at=at, stage=stage, share=float(share), reason=reason, by=by)
        return replace(
            self,
            stage=stage,
            share=float(share),
            updated=at,
            reason=reason,
            evidence=dict(evidence) if evidence is not None else self.evidence,
            paired=self.paired if paired is None else paired,
            history=(*self.history, step),
        )

    def with_evidence(self, evidence: Mapping[str, Any]) -> RolloutRecord:
        return replace(self, evidence=dict(evidence), updated=now_iso())

    def to_json(self) -> str:
        payload = asdict(self)
        payload["history"] = [asdict(step) for step in self.history]
        return json.dumps(payload, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> RolloutRecord:
        try:
            payload = json.loads(text)
            history = tuple(Transition(**step) for step in payload.pop("history", []))
            return cls(**payload, history=history)
        except RolloutError:
            raise
        except (ValueError, TypeError, AttributeError) as exc:
            raise RolloutError(f"the rollout record is not readable: {exc}") from None


# --------------------------------------------------------------------------- routing


# A routing key's position: a polynomial hash of its UTF-8 bytes modulo a prime,
# h = sum(b_j * 256**j) mod M, spread over 32 bits by one multiplication (Fibonacci hashing:
# the low 32 bits of h * 2**32/golden ratio); those bits over 2**32 are the bucket. Chosen
# because both forms are cheap: one key is two C calls and four integer operations
# (int.from_bytes of the key's UTF-8 is exactly sum(b_j * 256**j), and M < 2**30 is one
# CPython digit, so the remainder takes the one-digit division), and a batch
# of keys is a handful of numpy operations (routing_buckets), where a cryptographic hash per
# key cost more than the rest of canary routing put together. It needs no secrecy: it spreads
# customers evenly and keeps each one in place. Every product numpy forms stays below 2**64
# in its uint64: a byte times a power (< 2**38), a key's sum times a power, h times the
# multiplier (< 2**62).
_MODULUS = (1 << 30) - 35  # the largest prime below 2**30
_BASE = 256
_SPREAD = 0x9E3779B9  # 2**32 / golden ratio, odd
_LOW = (1 << 32) - 1


def routing_bucket(key: str) -> float:
    """A stable position in [0, 1) for a routing key, the same in every worker and replica.

    A key is answered by the challenger when ``routing_bucket(key) < share``: sticky per key
    (the same customer always meets the same model at a given share), and a larger share only
    adds keys (a customer on the challenger at 5 % stays on it at 10 %).
    """
    try:
        data = key.encode()
    except UnicodeEncodeError:  # a lone surrogate (the request codecs refuse them): its bytes
        data = key.encode("utf-8", "surrogatepass")
    return (int.from_bytes(data, "little") % _MODULUS * _SPREAD & _LOW) / 2.0**32


def routing_buckets(keys: Sequence[str]) -> np.ndarray:
    """``routing_bucket`` of many keys at once, equal to it key by key (the API routes a
    batch's rows with it). The keys are joined into one text, each ended by a NUL (byte 0: it
    adds nothing); every byte is multiplied by B**(its place in the whole text), one
    multiplication with no per-key position to work out; the sums per key
    (``np.add.reduceat``) are then each multiplied by B**-(the key's start), which leaves each
    key's own polynomial."""
    n = len(keys)
    if n == 0:
        return np.empty(0, dtype=np.float64)
    try:
        data = ("\0".join(keys) + "\0").encode()
    except UnicodeEncodeError:  # a lone surrogate: key by key
        return np.fromiter(map(routing_bucket, keys), dtype=np.float64, count=n)
    points = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(points == 0)
    if ends.size != n:  # a key holds a NUL itself: the ends come from the lengths
        sizes = np.fromiter(map(len, map(str.encode, keys)), dtype=np.intp, count=n)
        ends = np.cumsum(sizes + 1) - 1
    starts = np.empty(n, dtype=np.intp)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    if int((ends - starts).max()) >= _LONGEST:  # a key longer than real ones: key by key
        return np.fromiter(map(routing_bucket, keys), dtype=np.float64, count=n)
    powers, inverses = _tables(points.size)
    terms = np.multiply(points, powers[: points.size], dtype=np.uint64)  # each < 2**38
    h = np.add.reduceat(terms, starts) % _M * inverses[starts] % _M
    return (h * np.uint64(_SPREAD) & np.uint64(_LOW)).astype(np.float64) / 2.0**32


_M = np.uint64(_MODULUS)
# A longer key is hashed alone (its sum of terms, each < 2**38, stays below 2**64 up to
# 2**26 bytes, but real routing keys are short, and the tables need not grow for one)
_LONGEST = 1 << 11


_POWERS = np.ones(1, dtype=np.uint64)
_INVERSES = np.ones(1, dtype=np.uint64)


def _tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """B**g and B**-g mod M for g < n (at least), computed once and grown on demand."""
    global _POWERS, _INVERSES
    if _POWERS.size < n:
        size = max(n, 2 * _POWERS.size, 4096)
        inverse = pow(_BASE, -1, _MODULUS)
        powers, inverses = [1], [1]
        for _ in range(size - 1):
            powers.append(powers[-1] * _BASE % _MODULUS)
            inverses.append(inverses[-1] * inverse % _MODULUS)
        _POWERS = np.array(powers, dtype=np.uint64)
        _INVERSES = np.array(inverses, dtype=np.uint64)
    return _POWERS, _INVERSES


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ChallengerState:
    """What the registry says about ``@challenger``: its version and its record (None when the
    version carries no record or an unreadable one, with ``problem`` saying which)."""

    version: str
    record: RolloutRecord | None
    problem: str | None = None


def read_challenger(mlflow_client: Any, name: str) -> ChallengerState | None:
    """``@challenger`` and its record; None only when the registry says there is no challenger.

    Any failure to get an answer raises RegistryUnavailable: an outage never reads as "no
    challenger" (a worker keeps the state it had).
    """
    from mlflow.exceptions import MlflowException

    try:
        mv = mlflow_client.get_model_version_by_alias(name, CHALLENGER)
    except MlflowException as exc:
        if is_absent(exc):
            return None
        raise unavailable(f"reading {name}@{CHALLENGER}", exc) from None
    except OSError as exc:
        raise unavailable(f"reading {name}@{CHALLENGER}", exc) from None
    version = str(mv.version)
    text = (mv.tags or {}).get(ROLLOUT_TAG)
    if text is None:
        return ChallengerState(version, None, f"version {version} has no rollout record")
    try:
        record = RolloutRecord.from_json(text)
    except RolloutError as exc:
        return ChallengerState(version, None, str(exc))
    if record.version != version:
        problem = f"the record on version {version} is for version {record.version}"
        return ChallengerState(version, None, problem)
    return ChallengerState(version, record)


def read_record(mlflow_client: Any, name: str, version: str) -> RolloutRecord | None:
    """The record kept on one version (None when it has none); RolloutError when unreadable."""
    mv = model_version(mlflow_client, name, version)
    text = (mv.tags or {}).get(ROLLOUT_TAG)
    return None if text is None else RolloutRecord.from_json(text)


def write_record(mlflow_client: Any, name: str, record: RolloutRecord) -> None:
    registry_call(
        f"writing the rollout record of {name} v{record.version}",
        lambda: mlflow_client.set_model_version_tag(
            name, record.version, ROLLOUT_TAG, record.to_json()
        ),
    )
