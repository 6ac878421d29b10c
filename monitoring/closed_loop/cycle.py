"""One closed-loop cycle: read, judge, decide, and (maybe) retrain, gate and promote.

1. reference = the training profile in the metadata of the version behind ``@production``
   (read from the registry, so it always matches what the API serves);
2. current = the prediction-log window, restricted to rows that production version served:
   traffic judged against its own model's profile, and rows a retrain already used (served by
   an older version) never trigger a second retrain;
3. drift is judged by ``monitoring.drift`` (same tests, corrections, thresholds);
4. drift in any feature or in the predictions, AND at least ``min_labelled`` of those rows
   with feedback, AND no refusal remembered for this data window nor a backoff in force
   (``monitoring.closed_loop.memory``) -> the training data plus the labelled rows are written
   to a new CSV beside the training data, a model is trained on it and promoted if it passes
   the gate. A refused cycle deletes its CSV, tags the refused version and remembers the
   window; a failed training deletes its CSV too.

Where a model that passed the gate goes is ``closed_loop.promotion``: ``direct`` moves
``@production`` at once (the loop before progressive delivery); ``shadow`` (the default) and
``canary`` start it as ``@challenger`` (churn.challenger) in shadow, or in canary at
``rollout.canary_share``. While a challenger is in shadow or canary, a cycle judges it on the
live paired evidence instead (monitoring.rollout): promote -> @production (the gated export
path), reject -> the rollout ends, undecided -> wait. No retrain starts while one is judged.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from churn.config import Config
from churn.data import read_table
from monitoring.closed_loop.decision import consult_memory, decide, labelled_rows
from monitoring.closed_loop.memory import Backoff, RegistryMemory, window_digest
from monitoring.closed_loop.results import (
    EXIT_GATE_REFUSED,
    EXIT_INSUFFICIENT,
    ClosedLoopError,
    CycleResult,
    Decision,
)
from monitoring.drift.detection import run_drift_check
from monitoring.drift.sources import (
    VERSION_COLUMN,
    ReferenceSource,
    load_current_from_log,
    reference_from_metadata,
)


def say(message: str) -> None:
    print(f"closed_loop: {message}", flush=True)


def production_reference(config: Config, alias: str = "production") -> tuple[str, ReferenceSource]:
    """The version behind `alias` and its training profile (metadata.json from its run)."""
    from churn.promotion import bundle_metadata
    from churn.registry import client, version_by_alias

    name = config.mlflow.model_name
    version = version_by_alias(client(config.tracking_uri), name, alias)
    if version is None:
        raise ClosedLoopError(
            f"model '{name}' has no '{alias}' alias at {config.tracking_uri}; "
            "train and promote a first version (train.py, promote_model.py)"
        )
    metadata = bundle_metadata(config, version)
    with tempfile.TemporaryDirectory(prefix="closed-loop-") as tmp:
        path = Path(tmp) / "metadata.json"
        path.write_text(json.dumps(metadata), encoding="utf-8")
        return version, reference_from_metadata(path)


def served_window(database_url: str, since: timedelta, version: str) -> tuple[pd.DataFrame, str]:
    """Prediction-log rows of the last `since` that `version` served."""
    frame, label = load_current_from_log(database_url, since)
    if not frame.empty:
        frame = frame[frame[VERSION_COLUMN].astype(str) == version].reset_index(drop=True)
    return frame, f"{label}, served by v{version}"


def write_retraining_set(config: Config, labelled: pd.DataFrame, now: datetime) -> Path:
    """Training data + labelled log rows, written atomically to data/retrain-<UTC stamp>.csv."""
    original_path = config.data.train_path
    original = read_table(original_path)
    extra = labelled.reindex(columns=original.columns)
    combined = pd.concat([original, extra], ignore_index=True)
    target = original_path.parent / f"retrain-{now.strftime('%Y%m%dT%H%M%SZ')}.csv"
    tmp = target.with_suffix(".csv.tmp")
    try:
        combined.to_csv(tmp, index=False)
        tmp.replace(target)  # a reader never sees half a file
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ClosedLoopError(f"{target}: cannot write the retraining set ({exc})") from exc
    return target


def retrain_config(config: Config, train_path: Path, artifacts_dir: Path) -> Config:
    """The same config, trained on `train_path`, everything it exports staged under
    `artifacts_dir` (a temporary directory: what a refused cycle exported vanishes with it)."""
    export: dict[str, Path] = {"artifacts_dir": artifacts_dir}
    if "candidates_dir" in type(config.export).model_fields:  # where training puts candidates
        export["candidates_dir"] = artifacts_dir / "candidates"
    return config.model_copy(
        update={
            "data": config.data.model_copy(update={"train_path": train_path}),
            "export": config.export.model_copy(update=export),
        }
    )


def publish_bundle(staged: Path, artifacts_dir: Path) -> None:
    """Copy a promoted bundle over the local one, metadata.json last (it names the files)."""
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in staged.iterdir() if p.is_file())  # not the candidates/ directory
    for path in [p for p in files if p.name != "metadata.json"] + [staged / "metadata.json"]:
        tmp = artifacts_dir / f".{path.name}.tmp"
        shutil.copyfile(path, tmp)
        tmp.replace(artifacts_dir / path.name)


def retrain_and_promote(config: Config, data_path: Path, result: CycleResult) -> CycleResult:
    """Train on `data_path`, gate and promote; one line per step; the updated result."""
    from churn.promotion import GateFailed, promote
    from churn.training import train

    with tempfile.TemporaryDirectory(prefix="closed-loop-bundle-") as staging:
        candidate_config = retrain_config(config, data_path, Path(staging))
        trained = train(candidate_config)
        result = result.but(
            candidate_version=trained.model_version, candidate_auc=trained.metrics["val_auc"]
        )
        say(
            f"retrained {trained.model_name} v{trained.model_version} on {data_path} "
            f"(val AUC {trained.metrics['val_auc']:.4f})"
        )
        mode = config.closed_loop.promotion
        try:
            if mode != "direct":
                return start_rollout(candidate_config, trained.model_version, mode, result)
            promotion = promote(candidate_config, version=trained.model_version)
        except GateFailed as exc:
            gate = f"{exc.decision.summary()}: {exc}"
            say(f"gate failed, production stays v{result.production_version}: {gate}")
            return result.but(gate=gate, exit_code=EXIT_GATE_REFUSED)
        assert promotion.decision is not None
        result = result.but(
            gate=promotion.decision.summary(), promoted=promotion.changed, destination="production"
        )
        publish_bundle(Path(staging), config.export.artifacts_dir)
    was = f" (was v{promotion.previous})" if promotion.previous else ""
    say(f"promoted {trained.model_name} v{promotion.version} to @production{was}: {result.gate}")
    return result


def start_rollout(config: Config, version: str, mode: str, result: CycleResult) -> CycleResult:
    """The gated, verified version to @challenger (in shadow, then canary if `mode` says so);
    GateFailed propagates like a refused promotion."""
    from churn.challenger import set_canary, start_challenger

    started = start_challenger(
        config,
        version,
        reason=f"retrained by the closed loop ({result.decision.reason})",
        by="closed_loop",
        replace=True,
    )
    assert started.promotion.decision is not None
    stage = "shadow"
    if mode == "canary":
        share = config.rollout.canary_share
        set_canary(
            config, share, "the closed loop starts retrained models in canary", "closed_loop"
        )
        stage = f"canary at {share:.0%}"
    say(
        f"v{version} passed the gate and is @challenger in {stage} beside @production "
        f"v{result.production_version}; it moves on only on live evidence"
    )
    return result.but(gate=started.promotion.decision.summary(), destination=stage.split()[0])


def judge_challenger(config: Config, database_url: str, result: CycleResult) -> CycleResult | None:
    """Judge an active rollout on its evidence and act on the verdict; None when none is active.

    The registry is read fail-closed: an outage raises, never reads as "no rollout".
    """
    from churn.challenger import abort_challenger, promote_challenger
    from churn.registry import client
    from churn.rollout import ROLLED_BACK, read_challenger
    from monitoring.rollout.evaluate import evaluate

    state = read_challenger(client(config.tracking_uri), config.mlflow.model_name)
    if state is None or state.record is None:
        return None
    version = state.version
    if state.record.stage == ROLLED_BACK:  # the API's guardrails ended it: clear the alias
        abort_challenger(config, state.record.reason, by="closed_loop")
        why = f"rolled back by a guardrail: {state.record.reason}"
        say(f"challenger v{version} was {why}; @challenger removed")
        return result.but(
            candidate_version=version,
            rollout=f"rejected v{version}: {why}",
            exit_code=EXIT_GATE_REFUSED,
        )
    if not state.record.active:
        return None
    evaluation = evaluate(config, database_url)
    decision = evaluation.decision
    why = "; ".join(decision.reasons)
    if decision.verdict == "promote":
        _, promotion = promote_challenger(config, why, evaluation.summary(), by="closed_loop")
        say(f"promoted challenger v{version} to @production (was v{promotion.previous}): {why}")
        return result.but(
            promoted=True,
            candidate_version=version,
            destination="production",
            rollout=f"promoted v{version}: {why}",
        )
    if decision.verdict == "reject":
        abort_challenger(config, f"rejected on the live evidence: {why}", by="closed_loop")
        say(
            f"rejected challenger v{version}, @production stays v{result.production_version}: {why}"
        )
        return result.but(
            candidate_version=version,
            rollout=f"rejected v{version}: {why}",
            exit_code=EXIT_GATE_REFUSED,
        )
    more = (
        f" (about {decision.labels_needed:,} more labelled pairs)" if decision.labels_needed else ""
    )
    say(f"challenger v{version} in {state.record.stage}: undecided{more}: {why}")
    return result.but(candidate_version=version, rollout=f"undecided v{version}: {why}")


def run_cycle(
    config: Config,
    database_url: str,
    since: timedelta,
    min_labelled: int,
    dry_run: bool = False,
    backoff: Backoff | None = None,
) -> CycleResult:
    """One closed-loop cycle (see the module docstring)."""
    from churn.bundle import sha256_file
    from churn.registry import client

    version, reference = production_reference(config)
    if config.closed_loop.promotion != "direct":
        waiting = CycleResult(
            version, Decision("rollout", "a challenger is in rollout"), "drift not judged", 0
        )
        judged = judge_challenger(config, database_url, waiting)
        if judged is not None:
            return judged.but(finished_at=datetime.now(UTC))
    current, label = served_window(database_url, since, version)
    run = run_drift_check(reference, current, label, min_labelled=min_labelled)
    labelled = labelled_rows(current, reference.features, config.data.target_column)
    decision = decide(run, len(labelled), min_labelled)
    result = CycleResult(version, decision, run.summary_line(), len(current))
    if decision.action == "insufficient":
        say(f"v{version}: {decision.reason}")
        return result.but(exit_code=EXIT_INSUFFICIENT)
    if decision.action != "retrain":
        say(f"v{version}: {decision.reason}")
        return result
    memory = RegistryMemory(client(config.tracking_uri), config.mlflow.model_name)
    remembered = memory.load()
    window = window_digest(
        version, current, sha256_file(config.data.train_path), config.model_dump_json()
    )
    now = datetime.now(UTC)
    decision = consult_memory(decision, remembered, window, backoff or Backoff(), now)
    result = result.but(decision=decision, window=window, refusals=remembered.refusals)
    say(f"v{version}: {decision.reason}")
    if decision.action != "retrain":
        return result
    if dry_run:
        say(f"dry run: would retrain on {config.data.train_path} + {len(labelled):,} rows")
        return result
    data_path = write_retraining_set(config, labelled, now)
    say(f"retraining set {data_path}: {config.data.train_path} + {len(labelled):,} labelled rows")
    try:
        result = retrain_and_promote(config, data_path, result.but(retrain_data=str(data_path)))
    except BaseException:
        data_path.unlink(missing_ok=True)  # a failed cycle leaves nothing behind
        raise
    if result.promoted or result.destination in {"shadow", "canary"}:
        memory.forget()  # the gate passed: refusals and backoff start over
    elif result.exit_code == EXIT_GATE_REFUSED and result.candidate_version is not None:
        data_path.unlink(missing_ok=True)
        remembered = memory.remember_refusal(window, result.candidate_version, now)
        delay = (backoff or Backoff()).delay(remembered.refusals)
        say(
            f"removed {data_path}; v{result.candidate_version} stays registered, tagged as "
            f"refused for this window; next attempt on a new window after {delay}"
        )
        result = result.but(retrain_data=None, refusals=remembered.refusals)
    return result.but(finished_at=datetime.now(UTC))
