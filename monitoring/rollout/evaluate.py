"""One evaluation of the challenger: the registry, the paired log and (optionally) Prometheus
in; an :class:`Evaluation` (evidence + verdict) out. The I/O lives here; the numbers in
``evidence`` and the rule in ``decision``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from churn.config import Config
from churn.prediction_log.reader import read_paired
from churn.registry import client, version_by_alias
from churn.risk import Thresholds
from churn.rollout import CHAMPION, ChallengerState, RolloutRecord, read_challenger
from churn.stores import StoreNotFoundError, require_existing_sqlite
from monitoring.performance.window import segment_specs
from monitoring.rollout import evidence as ev
from monitoring.rollout.decision import decide
from monitoring.rollout.health import read_health
from monitoring.rollout.results import Evaluation, EvaluationError, Evidence


def current_challenger(config: Config, mlflow_client: Any = None) -> ChallengerState:
    """@challenger with a readable record; EvaluationError when there is none (or it has no
    usable record: nothing is judged on a rollout whose state is unknown)."""
    mlflow_client = mlflow_client or client(config.tracking_uri)
    name = config.mlflow.model_name
    state = read_challenger(mlflow_client, name)
    if state is None:
        raise EvaluationError(f"model '{name}' has no @challenger: start a rollout first")
    if state.record is None:
        raise EvaluationError(f"{name}@challenger v{state.version}: {state.problem}")
    return state


def evaluate(
    config: Config,
    database_url: str,
    since: timedelta | None = None,
    prometheus_url: str | None = None,
    now: datetime | None = None,
) -> Evaluation:
    """Judge the current challenger against the current champion (see the package docstring).

    The window is the rollout's, from the record's start, unless `since` narrows it.
    """
    from churn.promotion import bundle_metadata

    mlflow_client = client(config.tracking_uri)
    name = config.mlflow.model_name
    state = current_challenger(config, mlflow_client)
    record = state.record
    assert record is not None
    champion = version_by_alias(mlflow_client, name, CHAMPION)
    if champion is None:
        raise EvaluationError(f"model '{name}' has no @{CHAMPION}: nothing to compare against")
    notes = []
    if record.champion is not None and record.champion != champion:
        notes.append(
            f"@{CHAMPION} is v{champion}, not v{record.champion} as when the rollout started; "
            f"only pairs with v{champion} are judged"
        )
    metadata = bundle_metadata(config, champion)
    thresholds = Thresholds.from_metadata(metadata)
    started = datetime.fromisoformat(record.started)
    at = now or datetime.now(started.tzinfo)
    start = started if since is None else max(started, at - since)
    window = f"since {start.isoformat(timespec='seconds')}"
    try:
        # connecting to a SQLite file that is not there would create an empty log, and an
        # empty log reads as "no pairs yet", not as the typo it is
        require_existing_sqlite(database_url, "prediction log")
    except StoreNotFoundError as exc:
        raise EvaluationError(str(exc)) from None
    frame = read_paired(database_url, champion, record.version, start)
    labelled = ev.labelled(frame)
    log_loss, brier = ev.loss_differences(labelled, config.rollout.confidence)
    shadow_pairs, canary_pairs = ev.role_counts(frame)
    health = None
    if prometheus_url:
        health = read_health(prometheus_url, record.stage, at - start)
    evidence = Evidence(
        model_name=name,
        champion=champion,
        challenger=record.version,
        stage=record.stage,
        window=window,
        pairs=len(frame),
        shadow_pairs=shadow_pairs,
        canary_pairs=canary_pairs,
        labelled_pairs=len(labelled),
        unpaired_batches=int(frame.attrs.get("unpaired", 0)),
        agreement=ev.agreement(frame, thresholds.decision),
        auc=ev.auc_difference(labelled, config.rollout),
        log_loss=log_loss,
        brier=brier,
        segments=ev.segment_rows(
            frame, segment_specs(metadata), config.monitoring.segment_min_rows
        ),
        health=health,
        notes=tuple(notes),
    )
    decision = decide(evidence, config.rollout, record.guardrails, _rollback_reason(record))
    return Evaluation(
        evidence, decision, config.rollout.margin, config.rollout.min_pairs, config.rollout.method
    )


def _rollback_reason(record: RolloutRecord) -> str | None:
    return record.reason if record.stage == "rolled_back" else None
