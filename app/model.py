"""A served model: a verified bundle, its predictor, its request models and thresholds.

Everything a request needs hangs off one immutable ``ServedModel``; a hot reload builds a new
one beside the old and swaps a single reference, so a request in flight keeps the model it
started with and never sees half of each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, TypeAdapter, ValidationError

from app.batcher import Row
from app.schemas import (
    build_batch_model,
    build_batch_validator,
    build_customer_model,
    build_customer_validator,
)
from app.settings import Settings
from churn.bundle import BundleError, ModelBundle, describe_validation_error, load_bundle
from churn.config import RiskConfig
from churn.inference import BackendError, Predictor, choose_predictor
from churn.risk import Thresholds, risk_tiers
from churn.schema import FeatureSchema
from churn.stores import DEFAULT_TRACKING_URI

logger = logging.getLogger("app.model")


class ModelLoadError(RuntimeError):
    """A model could not be loaded or failed verification; the message says which and why."""


@dataclass(frozen=True)
class Answers:
    """Answers for consecutive rows as plain lists, computed once per model call (vectorised
    over every request of a micro-batch) and sliced per request."""

    probabilities: list[float]  # rounded to 4 places
    decisions: list[bool]
    tiers: list[str]
    # the features the model saw, by name (for the prediction log: transposed once)
    columns: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.probabilities)

    def __getitem__(self, part: slice) -> Answers:
        return Answers(
            self.probabilities[part],
            self.decisions[part],
            self.tiers[part],
            {name: values[part] for name, values in self.columns.items()},
        )


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    run_id: str
    backend: str
    source: str
    metadata: dict[str, Any]
    schema: FeatureSchema
    predictor: Predictor
    thresholds: Thresholds
    customer_model: type[BaseModel]
    batch_model: type[BaseModel]
    # the same requests as plain dicts, for the fast path (app.schemas)
    customer_validator: TypeAdapter[Any]
    batch_validator: TypeAdapter[Any]
    backend_reason: str = ""
    # feature -> categories seen in training, for free-text features only
    known_categories: dict[str, frozenset[str]] = field(default_factory=dict)

    @property
    def labels(self) -> tuple[str, str, str, str]:
        return (self.name, self.version, self.run_id, self.backend)

    def predict_rows(self, rows: list[Row]) -> Answers:
        """Answers for rows in feature order (runs on the inference thread)."""
        columns = {name: [row[name] for row in rows] for name in self.schema.names}
        probabilities = self.predictor.predict_proba(columns)
        return Answers(
            probabilities=np.round(probabilities, 4).tolist(),
            decisions=(probabilities >= self.thresholds.decision).tolist(),
            tiers=self.tiers(probabilities).tolist(),
            columns=columns,
        )

    def tiers(self, probabilities: np.ndarray) -> np.ndarray:
        return risk_tiers(probabilities, self.thresholds.high, self.thresholds.medium)

    def public_metadata(self) -> dict[str, Any]:
        """Bundle metadata for GET /model, without the large reference profile."""
        meta = {k: v for k, v in self.metadata.items() if k != "reference_profile"}
        meta.update(
            backend=self.backend,
            backend_reason=self.backend_reason,
            source=self.source,
            thresholds={
                "high": self.thresholds.high,
                "medium": self.thresholds.medium,
                "decision_threshold": self.thresholds.decision,
            },
        )
        return meta


def thresholds_for(settings: Settings, metadata: dict[str, Any]) -> Thresholds:
    """The bundle's "risk" section with the environment's overrides on top, validated with
    the config's RiskConfig rules (the same ones training applied to config.yaml)."""
    overrides = {
        "high": settings.risk_high,
        "medium": settings.risk_medium,
        "decision_threshold": settings.decision_threshold,
    }
    try:
        risk = RiskConfig.model_validate(metadata.get("risk"))
    except ValidationError as exc:
        raise ModelLoadError(
            f"bundle metadata: {describe_validation_error(exc, prefix='risk')}"
        ) from None
    merged = {**risk.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        risk = RiskConfig.model_validate(merged)
    except ValidationError as exc:
        raise ModelLoadError(
            f"risk thresholds: {describe_validation_error(exc)}; check RISK_HIGH, RISK_MEDIUM "
            "and DECISION_THRESHOLD against the bundle's risk section"
        ) from None
    return Thresholds(high=risk.high, medium=risk.medium, decision=risk.decision_threshold)


def fetch_bundle(settings: Settings) -> tuple[ModelBundle, str]:
    """The bundle named by MODEL_URI (registry) or MODEL_PATH (disk): signature, metadata and
    checksums verified with the settings' signing key before anything is unpickled."""
    key = settings.signing_key
    try:
        if settings.model_uri:
            from churn.registry import download_bundle

            tracking = settings.mlflow_tracking_uri or DEFAULT_TRACKING_URI
            return download_bundle(tracking, settings.model_uri, key=key), settings.model_uri
        return load_bundle(Path(settings.model_path), key=key), str(settings.model_path)
    except BundleError as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:  # registry/network failures come in many types
        where = settings.model_uri or settings.model_path
        raise ModelLoadError(
            f"{where}: cannot fetch the model ({type(exc).__name__}: {exc})"
        ) from None


def load_model(settings: Settings) -> ServedModel:
    """Fetch, verify and prepare a model (CPU and I/O: call it off the event loop)."""
    bundle, source = fetch_bundle(settings)
    try:
        schema = bundle.schema
        thresholds = thresholds_for(settings, bundle.metadata)
        predictor, reason = choose_predictor(bundle, settings.inference_backend, thresholds)
    except ModelLoadError:
        raise
    except BackendError as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:  # a pipeline that cannot predict is a bad bundle, not a crash
        raise ModelLoadError(
            f"{bundle.directory}: the model fails on sample rows ({type(exc).__name__}: {exc})"
        ) from None
    customer = build_customer_model(schema)
    known = {
        s.name: frozenset(s.categories or [])
        for s in schema.features
        if s.kind == "categorical" and not s.allowed
    }
    return ServedModel(
        name=bundle.name,
        version=bundle.version,
        run_id=str(bundle.metadata.get("run_id", "")),
        backend=predictor.backend,
        backend_reason=reason,
        source=source,
        metadata=bundle.metadata,
        schema=schema,
        predictor=predictor,
        thresholds=thresholds,
        customer_model=customer,
        batch_model=build_batch_model(customer, settings.max_batch_size, schema),
        customer_validator=build_customer_validator(schema),
        batch_validator=build_batch_validator(schema, settings.max_batch_size),
        known_categories=known,
    )
