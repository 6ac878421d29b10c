"""Prediction from a verified bundle: ONNX Runtime when the bundle has an export, else sklearn.

Inputs are columns (feature name -> sequence of values) so the serving fast path never builds
a pandas DataFrame; the sklearn fallback does, because ColumnTransformer selects by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from churn.bundle import ModelBundle
from churn.data import prepare_features
from churn.schema import FeatureSchema

Columns = Mapping[str, Sequence[Any] | np.ndarray]


class Predictor:
    """Churn probabilities for a batch of customers given as columns."""

    backend = "base"

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema

    def predict_proba(self, columns: Columns) -> np.ndarray:
        raise NotImplementedError


class SklearnPredictor(Predictor):
    backend = "sklearn"

    def __init__(self, schema: FeatureSchema, pipeline: Any) -> None:
        super().__init__(schema)
        self.pipeline = pipeline

    def predict_proba(self, columns: Columns) -> np.ndarray:
        frame = prepare_features(
            pd.DataFrame(dict(columns)), self.schema.numeric, self.schema.categorical
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
        self._numeric = schema.numeric
        self._categorical = schema.categorical

    def feeds(self, columns: Columns) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for name in self._numeric:
            feeds[name] = np.asarray(columns[name], dtype=np.float32).reshape(-1, 1)
        for name in self._categorical:
            # ONNX string tensors have no NaN: a missing category is the empty string,
            # which the exported imputer maps to the same fill value as training.
            values = ["" if v is None else str(v) for v in columns[name]]
            feeds[name] = np.asarray(values, dtype=object).reshape(-1, 1)
        return feeds

    def predict_proba(self, columns: Columns) -> np.ndarray:
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
