"""The operator's actions on a rollout: start, canary, promote, abort (rollout.py calls these).

Every action runs under the registry's promotion lock (churn.registry.promotion_lock), so it
never interleaves with a promotion, a rollback or another rollout action; and every move of an
alias goes through churn.promotion's gated path:

- ``start_challenger``: the gate is judged against @production (and recorded on the version,
  passed or refused), the version's bundle is downloaded and its signature and checksums
  verified, then @challenger moves to it with a new rollout record in ``shadow`` whose
  guardrails come from the config's ``rollout.guardrails``. Nothing is exported: the API loads
  the challenger from the registry.
- ``set_canary``: the record moves to ``canary`` at a share (or changes the share).
- ``promote_challenger``: the same gated promotion as ``promote_model.py`` (gate, verify,
  export to artifacts/ with release.json, model card), then the record says ``promoted`` and
  @challenger is removed.
- ``abort_challenger``: the record says ``rejected`` with the reason; @challenger is removed.

The API (the ``dual`` side) follows @production, @challenger and the record, so none of these
needs a restart; a challenger whose record is ended is not used even before its alias goes.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churn.config import Config
from churn.promotion import PRODUCTION, PromotionResult, promote_locked
from churn.registry import (
    client,
    latest_version,
    promotion_lock,
    registry_call,
    version_by_alias,
)
from churn.rollout import (
    CANARY,
    CHALLENGER,
    FINAL,
    PROMOTED,
    REJECTED,
    ROLLOUT_TAG,
    ChallengerState,
    RolloutError,
    RolloutRecord,
    read_challenger,
    write_record,
)


def operator() -> str:
    """Who acts, for the record's history: user@host, or ROLLOUT_ACTOR (CI, the loop)."""
    return os.environ.get("ROLLOUT_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


@dataclass(frozen=True)
class StartResult:
    record: RolloutRecord
    promotion: PromotionResult
    replaced: RolloutRecord | None = None  # the active rollout this one ended, if any


def _drop_alias(mlflow_client: Any, name: str) -> None:
    registry_call(
        f"removing {name}@{CHALLENGER}",
        lambda: mlflow_client.delete_registered_model_alias(name, CHALLENGER),
    )


def _active(state: ChallengerState | None) -> RolloutRecord | None:
    if state is None or state.record is None or not state.record.active:
        return None
    return state.record


def start_challenger(
    config: Config,
    version: str | None = None,
    reason: str = "started by the operator",
    by: str | None = None,
    replace: bool = False,
) -> StartResult:
    """Put a gated, verified version (default: the newest) on @challenger in shadow.

    Refuses (RolloutError) while another challenger is in shadow or canary, unless `replace`:
    then that rollout ends as rejected ("replaced by vN") once the new one is in place.
    GateFailed when the gate refuses the version, PromotionError when its bundle fails
    verification: in both cases nothing moved.
    """
    by = by or operator()
    mlflow_client = client(config.tracking_uri)
    name = config.mlflow.model_name
    with promotion_lock(mlflow_client, name, "start a rollout (@challenger)"):
        state = read_challenger(mlflow_client, name)
        active = _active(state)
        if active is not None and not replace:
            raise RolloutError(
                f"{name} v{active.version} is already in rollout ({active.stage}); "
                "promote or abort it first"
            )
        champion = version_by_alias(mlflow_client, name, PRODUCTION)
        target = str(version or latest_version(mlflow_client, name))
        if target == champion:
            raise RolloutError(f"{name} v{target} is @{PRODUCTION} already: nothing to roll out")
        record = RolloutRecord.start(
            target,
            champion,
            reason,
            by,
            guardrails=config.rollout.guardrails.model_dump(),
        )
        if state is not None and state.version == target:
            if active is not None:
                raise RolloutError(f"{name} v{target} is already in rollout ({active.stage})")
            # Its earlier rollout ended: clear the alias so that the gated move (and its
            # bundle check) runs again rather than finding the alias in place.
            _drop_alias(mlflow_client, name)
        promotion = promote_locked(
            config, mlflow_client, target, CHALLENGER, version_tags={ROLLOUT_TAG: record.to_json()}
        )
        replaced = None
        if active is not None:  # only now that the new one is in place
            replaced = active.moved(REJECTED, f"replaced by v{target}", by)
            write_record(mlflow_client, name, replaced)
    return StartResult(record, promotion, replaced)


def _locked_record(mlflow_client: Any, name: str) -> tuple[ChallengerState, RolloutRecord]:
    state = read_challenger(mlflow_client, name)
    if state is None:
        raise RolloutError(f"model '{name}' has no @{CHALLENGER}: start a rollout first")
    if state.record is None:
        raise RolloutError(f"{name}@{CHALLENGER} v{state.version}: {state.problem}")
    return state, state.record


def set_canary(
    config: Config,
    share: float,
    reason: str = "canary by the operator",
    by: str | None = None,
    paired: bool | None = None,
) -> RolloutRecord:
    """The active rollout in canary at `share` (0 < share <= 1), paired or not (None: as the
    record was; a new record is paired); RolloutError otherwise."""
    if not 0.0 < share <= 1.0:
        raise RolloutError(f"--share must be in (0, 1], got {share}")
    mlflow_client = client(config.tracking_uri)
    name = config.mlflow.model_name
    with promotion_lock(mlflow_client, name, f"canary @{CHALLENGER} at {share:g}"):
        _, record = _locked_record(mlflow_client, name)
        moved = record.moved(CANARY, reason, by or operator(), share=share, paired=paired)
        write_record(mlflow_client, name, moved)
    return moved


def record_evidence(config: Config, version: str, evidence: dict[str, Any]) -> RolloutRecord | None:
    """Keep an evaluation's summary in the record of `version` if it is still @challenger
    (read just before writing, so a rollback the API wrote meanwhile is kept)."""
    mlflow_client = client(config.tracking_uri)
    name = config.mlflow.model_name
    state = read_challenger(mlflow_client, name)
    if state is None or state.record is None or state.version != version:
        return None
    updated = state.record.with_evidence(evidence)
    write_record(mlflow_client, name, updated)
    return updated


def promote_challenger(
    config: Config,
    reason: str,
    evidence: dict[str, Any] | None = None,
    by: str | None = None,
    model_card: Path | None = None,
) -> tuple[RolloutRecord, PromotionResult]:
    """Promote @challenger to @production through the gated export path; record -> promoted;
    @challenger removed. A rerun after a failure half-way finishes the job."""
    by = by or operator()
    mlflow_client = client(config.tracking_uri)
    name = config.mlflow.model_name
    with promotion_lock(mlflow_client, name, f"promote @{CHALLENGER} to @{PRODUCTION}"):
        state, record = _locked_record(mlflow_client, name)
        if record.stage in FINAL and record.stage != PROMOTED:
            raise RolloutError(
                f"{name} v{record.version} ended as {record.stage} ({record.reason}); "
                "start a new rollout to promote it"
            )
        result = promote_locked(config, mlflow_client, state.version, PRODUCTION, model_card)
        if record.stage != PROMOTED:
            record = record.moved(PROMOTED, reason, by, evidence=evidence)
            write_record(mlflow_client, name, record)
        _drop_alias(mlflow_client, name)
    return record, result


def abort_challenger(
    config: Config, reason: str, by: str | None = None
) -> tuple[RolloutRecord | None, str]:
    """End the rollout as rejected and remove @challenger. Returns (the record, or None when
    the version had no usable one; the version). A rollout that already ended keeps its
    record (a rolled-back one stays rolled_back); only the alias goes."""
    mlflow_client = client(config.tracking_uri)
    name = config.mlflow.model_name
    with promotion_lock(mlflow_client, name, f"abort @{CHALLENGER}"):
        state = read_challenger(mlflow_client, name)
        if state is None:
            raise RolloutError(f"model '{name}' has no @{CHALLENGER}: nothing to abort")
        record = state.record
        if record is not None and record.active:
            record = record.moved(REJECTED, reason, by or operator())
            write_record(mlflow_client, name, record)
        _drop_alias(mlflow_client, name)
    return record, state.version


def rollout_status(config: Config) -> tuple[str | None, ChallengerState | None]:
    """(@production's version, what @challenger holds)."""
    mlflow_client = client(config.tracking_uri)
    name = config.mlflow.model_name
    return version_by_alias(mlflow_client, name, PRODUCTION), read_challenger(mlflow_client, name)
