"""Prediction from a verified bundle, and the one place that chooses the backend.

`choose_predictor` tries the compiled forest (churn.forest), then ONNX Runtime, in the order
INFERENCE_BACKEND asks for, and keeps the first that gives the sklearn pipeline's tiers and
decisions on sample rows; the sklearn pipeline itself otherwise. Serving and batch scoring
both call it, so a customer gets the same answer from either.

Inputs are columns (feature name -> sequence of values) so the serving fast path never builds
a pandas DataFrame; the sklearn fallback does, because ColumnTransformer selects by name.
Every backend receives the same prepared columns (`churn.data.prepare_columns`: float
numerics, categories stripped, missing as NaN/None), so they answer alike on any input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from churn.bundle import ModelBundle
from churn.data import PreparedColumns, prepare_columns
from churn.risk import Thresholds, risk_tiers
from churn.schema import FeatureSchema

logger = logging.getLogger("churn.inference")

PARITY_ROWS = 64

Columns = Mapping[str, Sequence[Any] | np.ndarray]


class Predictor:
    """Churn probabilities for a batch of customers given as columns."""

    backend = "base"

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self.numeric = schema.numeric
        self.categorical = schema.categorical

    def prepare(self, columns: Columns) -> PreparedColumns:
        """The columns every backend receives (one normalisation for all of them)."""
        return prepare_columns(columns, self.numeric, self.categorical)

    def predict_proba(self, columns: Columns) -> np.ndarray:
        return self.predict_prepared(self.prepare(columns))

    def predict_prepared(self, columns: PreparedColumns) -> np.ndarray:
        """Probabilities for columns that went through `prepare` (callers that also use the
        prepared columns, like serving, prepare them once)."""
        raise NotImplementedError


class SklearnPredictor(Predictor):
    backend = "sklearn"

    def __init__(self, schema: FeatureSchema, pipeline: Any) -> None:
        super().__init__(schema)
        self.pipeline = pipeline

    def predict_prepared(self, columns: PreparedColumns) -> np.ndarray:
        frame = pd.DataFrame({name: columns[name] for name in self.numeric})
        for name in self.categorical:
            # the pipeline's imputer recognises NaN as missing, not None
            values = columns[name]
            frame[name] = pd.Series(values, dtype=object).where(
                [v is not None for v in values], np.nan
            )
        return np.asarray(self.pipeline.predict_proba(frame)[:, 1], dtype=float)


class OnnxPredictor(Predictor):
    backend = "onnx"

    def __init__(self, schema: FeatureSchema, onnx_bytes: bytes, threads: int = 1) -> None:
        super().__init__(schema)
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One intra-op thread: each serving worker owns one core; more threads only contend.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        outputs = [o.name for o in self.session.get_outputs()]
        self._output = "probabilities" if "probabilities" in outputs else outputs[-1]

    def feeds(self, columns: PreparedColumns) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for name in self.numeric:
            feeds[name] = np.asarray(columns[name], dtype=np.float32).reshape(-1, 1)
        for name in self.categorical:
            # ONNX string tensors have no NaN: a missing category is the empty string,
            # which the exported imputer maps to the same fill value as training.
            values = ["" if v is None else v for v in columns[name]]
            feeds[name] = np.asarray(values, dtype=object).reshape(-1, 1)
        return feeds

    def predict_prepared(self, columns: PreparedColumns) -> np.ndarray:
        result = self.session.run([self._output], self.feeds(columns))[0]
        return np.asarray(result[:, 1], dtype=float)


def make_predictor(bundle: ModelBundle, prefer_onnx: bool = True, threads: int = 1) -> Predictor:
    """The fastest predictor the bundle supports."""
    if prefer_onnx and bundle.onnx_bytes is not None:
        return OnnxPredictor(bundle.schema, bundle.onnx_bytes, threads=threads)
    return SklearnPredictor(bundle.schema, bundle.pipeline)


def frame_to_columns(frame: pd.DataFrame, schema: FeatureSchema) -> dict[str, list[Any]]:
    """Columns for a predictor from a DataFrame (missing values as None)."""
    out: dict[str, list[Any]] = {}
    for name in schema.numeric:
        out[name] = pd.to_numeric(frame[name], errors="coerce").astype(float).tolist()
    for name in schema.categorical:
        out[name] = [None if pd.isna(v) else str(v) for v in frame[name]]
    return out


class BackendError(RuntimeError):
    """The model itself misbehaves on sample rows (probabilities outside [0, 1])."""


def sample_rows(bundle: ModelBundle, n: int = PARITY_ROWS, seed: int = 0) -> dict[str, list[Any]]:
    """Synthetic customers drawn per feature from the reference profile (or the schema), with
    what clients also send: padded categories and, where the model imputes, missing values
    (so the load-time check covers the shared preparation too)."""
    rng = np.random.default_rng(seed)
    profile = bundle.metadata.get("reference_profile") or {}
    columns: dict[str, list[Any]] = {}
    for spec in bundle.schema.features:
        values: list[Any]
        if spec.kind == "numeric":
            sample = (profile.get("numeric", {}).get(spec.name) or {}).get("sample")
            if not sample:
                low = spec.observed_min if spec.observed_min is not None else (spec.min or 0.0)
                high = spec.observed_max if spec.observed_max is not None else low + 100.0
                sample = np.linspace(low, high, 17).tolist()
            values = [float(v) for v in rng.choice(sample, n)]
        else:
            choices = spec.allowed or spec.categories or ["unknown"]
            values = [str(v) for v in rng.choice(choices, n)]
            values[3::7] = [f" {v} " for v in values[3::7]]
        if spec.imputed:
            values[5::11] = [None] * len(values[5::11])
        columns[spec.name] = values
    return columns


def _candidates(bundle: ModelBundle, preference: str) -> list[tuple[str, Callable[[], Predictor]]]:
    """Faster predictors to try before sklearn, in the order INFERENCE_BACKEND asks for."""

    def forest() -> Predictor:
        from churn.forest import ForestPredictor, UnsupportedModel  # numba: only when wanted

        try:
            return ForestPredictor(bundle.schema, bundle.pipeline)
        except UnsupportedModel as exc:
            raise UnsupportedBackend(str(exc)) from None

    def onnx() -> Predictor:
        if bundle.onnx_bytes is None:
            raise UnsupportedBackend("the bundle has no ONNX export")
        return OnnxPredictor(bundle.schema, bundle.onnx_bytes)

    order = {"auto": ("forest", "onnx"), "forest": ("forest", "onnx"), "onnx": ("onnx", "forest")}
    makers = {"forest": forest, "onnx": onnx}
    return [(name, makers[name]) for name in order.get(preference, ())]


class UnsupportedBackend(RuntimeError):
    """A backend does not apply to this bundle (not an error: the next one is tried)."""


def choose_predictor(
    bundle: ModelBundle, preference: str, thresholds: Thresholds
) -> tuple[Predictor, str]:
    """The first faster predictor (compiled forest, ONNX) that gives the sklearn pipeline's
    tiers and decisions on sample rows; sklearn itself when none does."""
    sklearn = SklearnPredictor(bundle.schema, bundle.pipeline)
    rows = sample_rows(bundle)
    expected = sklearn.predict_proba(rows)
    _check_probabilities(expected, bundle)
    if preference == "sklearn":
        return sklearn, "INFERENCE_BACKEND=sklearn"
    refused: list[str] = []
    for name, make in _candidates(bundle, preference):
        try:
            candidate = make()
            got = candidate.predict_proba(rows)
        except UnsupportedBackend as exc:
            refused.append(f"{name}: {exc}")
            continue
        except Exception as exc:  # a broken backend must not stop serving: sklearn is there
            refused.append(f"{name} unusable ({type(exc).__name__}: {exc})")
            logger.warning(refused[-1], extra={"model_version": bundle.version})
            continue
        same_tiers = np.array_equal(
            risk_tiers(expected, thresholds.high, thresholds.medium),
            risk_tiers(got, thresholds.high, thresholds.medium),
        )
        same_decisions = np.array_equal(expected >= thresholds.decision, got >= thresholds.decision)
        if not (same_tiers and same_decisions):
            refused.append(
                f"{name} and sklearn disagree on risk tier or decision for some of "
                f"{len(expected)} sample rows"
            )
            logger.warning(refused[-1], extra={"model_version": bundle.version})
            continue
        diff = float(np.max(np.abs(expected - got)))
        agrees = f"{name} agrees with sklearn on {len(expected)} sample rows (max diff {diff:.2g})"
        return candidate, "; ".join([*refused, agrees])
    return sklearn, "; ".join([*refused, "serving sklearn"])


def _check_probabilities(values: np.ndarray, bundle: ModelBundle) -> None:
    if not (np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1))):
        raise BackendError(f"{bundle.directory}: the model returns probabilities outside [0, 1]")
