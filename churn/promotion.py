"""Gated promotion of registered versions with MLflow aliases, rollback and the model card.

Each alias keeps its history in a registered-model tag (`alias_history.<alias>`, a JSON list
of versions), so `--rollback` knows which version held it before.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from churn.config import Config, GateConfig
from churn.registry import (
    ARCHIVED_TAG,
    BUNDLE_ARTIFACT_PATH,
    RegistryError,
    VersionInfo,
    client,
    describe,
    latest_version,
    version_by_alias,
)

HISTORY_TAG = "alias_history.{alias}"


class GateFailed(RuntimeError):
    """The candidate did not pass the gate; the message gives the numbers."""

    def __init__(self, decision: GateDecision) -> None:
        super().__init__("; ".join(decision.reasons))
        self.decision = decision


@dataclass(frozen=True)
class GateDecision:
    candidate_version: str
    candidate_auc: float
    production_version: str | None
    production_auc: float | None
    min_val_auc: float
    max_auc_drop: float
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def summary(self) -> str:
        base = (
            f"candidate v{self.candidate_version} val_auc={self.candidate_auc:.4f} "
            f"(minimum {self.min_val_auc:.4f})"
        )
        if self.production_version is not None and self.production_auc is not None:
            base += (
                f", production v{self.production_version} val_auc={self.production_auc:.4f}"
                f" (allowed drop {self.max_auc_drop:.4f})"
            )
        return base


@dataclass(frozen=True)
class PromotionResult:
    alias: str
    version: str
    previous: str | None
    decision: GateDecision | None
    changed: bool


def check_gate(
    candidate: VersionInfo, production: VersionInfo | None, gate: GateConfig
) -> GateDecision:
    """AUC at or above the floor, and not more than `max_auc_drop` below production."""
    if "val_auc" not in candidate.metrics:
        raise RegistryError(f"{candidate.name} v{candidate.version}: its run logged no val_auc")
    auc = candidate.metrics["val_auc"]
    prod_auc = production.metrics.get("val_auc") if production is not None else None
    reasons = []
    if auc < gate.min_val_auc:
        reasons.append(f"val_auc {auc:.4f} is below the minimum {gate.min_val_auc:.4f}")
    if prod_auc is not None and production is not None and auc < prod_auc - gate.max_auc_drop:
        reasons.append(
            f"val_auc {auc:.4f} is {prod_auc - auc:.4f} below production v{production.version} "
            f"({prod_auc:.4f}); allowed drop is {gate.max_auc_drop:.4f}"
        )
    return GateDecision(
        candidate_version=candidate.version,
        candidate_auc=auc,
        production_version=production.version if production is not None else None,
        production_auc=prod_auc,
        min_val_auc=gate.min_val_auc,
        max_auc_drop=gate.max_auc_drop,
        reasons=reasons,
    )


def _history(mlflow_client: Any, name: str, alias: str) -> list[str]:
    tags = mlflow_client.get_registered_model(name).tags or {}
    raw = tags.get(HISTORY_TAG.format(alias=alias))
    return [str(v) for v in json.loads(raw)] if raw else []


def _set_history(mlflow_client: Any, name: str, alias: str, history: list[str]) -> None:
    mlflow_client.set_registered_model_tag(
        name, HISTORY_TAG.format(alias=alias), json.dumps(history[-50:])
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def promote(
    config: Config, version: str | None = None, alias: str = "production", dry_run: bool = False
) -> PromotionResult:
    """Move `alias` to `version` (default: newest) if it passes the gate."""
    mlflow_client = client(config.tracking_uri)
    name = config.mlflow.model_name
    candidate = describe(mlflow_client, name, version or latest_version(mlflow_client, name))
    current_version = version_by_alias(mlflow_client, name, alias)
    # The bar is always the production model, whichever alias is being moved.
    production_version = version_by_alias(mlflow_client, name, "production")
    production = (
        describe(mlflow_client, name, production_version)
        if production_version is not None and production_version != candidate.version
        else None
    )
    decision = check_gate(candidate, production, config.gate)
    if not decision.passed:
        raise GateFailed(decision)
    if dry_run or current_version == candidate.version:
        return PromotionResult(alias, candidate.version, current_version, decision, changed=False)

    mlflow_client.set_registered_model_alias(name, alias, candidate.version)
    mlflow_client.set_model_version_tag(name, candidate.version, f"{alias}.promoted_at", _now())
    mlflow_client.delete_model_version_tag(
        name, candidate.version, ARCHIVED_TAG
    ) if ARCHIVED_TAG in candidate.tags else None
    if current_version is not None:
        mlflow_client.set_model_version_tag(name, current_version, ARCHIVED_TAG, "true")
        mlflow_client.set_model_version_tag(name, current_version, f"{alias}.archived_at", _now())
    history = [v for v in _history(mlflow_client, name, alias) if v != candidate.version]
    if current_version is not None and (not history or history[-1] != current_version):
        history.append(current_version)
    _set_history(mlflow_client, name, alias, [*history, candidate.version])
    return PromotionResult(alias, candidate.version, current_version, decision, changed=True)


def rollback(config: Config, alias: str = "production") -> PromotionResult:
    """Return `alias` to the version that held it before the current one (no gate)."""
    mlflow_client = client(config.tracking_uri)
    name = config.mlflow.model_name
    current = version_by_alias(mlflow_client, name, alias)
    history = _history(mlflow_client, name, alias)
    if current is None:
        raise RegistryError(f"model '{name}' has no '{alias}' alias to roll back")
    if history and history[-1] == current:
        history = history[:-1]
    if not history:
        raise RegistryError(f"model '{name}' has no version that held '{alias}' before v{current}")
    previous = history[-1]
    mlflow_client.set_registered_model_alias(name, alias, previous)
    mlflow_client.set_model_version_tag(name, current, ARCHIVED_TAG, "true")
    mlflow_client.set_model_version_tag(name, current, f"{alias}.rolled_back_at", _now())
    if ARCHIVED_TAG in describe(mlflow_client, name, previous).tags:
        mlflow_client.delete_model_version_tag(name, previous, ARCHIVED_TAG)
    mlflow_client.set_model_version_tag(name, previous, f"{alias}.restored_at", _now())
    _set_history(mlflow_client, name, alias, history)
    return PromotionResult(alias, previous, current, None, changed=True)


def bundle_metadata(config: Config, version: str) -> dict[str, Any]:
    """The metadata.json logged with a version's run."""
    import mlflow

    mlflow_client = client(config.tracking_uri)
    info = describe(mlflow_client, config.mlflow.model_name, version)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=info.run_id,
            artifact_path=f"{BUNDLE_ARTIFACT_PATH}/metadata.json",
            dst_path=tmp,
            tracking_uri=config.tracking_uri,
        )
        return dict(json.loads(Path(local).read_text()))


def write_model_card(config: Config, version: str, alias: str, path: Path) -> Path:
    """Regenerate MODEL_CARD.md from the promoted version's own records."""
    from churn.model_card import render_model_card

    text = render_model_card(bundle_metadata(config, version), alias=alias, generated_at=_now())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
