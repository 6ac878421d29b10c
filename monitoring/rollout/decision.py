"""The decision rule (pure: evidence and the config's rule in, a verdict out).

In order, the first that applies:
1. the challenger was rolled back by a guardrail -> reject;
2. Prometheus was asked and a guardrail bound is breached (error ratio or p95 latency of the
   challenger) -> reject; it was asked and has no series for the challenger -> undecided
   (a guardrail nobody can read is never "within bounds");
3. fewer than `min_pairs` labelled pairs (or labels of one class only) -> undecided;
4. the interval's upper bound of AUC(challenger) - AUC(champion) < 0: significantly worse
   -> reject (this wins over 5: a model shown worse is not promoted, even within the margin);
5. its lower bound >= -margin: non-inferior -> promote;
6. otherwise undecided, with the labelled pairs a decision should need
   (monitoring.rollout.stats.base.labels_needed).
"""

from __future__ import annotations

from collections.abc import Mapping

from churn.config import RolloutConfig
from churn.rollout import ROLLED_BACK
from monitoring.rollout.results import Decision, Evidence
from monitoring.rollout.stats.base import labels_needed


def _guardrail_reasons(evidence: Evidence, bounds: Mapping[str, float]) -> tuple[list[str], bool]:
    """(breaches, readable): what the challenger's health breaches, and whether it was read."""
    if evidence.health is None:
        return [], True
    challenger = next((h for h in evidence.health if h.role == "challenger"), None)
    if challenger is None or (challenger.error_ratio is None and challenger.p95_latency_ms is None):
        return [], False
    breaches = []
    max_error = bounds.get("max_error_ratio")
    if (
        challenger.error_ratio is not None
        and max_error is not None
        and challenger.error_ratio > max_error
    ):
        breaches.append(
            f"challenger error ratio {challenger.error_ratio:.4f} > {max_error:g} (guardrail)"
        )
    max_p95 = bounds.get("max_p95_latency_ms")
    if (
        challenger.p95_latency_ms is not None
        and max_p95 is not None
        and challenger.p95_latency_ms > max_p95
    ):
        breaches.append(
            f"challenger p95 latency {challenger.p95_latency_ms:.1f} ms > {max_p95:g} ms "
            "(guardrail)"
        )
    return breaches, True


def decide(
    evidence: Evidence,
    rule: RolloutConfig,
    guardrails: Mapping[str, float],
    rolled_back_reason: str | None = None,
) -> Decision:
    """The verdict for `evidence` (see the module docstring); `guardrails` are the record's."""
    if evidence.stage == ROLLED_BACK:
        why = rolled_back_reason or "a guardrail"
        return Decision("reject", (f"the challenger was rolled back: {why}",))
    breaches, readable = _guardrail_reasons(evidence, guardrails)
    if breaches:
        return Decision("reject", tuple(breaches))
    blind = () if readable else ("Prometheus has no series for the challenger: guardrails unread",)
    auc, n = evidence.auc, evidence.labelled_pairs
    if auc is None or n < rule.min_pairs:
        have = f"{n:,} labelled pairs" + (", one class only" if auc is None and n else "")
        needed = rule.min_pairs
        if auc is not None:
            estimate = labels_needed(
                auc.difference, auc.standard_error, n, rule.margin, rule.confidence
            )
            needed = max(needed, estimate) if estimate is not None else needed
        return Decision("undecided", (f"{have} (< {rule.min_pairs:,} needed)", *blind), needed - n)
    interval = (
        f"AUC difference {auc.difference:+.4f}, {auc.confidence:.0%} interval "
        f"[{auc.lower:+.4f}, {auc.upper:+.4f}] ({auc.method}, {n:,} labelled pairs)"
    )
    if auc.upper < 0:
        return Decision("reject", (f"significantly worse: {interval}",))
    if auc.lower >= -rule.margin and readable:
        return Decision("promote", (f"non-inferior (margin {rule.margin:g}): {interval}",))
    estimate = labels_needed(auc.difference, auc.standard_error, n, rule.margin, rule.confidence)
    if auc.lower >= -rule.margin:  # the labels would promote; the guardrails are unread
        return Decision("undecided", (interval, *blind), None)
    more = (
        f"about {estimate - n:,} more labelled pairs should decide if the difference holds"
        if estimate is not None
        else "at this difference no number of labels shows non-inferiority"
    )
    lower = f"lower bound {auc.lower:+.4f} < -{rule.margin:g}"
    return Decision(
        "undecided",
        (f"keep collecting: {lower}; {interval}; {more}", *blind),
        None if estimate is None else max(0, estimate - n),
    )
