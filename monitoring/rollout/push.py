"""The evaluation's gauges on a Pushgateway (job ``rollout_evaluation``; the names are the
alert rules' contract, tests/metric_contract.py). Undefined values are left out, never NaN."""

from __future__ import annotations

from monitoring.rollout.results import VERDICTS, Evaluation, EvaluationError

PUSH_JOB = "rollout_evaluation"


def push_evaluation(evaluation: Evaluation, gateway: str, job: str = PUSH_JOB) -> None:
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    ev = evaluation.evidence

    def gauge(name: str, text: str, value: float) -> None:
        Gauge(name, text, registry=registry).set(value)

    decision = Gauge(
        "rollout_decision", "1 for the current decision", ["decision"], registry=registry
    )
    for verdict in VERDICTS:
        decision.labels(verdict).set(int(verdict == evaluation.decision.verdict))
    gauge("rollout_labelled_pairs", "Labelled pairs in the evaluation", ev.labelled_pairs)
    if ev.auc is not None:
        gauge("rollout_auc_difference", "AUC(challenger) - AUC(champion)", ev.auc.difference)
        gauge("rollout_auc_difference_lower", "Lower bound of the AUC difference", ev.auc.lower)
        gauge("rollout_auc_difference_upper", "Upper bound of the AUC difference", ev.auc.upper)
    if ev.agreement is not None:
        gauge(
            "rollout_tier_agreement",
            "Share of pairs in the same risk tier",
            ev.agreement.tier_agreement,
        )
    gauge(
        "rollout_evaluation_timestamp_seconds",
        "When the evaluation ran",
        ev.evaluated_at.timestamp(),
    )
    try:
        push_to_gateway(gateway, job=job, registry=registry, timeout=10)
    except OSError as exc:
        raise EvaluationError(f"pushgateway {gateway}: push failed ({exc})") from exc
