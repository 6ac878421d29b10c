"""The closed loop's value types and exit codes (no computation, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

# Exit codes of `python -m monitoring.closed_loop` (its --help, the README, the Makefile).
EXIT_OK = 0  # nothing to do, waiting for labels, backing off, or promoted
EXIT_GATE_REFUSED = 1  # the gate (or, for a challenger, the live evidence) refused the model
EXIT_ERROR = 2  # the cycle could not run (one line on stderr)
EXIT_INSUFFICIENT = 3  # nothing judged: too few rows in the window for any verdict

Action = Literal["none", "insufficient", "wait", "retrain", "skip", "backoff", "rollout"]


class ClosedLoopError(RuntimeError):
    """The cycle cannot run; the message says what to fix."""


@dataclass(frozen=True)
class Decision:
    """What one cycle should do, and why (printed as one line)."""

    action: Action
    reason: str
    drifted: list[str] = field(default_factory=list)
    labelled: int = 0


@dataclass(frozen=True)
class CycleResult:
    """Everything a cycle did, for the JSON report and the Pushgateway."""

    production_version: str
    decision: Decision
    drift_summary: str
    current_rows: int
    window: str | None = None
    refusals: int = 0
    retrain_data: str | None = None
    candidate_version: str | None = None
    candidate_auc: float | None = None
    promoted: bool = False
    gate: str | None = None
    # Where a model passed by the gate went (closed_loop.promotion): "production", or the
    # challenger's rollout stage ("shadow", "canary"); and what a rollout cycle concluded.
    destination: str | None = None
    rollout: str | None = None
    exit_code: int = EXIT_OK
    finished_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def but(self, **changes: Any) -> CycleResult:
        """A copy with `changes` (results are immutable; each step returns a new one)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "production_version": self.production_version,
            "action": self.decision.action,
            "reason": self.decision.reason,
            "drifted": self.decision.drifted,
            "labelled": self.decision.labelled,
            "drift_summary": self.drift_summary,
            "current_rows": self.current_rows,
            "window": self.window,
            "consecutive_refusals": self.refusals,
            "retrain_data": self.retrain_data,
            "candidate_version": self.candidate_version,
            "candidate_auc": self.candidate_auc,
            "promoted": self.promoted,
            "gate": self.gate,
            "destination": self.destination,
            "rollout": self.rollout,
            "exit_code": self.exit_code,
            "finished_at": self.finished_at.isoformat(timespec="seconds"),
        }
