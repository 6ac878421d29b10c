"""The feature schema: declared in config, checked at training, saved with the model.

The API builds its request model from it and the drift job reads feature kinds from it, so a
model retrained on another feature list is served and monitored with no code change.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from churn.config import Config, FeatureRule


class FeatureSpec(BaseModel):
    """One input feature: its kind, domain rules and what training observed."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["numeric", "categorical"]
    # Domain rules (from config): enforced on requests.
    min: float | None = None
    max: float | None = None
    integer: bool = False
    allowed: list[str] | None = None
    # Observed in the training data: documentation and drift context, not request limits.
    observed_min: float | None = None
    observed_max: float | None = None
    categories: list[str] | None = None
    missing_rate: float = 0.0
    # The pipeline fills a missing value of this feature (an imputer is its first step), so a
    # request may send null for it. From the pipeline builder (`imputed_features`); False in
    # bundles saved before this was recorded, which therefore keep refusing nulls.
    imputed: bool = False


class FeatureSchema(BaseModel):
    """Ordered features plus the target column name."""

    model_config = ConfigDict(frozen=True)

    target: str
    features: list[FeatureSpec]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "categorical"]

    def spec(self, name: str) -> FeatureSpec:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureSchema:
        return cls.model_validate(raw)

    @classmethod
    def from_training(cls, config: Config, features: pd.DataFrame) -> FeatureSchema:
        """Combine the config's declared rules with what the training data shows."""
        rules = config.features.rules
        specs = [
            _numeric_spec(name, features[name], rules.get(name, FeatureRule()))
            for name in config.features.numeric
        ] + [
            _categorical_spec(name, features[name], rules.get(name, FeatureRule()))
            for name in config.features.categorical
        ]
        imputed = imputed_features(config)
        specs = [spec.model_copy(update={"imputed": spec.name in imputed}) for spec in specs]
        return cls(target=config.data.target_column, features=specs)


def imputed_features(config: Config) -> set[str]:
    """The features whose missing values the configured pipeline fills (its transformer for
    them starts with an imputer): read from the pipeline builder itself, so the schema cannot
    promise nulls the model would choke on."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    from churn.pipeline import build_pipeline

    preprocess = build_pipeline(config).named_steps["preprocess"]
    imputed: set[str] = set()
    for _, transformer, columns in preprocess.transformers:
        first = transformer.steps[0][1] if isinstance(transformer, Pipeline) else transformer
        if isinstance(first, SimpleImputer):
            imputed.update(columns)
    return imputed


def _finite_or_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _numeric_spec(name: str, column: pd.Series, rule: FeatureRule) -> FeatureSpec:
    values = pd.to_numeric(column, errors="coerce")
    return FeatureSpec(
        name=name,
        kind="numeric",
        min=rule.min,
        max=rule.max,
        integer=rule.integer,
        observed_min=_finite_or_none(float(np.nanmin(values))) if values.notna().any() else None,
        observed_max=_finite_or_none(float(np.nanmax(values))) if values.notna().any() else None,
        missing_rate=float(values.isna().mean()),
    )


def _categorical_spec(name: str, column: pd.Series, rule: FeatureRule) -> FeatureSpec:
    observed = sorted(str(v) for v in column.dropna().unique())
    return FeatureSpec(
        name=name,
        kind="categorical",
        allowed=rule.allowed,
        categories=observed,
        missing_rate=float(column.isna().mean()),
    )
