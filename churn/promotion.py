"""Gated promotion of registered versions with MLflow aliases, rollback, and what is served.

A promotion (or rollback) of `production` is the only thing that writes `export.artifacts_dir`
(what `make serve` and the API image serve): it downloads the version's bundle from its run,
verifies it, and replaces the directory's files together with `release.json`. Training writes
candidates elsewhere (`export.candidates_dir`), so a refused candidate is never served.

Order of work, so that a failure leaves nothing half-done:
1. take the registry lock (one promotion of a model at a time; the loser changes nothing);
2. judge the gate and record its verdict as tags on the candidate version (passed or refused);
3. fetch and verify the bundle, stage it beside `artifacts/`, render the model card: every
   check that can fail runs here, before anything moves;
4. move the alias and its history, then swap the staged files in (renames on one disk). If
   anything fails after the alias moved, the alias and its history are put back.

Each alias keeps its history in a registered-model tag (`alias_history.<alias>`, a JSON list
of versions), so a rollback knows which version held it before.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from churn.bundle import METADATA_FILE, BundleError, load_bundle
from churn.config import Config, GateConfig
from churn.registry import (
    ARCHIVED_TAG,
    BUNDLE_ARTIFACT_PATH,
    RegistryError,
    VersionInfo,
    client,
    describe,
    fetch_run_bundle,
    latest_version,
    promotion_lock,
    read_json_artifact,
    registered_model_tags,
    registry_call,
    unavailable,
    version_by_alias,
)

HISTORY_TAG = "alias_history.{alias}"
PRODUCTION = "production"
RELEASE_FILE = "release.json"
GATE_METRIC = "val_auc"
# Verdict tags set on every version the gate judges, passed or refused.
GATE_TAGS = (
    "gate.verdict",
    "gate.val_auc",
    "gate.production_version",
    "gate.reasons",
    "gate.checked_at",
)


class PromotionError(RuntimeError):
    """Promotion cannot proceed (bad bundle, unjudgeable production, unwritable output)."""


class GateFailed(RuntimeError):
    """The candidate did not pass the gate; the message gives the numbers."""

    def __init__(self, decision: GateDecision) -> None:
        super().__init__("; ".join(decision.reasons))
        self.decision = decision


@dataclass(frozen=True)
class GateDecision:
    candidate_version: str
    candidate_auc: float | None  # as logged (NaN stays NaN); None when the run has none
    production_version: str | None
    production_auc: float | None
    min_val_auc: float
    max_auc_drop: float
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def summary(self) -> str:
        auc = _fmt(self.candidate_auc)
        base = f"candidate v{self.candidate_version} val_auc={auc} (minimum {self.min_val_auc:.4f})"
        if self.production_version is not None and self.production_auc is not None:
            base += (
                f", production v{self.production_version} val_auc={self.production_auc:.4f}"
                f" (allowed drop {self.max_auc_drop:.4f})"
            )
        return base

    def tags(self, checked_at: str) -> dict[str, str]:
        """The verdict as model-version tags (GATE_TAGS)."""
        return {
            "gate.verdict": "passed" if self.passed else "refused",
            "gate.val_auc": _fmt(self.candidate_auc),
            "gate.production_version": self.production_version or "none",
            "gate.reasons": "; ".join(self.reasons) or "none",
            "gate.checked_at": checked_at,
        }


@dataclass(frozen=True)
class PromotionResult:
    alias: str
    version: str
    previous: str | None
    decision: GateDecision | None
    changed: bool
    # Where the served bundle and the model card went (production only; None otherwise).
    exported_to: Path | None = None
    model_card: Path | None = None


def _fmt(value: float | None) -> str:
    """4 decimals; NaN and infinities as themselves, an absent metric as "missing"."""
    return "missing" if value is None else f"{value:.4f}"


def _finite_metric(info: VersionInfo) -> float | None:
    """The version's val_auc, or None when it is missing or not a finite number."""
    value = info.metrics.get(GATE_METRIC)
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def check_gate(
    candidate: VersionInfo, production: VersionInfo | None, gate: GateConfig
) -> GateDecision:
    """AUC at or above the floor, and not more than `max_auc_drop` below production.

    A candidate without a finite val_auc is refused (never judged as fine). A production
    version without one makes the bar unknowable: that is an error, not a skipped check.
    """
    auc = _finite_metric(candidate)
    prod_auc = None
    if production is not None:
        prod_auc = _finite_metric(production)
        if prod_auc is None:
            raise PromotionError(
                f"production {production.name} v{production.version} has no finite "
                f"{GATE_METRIC} (got {production.metrics.get(GATE_METRIC)!r}); the gate cannot "
                "compare against it: fix or roll back production first"
            )
    reasons = []
    if auc is None:
        raw = candidate.metrics.get(GATE_METRIC)
        reasons.append(
            f"{GATE_METRIC} is missing from the run"
            if raw is None
            else f"{GATE_METRIC} is {raw!r}, not a finite number"
        )
    else:
        if auc < gate.min_val_auc:
            reasons.append(f"val_auc {auc:.4f} is below the minimum {gate.min_val_auc:.4f}")
        if prod_auc is not None and production is not None and auc < prod_auc - gate.max_auc_drop:
            reasons.append(
                f"val_auc {auc:.4f} is {prod_auc - auc:.4f} below production "
                f"v{production.version} ({prod_auc:.4f}); allowed drop is {gate.max_auc_drop:.4f}"
            )
    return GateDecision(
        candidate_version=candidate.version,
        candidate_auc=candidate.metrics.get(GATE_METRIC),
        production_version=production.version if production is not None else None,
        production_auc=prod_auc,
        min_val_auc=gate.min_val_auc,
        max_auc_drop=gate.max_auc_drop,
        reasons=reasons,
    )


def _history(mlflow_client: Any, name: str, alias: str) -> list[str]:
    raw = registered_model_tags(mlflow_client, name).get(HISTORY_TAG.format(alias=alias))
    return [str(v) for v in json.loads(raw)] if raw else []


def _set_history(mlflow_client: Any, name: str, alias: str, history: list[str]) -> None:
    mlflow_client.set_registered_model_tag(
        name, HISTORY_TAG.format(alias=alias), json.dumps(history[-50:])
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- staging


@dataclass
class _Staged:
    """A verified bundle and a rendered model card, ready to be moved into place."""

    bundle_dir: Path
    card_tmp: Path | None
    card_path: Path | None
    workdir: Path


@contextlib.contextmanager
def _staging_area(config: Config, export: bool) -> Iterator[Path]:
    """A scratch directory; inside artifacts_dir when exporting, so the final moves are renames
    on one disk (and a full disk shows up here, before the alias moves)."""
    if export:
        target = config.export.artifacts_dir
        try:
            target.mkdir(parents=True, exist_ok=True)
            path = Path(tempfile.mkdtemp(prefix=".staging-", dir=target))
        except OSError as exc:
            raise PromotionError(f"{target}: cannot write there ({exc.strerror})") from None
    else:
        path = Path(tempfile.mkdtemp(prefix="promotion-check-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stage(
    config: Config,
    info: VersionInfo,
    alias: str,
    workdir: Path,
    model_card: Path | None,
) -> _Staged:
    """Fetch and verify the version's bundle; render its model card beside its destination."""
    bundle_dir = fetch_run_bundle(config.tracking_uri, info.run_id, workdir / "download")
    try:
        bundle = load_bundle(bundle_dir)
    except BundleError as exc:
        raise PromotionError(
            f"{info.name} v{info.version}: bundle failed verification: {exc}"
        ) from None
    if bundle.version != info.version or bundle.metadata.get("run_id") != info.run_id:
        raise PromotionError(
            f"{info.name} v{info.version}: its run's bundle says v{bundle.version} of run "
            f"{bundle.metadata.get('run_id')}; refusing to serve a bundle of another version"
        )
    card_tmp = None
    if model_card is not None:
        from churn.model_card import render_model_card

        text = render_model_card(bundle.metadata, alias=alias, generated_at=_now())
        try:
            model_card.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{model_card.name}.", dir=model_card.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            card_tmp = Path(name)
        except OSError as exc:
            raise PromotionError(
                f"{model_card}: cannot write the model card ({exc.strerror})"
            ) from None
    return _Staged(bundle_dir, card_tmp, model_card, workdir)


def _bundle_files(bundle_dir: Path) -> list[Path]:
    """Every file of the bundle in publishing order: the payload the metadata lists, then
    metadata.json, then the rest (the signature), so a reader that catches the swap half-way
    sees a checksum or signature mismatch and refuses, never a mix it would accept."""
    metadata = json.loads((bundle_dir / METADATA_FILE).read_text(encoding="utf-8"))
    listed = set(metadata.get("files", {}))
    files = sorted(p for p in bundle_dir.iterdir() if p.is_file())
    payload = [p for p in files if p.name in listed]
    rest = [p for p in files if p.name not in listed and p.name != METADATA_FILE]
    return [*payload, bundle_dir / METADATA_FILE, *rest]


def _publish(staged: _Staged, artifacts_dir: Path, release: dict[str, Any]) -> None:
    """Move the staged bundle into artifacts_dir, drop files of the old bundle, write
    release.json last (it says which version the files are)."""
    keep = {RELEASE_FILE}
    if staged.card_path is not None:
        keep.add(staged.card_path.name)
    new_names = set()
    for path in _bundle_files(staged.bundle_dir):
        os.chmod(path, 0o644)  # a non-root server must read what promotion wrote
        os.replace(path, artifacts_dir / path.name)
        new_names.add(path.name)
    for old in artifacts_dir.iterdir():
        if old.is_file() and not old.name.startswith(".") and old.name not in new_names | keep:
            old.unlink()
    release_tmp = staged.workdir / RELEASE_FILE
    release_tmp.write_text(json.dumps(release, indent=2) + "\n", encoding="utf-8")
    os.chmod(release_tmp, 0o644)
    os.replace(release_tmp, artifacts_dir / RELEASE_FILE)


def _finish_card(staged: _Staged) -> None:
    if staged.card_tmp is not None and staged.card_path is not None:
        os.chmod(staged.card_tmp, 0o644)
        os.replace(staged.card_tmp, staged.card_path)


def _drop_card(staged: _Staged | None) -> None:
    if staged is not None and staged.card_tmp is not None:
        staged.card_tmp.unlink(missing_ok=True)


def read_release(artifacts_dir: Path) -> dict[str, Any] | None:
    """release.json of an exported directory, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((artifacts_dir / RELEASE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- alias moves


def _move_alias(mlflow_client: Any, alias: str, target: VersionInfo, current: str | None) -> None:
    """Point `alias` at `target` and archive `current`."""
    mlflow_client.set_registered_model_alias(target.name, alias, target.version)
    if ARCHIVED_TAG in target.tags:
        mlflow_client.delete_model_version_tag(target.name, target.version, ARCHIVED_TAG)
    if current is not None and current != target.version:
        mlflow_client.set_model_version_tag(target.name, current, ARCHIVED_TAG, "true")


def _restore_alias(mlflow_client: Any, name: str, alias: str, previous: str | None) -> str:
    """Best effort after a failure: put `alias` back. Returns a note for the error message."""
    try:
        if previous is None:
            mlflow_client.delete_registered_model_alias(name, alias)
        else:
            mlflow_client.set_registered_model_alias(name, alias, previous)
            with contextlib.suppress(Exception):
                mlflow_client.delete_model_version_tag(name, previous, ARCHIVED_TAG)
    except Exception as exc:  # reported, never raised over the first error
        return f"; restoring @{alias} failed too ({unavailable('restoring', exc)})"
    return f"; @{alias} restored to {'nothing' if previous is None else 'v' + previous}"


def _apply(
    config: Config,
    mlflow_client: Any,
    alias: str,
    target: VersionInfo,
    current: str | None,
    history: tuple[list[str], list[str]],
    staged: _Staged,
    export: bool,
    version_tags: dict[str, str],
    current_tag: str = "archived_at",
) -> Path | None:
    """Move the alias, then put the staged files in place; undo the alias on any failure.

    `history` is the alias history (before, after) this move.
    """
    name = target.name
    before, after = history
    moved = False
    try:
        _move_alias(mlflow_client, alias, target, current)
        moved = True
        for key, value in version_tags.items():
            mlflow_client.set_model_version_tag(name, target.version, key, value)
        if current is not None and current != target.version:
            mlflow_client.set_model_version_tag(name, current, f"{alias}.{current_tag}", _now())
        _set_history(mlflow_client, name, alias, after)
        exported = None
        if export:
            release = {
                "model_name": name,
                "alias": alias,
                "version": target.version,
                "run_id": target.run_id,
                "promoted_at": _now(),
            }
            _publish(staged, config.export.artifacts_dir, release)
            exported = config.export.artifacts_dir
        _finish_card(staged)
        return exported
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        note = ""
        if moved:
            note = _restore_alias(mlflow_client, name, alias, current)
            with contextlib.suppress(Exception):
                _set_history(mlflow_client, name, alias, before)
        if isinstance(exc, MlflowException | OSError):
            raise PromotionError(f"{unavailable('moving the alias', exc)}{note}") from None
        raise


def promote(
    config: Config,
    version: str | None = None,
    alias: str = PRODUCTION,
    dry_run: bool = False,
    model_card: Path | None = None,
) -> PromotionResult:
    """Move `alias` to `version` (default: newest) if it passes the gate and its bundle checks.

    For `production`, the verified bundle is exported to `export.artifacts_dir` with
    release.json, and the model card is written (to `model_card`, default
    `export.model_card`). A dry run judges and checks, and writes nothing anywhere.
    """
    mlflow_client = client(config.tracking_uri)
    name = config.mlflow.model_name
    lock = (
        contextlib.nullcontext("dry-run")
        if dry_run
        else promotion_lock(mlflow_client, name, f"promote to @{alias}")
    )
    with lock:
        return _promote_locked(config, mlflow_client, version, alias, dry_run, model_card)


def promote_locked(
    config: Config,
    mlflow_client: Any,
    version: str | None,
    alias: str,
    model_card: Path | None = None,
    version_tags: Mapping[str, str] | None = None,
) -> PromotionResult:
    """`promote` for a caller that already holds the promotion lock and has more to do under
    it (churn.challenger: start a rollout, promote a challenger). `version_tags` are set on
    the version together with the alias move, and undone with it if a later step fails."""
    return _promote_locked(config, mlflow_client, version, alias, False, model_card, version_tags)


def _promote_locked(
    config: Config,
    mlflow_client: Any,
    version: str | None,
    alias: str,
    dry_run: bool,
    model_card: Path | None,
    version_tags: Mapping[str, str] | None = None,
) -> PromotionResult:
    name = config.mlflow.model_name
    candidate = describe(mlflow_client, name, version or latest_version(mlflow_client, name))
    current_version = version_by_alias(mlflow_client, name, alias)
    # The bar is always the production model, whichever alias is being moved.
    production_version = version_by_alias(mlflow_client, name, PRODUCTION)
    production = (
        describe(mlflow_client, name, production_version)
        if production_version is not None and production_version != candidate.version
        else None
    )
    decision = check_gate(candidate, production, config.gate)
    if not dry_run:
        verdict = decision.tags(_now())

        def record() -> None:
            for key, value in verdict.items():
                mlflow_client.set_model_version_tag(name, candidate.version, key, value)

        registry_call(f"recording the gate verdict on {name} v{candidate.version}", record)
    if not decision.passed:
        raise GateFailed(decision)

    export = alias == PRODUCTION
    card = (model_card or config.export.model_card) if export else None
    if current_version == candidate.version:
        # Nothing to move; still make sure artifacts/ serves it (e.g. after `make clean`).
        release = read_release(config.export.artifacts_dir) if export else None
        export = export and not dry_run and (release or {}).get("version") != candidate.version
        if not export:
            return PromotionResult(alias, candidate.version, current_version, decision, False)
    staged: _Staged | None = None
    with _staging_area(config, export and not dry_run) as workdir:
        try:
            staged = _stage(config, candidate, alias, workdir, None if dry_run else card)
            if dry_run:
                return PromotionResult(alias, candidate.version, current_version, decision, False)
            if current_version == candidate.version:
                release = {
                    "model_name": name,
                    "alias": alias,
                    "version": candidate.version,
                    "run_id": candidate.run_id,
                    "promoted_at": _now(),
                }
                _publish(staged, config.export.artifacts_dir, release)
                _finish_card(staged)
                return PromotionResult(
                    alias,
                    candidate.version,
                    current_version,
                    decision,
                    False,
                    config.export.artifacts_dir,
                    card,
                )
            before = _history(mlflow_client, name, alias)
            history = [v for v in before if v != candidate.version]
            if current_version is not None and (not history or history[-1] != current_version):
                history.append(current_version)
            exported = _apply(
                config,
                mlflow_client,
                alias,
                candidate,
                current_version,
                (before, [*history, candidate.version]),
                staged,
                export,
                {f"{alias}.promoted_at": _now(), **(version_tags or {})},
            )
        finally:
            _drop_card(staged)
    return PromotionResult(
        alias, candidate.version, current_version, decision, True, exported, card
    )


def rollback(
    config: Config, alias: str = PRODUCTION, model_card: Path | None = None
) -> PromotionResult:
    """Return `alias` to the version that held it before the current one (no gate).

    The previous version's bundle is verified before the alias moves and, for production,
    exported to `export.artifacts_dir` like a promotion.
    """
    mlflow_client = client(config.tracking_uri)
    name = config.mlflow.model_name
    with promotion_lock(mlflow_client, name, f"roll back @{alias}"):
        current = version_by_alias(mlflow_client, name, alias)
        if current is None:
            raise RegistryError(f"model '{name}' has no '{alias}' alias to roll back")
        before = _history(mlflow_client, name, alias)
        history = list(before)
        if history and history[-1] == current:
            history = history[:-1]
        if not history:
            raise RegistryError(
                f"model '{name}' has no version that held '{alias}' before v{current}"
            )
        previous = describe(mlflow_client, name, history[-1])
        export = alias == PRODUCTION
        card = (model_card or config.export.model_card) if export else None
        staged: _Staged | None = None
        with _staging_area(config, export) as workdir:
            try:
                staged = _stage(config, previous, alias, workdir, card)
                # The history passed in is what it becomes: the current version drops off.
                exported = _apply(
                    config,
                    mlflow_client,
                    alias,
                    previous,
                    current,
                    (before, history),
                    staged,
                    export,
                    {f"{alias}.restored_at": _now()},
                    current_tag="rolled_back_at",
                )
            finally:
                _drop_card(staged)
    return PromotionResult(alias, previous.version, current, None, True, exported, card)


def bundle_metadata(config: Config, version: str) -> dict[str, Any]:
    """The metadata.json logged with a version's run."""
    info = describe(client(config.tracking_uri), config.mlflow.model_name, version)
    return read_json_artifact(
        config.tracking_uri, info.run_id, f"{BUNDLE_ARTIFACT_PATH}/{METADATA_FILE}"
    )
