"""The rollout evaluation's value types and exit codes (no computation, no I/O)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal


@dataclass(frozen=True)
class PairedDifference:
    """challenger - champion for one metric on the same customers, with a two-sided interval.

    ``standard_error`` is the method's own (DeLong's variance, the bootstrap's spread, the
    paired per-row differences' standard error); ``p_value`` tests "no difference".
    """

    metric: str
    method: str
    champion: float
    challenger: float
    difference: float
    lower: float
    upper: float
    standard_error: float
    p_value: float
    confidence: float
    pairs: int

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "metric": self.metric,
            "method": self.method,
            "champion": self.champion,
            "challenger": self.challenger,
            "difference": self.difference,
            "lower": self.lower,
            "upper": self.upper,
            "standard_error": self.standard_error,
            "p_value": self.p_value,
            "confidence": self.confidence,
            "pairs": self.pairs,
        }


# Exit codes of `rollout.py evaluate` (and its make target).
EXIT_PROMOTE = 0
EXIT_REJECT = 1
EXIT_ERROR = 2
EXIT_UNDECIDED = 3
EXIT_CODES = {
    EXIT_PROMOTE: "promote: the challenger is non-inferior on enough labelled pairs",
    EXIT_REJECT: "reject: significantly worse, a guardrail breached, or rolled back",
    EXIT_ERROR: "error: registry, prediction log or Prometheus unusable (one line on stderr)",
    EXIT_UNDECIDED: "undecided: keep collecting (the report estimates the labels still needed)",
}

Verdict = Literal["promote", "reject", "undecided"]
VERDICTS: tuple[Verdict, ...] = ("promote", "reject", "undecided")


class EvaluationError(RuntimeError):
    """The evaluation cannot run (or cannot vouch for a guardrail); the message says why."""


@dataclass(frozen=True)
class Agreement:
    """How alike the two models' answers are on the same rows (no labels needed)."""

    pairs: int
    decision_agreement: float  # same side of the decision threshold
    tier_agreement: float  # same risk tier
    ks_statistic: float  # two-sample KS distance of the two score distributions
    mean_abs_difference: float  # mean |p_challenger - p_champion| per row
    champion_high_rate: float
    challenger_high_rate: float


@dataclass(frozen=True)
class SegmentRow:
    """One segment's predicted churn rate per model and, where labelled, the observed rate and
    each model's calibration-in-the-large z (observed - predicted, in standard errors)."""

    feature: str
    segment: str
    rows: int
    champion_rate: float
    challenger_rate: float
    labelled: int
    observed_rate: float | None = None
    champion_calibration_z: float | None = None
    challenger_calibration_z: float | None = None


@dataclass(frozen=True)
class RoleHealth:
    """What Prometheus says about one role over the window (None: no series for it)."""

    role: str
    p95_latency_ms: float | None
    error_ratio: float | None
    requests: float | None


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reasons: tuple[str, ...]
    # More labelled pairs a decision should need if the difference stays where it is (None:
    # no number would do, e.g. the challenger would have to improve to clear the margin).
    labels_needed: int | None = None

    @property
    def exit_code(self) -> int:
        return {"promote": EXIT_PROMOTE, "reject": EXIT_REJECT}.get(self.verdict, EXIT_UNDECIDED)


@dataclass(frozen=True)
class Evidence:
    """Everything the evaluation found about one challenger against the champion."""

    model_name: str
    champion: str
    challenger: str
    stage: str  # the record's stage when evaluated
    window: str
    pairs: int
    shadow_pairs: int  # answered by the champion, the challenger in shadow
    canary_pairs: int  # answered by the challenger
    labelled_pairs: int
    unpaired_batches: int
    agreement: Agreement | None
    auc: PairedDifference | None
    log_loss: PairedDifference | None
    brier: PairedDifference | None
    segments: tuple[SegmentRow, ...]
    health: tuple[RoleHealth, ...] | None  # None: no Prometheus URL given
    notes: tuple[str, ...] = ()
    evaluated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Evaluation:
    evidence: Evidence
    decision: Decision
    margin: float
    min_pairs: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        ev = self.evidence
        payload = asdict(ev)
        payload["evaluated_at"] = ev.evaluated_at.isoformat(timespec="seconds")
        payload["decision"] = {
            "verdict": self.decision.verdict,
            "reasons": list(self.decision.reasons),
            "labels_needed": self.decision.labels_needed,
            "exit_code": self.decision.exit_code,
        }
        payload["rule"] = {
            "margin": self.margin,
            "min_pairs": self.min_pairs,
            "method": self.method,
        }
        return payload

    def summary(self) -> dict[str, Any]:
        """The short form kept in the rollout record's `evidence` (what `status` shows)."""
        ev, auc = self.evidence, self.evidence.auc
        out: dict[str, Any] = {
            "evaluated_at": ev.evaluated_at.isoformat(timespec="seconds"),
            "decision": self.decision.verdict,
            "reasons": list(self.decision.reasons),
            "pairs": ev.pairs,
            "labelled_pairs": ev.labelled_pairs,
            "labels_needed": self.decision.labels_needed,
            "champion": ev.champion,
        }
        if ev.agreement is not None:
            out["tier_agreement"] = round(ev.agreement.tier_agreement, 4)
        if auc is not None:
            out["auc_difference"] = round(auc.difference, 5)
            out["auc_interval"] = [round(auc.lower, 5), round(auc.upper, 5)]
            out["method"] = auc.method
        return out
