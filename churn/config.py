"""The training configuration: one typed model of config.yaml, validated on load.

A misspelt key, a wrong type or an impossible value is refused with a one-line message that
names it (and suggests the closest valid key), before anything touches MLflow.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from churn.stores import DEFAULT_TRACKING_URI


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MlflowConfig(_Section):
    """Where runs and versions go. A config file that leaves the names out gets them from
    its data file (see `Config._names_from_data`), so training on your own CSV never adds a
    version to the demo's `churn-classifier` unless the config names it."""

    experiment_name: str = "churn-prediction"
    model_name: str = "churn-classifier"
    # MLflow's own default: an embedded SQLite store, no server needed.
    # The MLFLOW_TRACKING_URI environment variable wins over this.
    tracking_uri: str = DEFAULT_TRACKING_URI


class DataConfig(_Section):
    train_path: Path = Path("data/churn_train.csv")
    target_column: str = "churned"


class FeatureRule(_Section):
    """Domain rules for one feature; the API enforces them on requests."""

    min: float | None = None
    max: float | None = None
    integer: bool = False
    allowed: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> FeatureRule:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class FeaturesConfig(_Section):
    numeric: list[str] = Field(min_length=0)
    categorical: list[str] = Field(min_length=0)
    rules: dict[str, FeatureRule] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> FeaturesConfig:
        names = self.numeric + self.categorical
        if not names:
            raise ValueError("no features: list at least one under numeric or categorical")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"features listed twice: {', '.join(duplicates)}")
        for name, rule in self.rules.items():
            if name not in names:
                raise ValueError(f"rules names '{name}', which is not a listed feature")
            if rule.allowed is not None and name in self.numeric:
                raise ValueError(f"rules.{name}.allowed is only for categorical features")
            if (rule.min is not None or rule.max is not None or rule.integer) and (
                name in self.categorical
            ):
                raise ValueError(f"rules.{name}: min/max/integer are only for numeric features")
        return self

    @property
    def all(self) -> list[str]:
        return self.numeric + self.categorical


class TrainingConfig(_Section):
    val_size: float = Field(0.2, gt=0.0, lt=1.0)
    random_state: int = 42


class ModelConfig(_Section):
    """Classifier choice and hyper-parameters; each type reads the ones that apply to it."""

    type: Literal["random_forest", "gradient_boosting", "logistic_regression"] = "random_forest"
    n_estimators: int = Field(200, ge=1, le=5000)
    max_depth: int | None = Field(8, ge=1)
    min_samples_leaf: int = Field(1, ge=1)
    learning_rate: float = Field(0.1, gt=0.0, le=1.0)
    C: float = Field(1.0, gt=0.0)
    class_weight: Literal["balanced"] | None = None
    n_jobs: int = -1


class GateConfig(_Section):
    min_val_auc: float = Field(0.88, ge=0.0, le=1.0)
    # How much lower than the current production model's val AUC a candidate may be.
    max_auc_drop: float = Field(0.01, ge=0.0, le=1.0)


class RiskConfig(_Section):
    """Risk tiers from the churn probability: HIGH >= high, MEDIUM >= medium, else LOW."""

    high: float = Field(0.75, gt=0.0, le=1.0)
    medium: float = Field(0.45, gt=0.0, le=1.0)
    decision_threshold: float = Field(0.5, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> RiskConfig:
        if self.medium > self.high:
            raise ValueError(f"medium ({self.medium}) must not exceed high ({self.high})")
        return self


class ExportConfig(_Section):
    """Where bundles go: candidates from training, the served one from promotion only."""

    # What is served (`make serve`, MODEL_PATH's default, the API image): written only by a
    # promotion or rollback of `production`, with release.json saying which version it is.
    artifacts_dir: Path = Path("artifacts")
    # Every trained bundle, one directory per registered version (v<N>/); nothing serves it.
    candidates_dir: Path = Path("candidates")
    onnx: bool = True
    # The ONNX export is only shipped when it agrees with the sklearn pipeline this well.
    onnx_max_abs_diff: float = Field(0.01, gt=0.0)
    onnx_min_tier_agreement: float = Field(0.999, gt=0.0, le=1.0)
    profile_sample_size: int = Field(5000, ge=100)
    # Written on promotion to production; beside the served bundle, outside git's view.
    model_card: Path = Path("artifacts/MODEL_CARD.md")


class SegmentConfig(_Section):
    """One segmentation for monitoring: a categorical feature by its training categories, or a
    numeric feature by band edges (`bins: [6, 12, 24]` gives <6, 6-12, 12-24, >=24)."""

    feature: str
    bins: list[float] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> SegmentConfig:
        if self.bins is not None and any(a >= b for a, b in itertools.pairwise(self.bins)):
            raise ValueError(f"bins of '{self.feature}' must be strictly ascending")
        return self


def _default_segments() -> list[SegmentConfig]:
    return []


class MonitoringConfig(_Section):
    """Label-free performance estimation and per-segment checks (monitoring.performance)."""

    segments: list[SegmentConfig] = Field(default_factory=_default_segments)
    # The band each estimate gives for the realised metric; outside it, a window is flagged.
    estimate_band: float = Field(0.99, gt=0.5, lt=1.0)
    # Family-wise false-alarm rate of the segment test, across all segments.
    segment_alpha: float = Field(0.05, gt=0.0, lt=0.5)
    # Rows (or labelled rows) a segment needs before its AUC and its test are reported.
    segment_min_rows: int = Field(100, ge=10)


class BatchConfig(_Section):
    """Nightly scoring on Spark (score_batch.py); each key has a CLI flag that wins over it."""

    # Columns copied from the customer table to every scored row (e.g. the customer id).
    key_columns: list[str] = Field(default_factory=lambda: ["customer_id"])
    # More invalid rows than this share: the night's partition is not replaced, exit 1.
    max_invalid_share: float = Field(0.01, ge=0.0, le=1.0)
    # Missing values are imputed by the model's pipeline; false refuses them like the API.
    allow_missing: bool = True
    # Numeric values per feature sampled uniformly for the drift tests (counts are exact).
    drift_sample_size: int = Field(50_000, ge=100)
    # Rows per Arrow batch handed to the model on an executor.
    arrow_batch_rows: int = Field(100_000, ge=100)


class GuardrailsConfig(_Section):
    """A canary's guardrail bounds, copied into the rollout record when a rollout starts (the
    API judges by the record, so every worker of every replica uses the same numbers)."""

    # Challenger answers seen in the window before the guardrails judge at all.
    min_requests: int = Field(200, ge=1)
    window_seconds: float = Field(300, gt=0)
    max_error_ratio: float = Field(0.02, ge=0.0, le=1.0)
    max_p95_latency_ms: float = Field(250, gt=0)
    # |challenger's HIGH-tier rate - champion's| above this rolls the canary back.
    max_high_risk_rate_delta: float = Field(0.15, ge=0.0, le=1.0)


class RolloutConfig(_Section):
    """Progressive delivery (churn/rollout.py, monitoring/rollout/): the decision rule on the
    paired live evidence, the default canary share, and the canary's guardrails."""

    canary_share: float = Field(0.10, gt=0.0, le=1.0)  # `make rollout-canary`'s default
    # Non-inferiority margin: promote when the lower bound of AUC(challenger) - AUC(champion)
    # is at or above -margin.
    margin: float = Field(0.005, ge=0.0, lt=1.0)
    min_pairs: int = Field(500, ge=10)  # labelled pairs before any decision
    confidence: float = Field(0.95, gt=0.5, lt=1.0)  # two-sided interval
    method: Literal["delong", "bootstrap"] = "delong"
    bootstrap_resamples: int = Field(2000, ge=100, le=100_000)
    guardrails: GuardrailsConfig = GuardrailsConfig()


class ClosedLoopConfig(_Section):
    """Where the closed loop sends a retrained model that passed the gate: to @challenger in
    shadow (default) or in canary at rollout.canary_share, both moving on only on live
    evidence; or straight to @production (`direct`, the loop's behaviour before rollouts)."""

    promotion: Literal["shadow", "canary", "direct"] = "shadow"


class Config(_Section):
    mlflow: MlflowConfig = MlflowConfig()
    data: DataConfig = DataConfig()
    features: FeaturesConfig
    training: TrainingConfig = TrainingConfig()
    model: ModelConfig = ModelConfig()
    gate: GateConfig = GateConfig()
    risk: RiskConfig = RiskConfig()
    export: ExportConfig = ExportConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    batch: BatchConfig = BatchConfig()
    rollout: RolloutConfig = RolloutConfig()
    closed_loop: ClosedLoopConfig = ClosedLoopConfig()

    @model_validator(mode="after")
    def _segments_fit_their_features(self) -> Config:
        # A segment naming no configured feature is reported once the features themselves
        # have been checked against the data (churn.data), where a typo in either shows.
        for i, segment in enumerate(self.monitoring.segments):
            where = f"monitoring.segments.{i}"
            if segment.feature in self.features.numeric and segment.bins is None:
                raise ValueError(f"{where}: numeric feature '{segment.feature}' needs bins")
            if segment.feature in self.features.categorical and segment.bins is not None:
                raise ValueError(
                    f"{where}: '{segment.feature}' is categorical; it is split by its "
                    "categories, bins do not apply"
                )
        return self

    @model_validator(mode="before")
    @classmethod
    def _names_from_data(cls, raw: Any) -> Any:
        """Missing mlflow.model_name: the data file's name (`data/acme.csv` -> `acme`);
        missing mlflow.experiment_name: the model name. One key, or none, to change."""
        if not isinstance(raw, dict):
            return raw
        mlflow = raw.get("mlflow") or {}
        data = raw.get("data") or {}
        if not isinstance(mlflow, dict) or not isinstance(data, dict):
            return raw
        mlflow = dict(mlflow)
        if "model_name" not in mlflow:
            path = Path(str(data.get("train_path", DataConfig().train_path)))
            mlflow["model_name"] = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-") or (
                MlflowConfig().model_name
            )
        mlflow.setdefault("experiment_name", mlflow["model_name"])
        return {**raw, "mlflow": mlflow}

    @model_validator(mode="after")
    def _target_not_a_feature(self) -> Config:
        if self.data.target_column in self.features.all:
            raise ValueError(
                f"the target '{self.data.target_column}' is also listed as a feature; "
                "a model must not see its own label"
            )
        return self

    @property
    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI from the environment wins over the config file."""
        return os.environ.get("MLFLOW_TRACKING_URI") or self.mlflow.tracking_uri


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys at a location, for 'did you mean' hints."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(str(loc[-1]), _known_keys(Config, loc), n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"{dotted}: unknown key{suggestion}"
    if error["type"] == "missing":
        return f"{dotted}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    got = "" if isinstance(value, dict | list) else f" (got {value!r})"
    return f"{dotted}: {message}{got}"


def parse_config(raw: Any, source: str = "config") -> Config:
    """Validate an already-parsed mapping; raise ConfigError with a one-line reason."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        extra = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(f"{source}: {_describe(dict(first))}{extra}") from None


def load_config(path: str | Path = "config.yaml") -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse_config(raw, source=str(path))
