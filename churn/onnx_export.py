"""ONNX export of the fitted pipeline, shipped only when it agrees with sklearn.

Training-side only (skl2onnx is not in the serving image).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from churn.config import ExportConfig, RiskConfig
from churn.inference import OnnxPredictor, frame_to_columns
from churn.risk import risk_tiers
from churn.schema import FeatureSchema


@dataclass(frozen=True)
class OnnxExport:
    onnx_bytes: bytes | None
    max_abs_diff: float | None
    tier_agreement: float | None
    reason: str

    def as_metadata(self) -> dict[str, object]:
        return {
            "exported": self.onnx_bytes is not None,
            "max_abs_diff": self.max_abs_diff,
            "tier_agreement": self.tier_agreement,
            "reason": self.reason,
        }


def _exportable_copy(pipeline: Pipeline) -> Pipeline:
    """ONNX strings cannot be NaN: the categorical imputer matches '' instead.

    Serving sends a missing category as '' to the ONNX graph, so behaviour is unchanged.
    """
    exportable = copy.deepcopy(pipeline)
    preprocess = exportable.named_steps["preprocess"]
    categorical = preprocess.named_transformers_.get("categorical")
    if categorical is not None and hasattr(categorical, "named_steps"):
        categorical.named_steps["impute"].missing_values = ""
    return exportable


def convert(pipeline: Pipeline, schema: FeatureSchema) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    exportable = _exportable_copy(pipeline)
    initial_types = [(n, FloatTensorType([None, 1])) for n in schema.numeric] + [
        (n, StringTensorType([None, 1])) for n in schema.categorical
    ]
    classifier = exportable.named_steps["classifier"]
    model = convert_sklearn(
        exportable,
        initial_types=initial_types,
        options={id(classifier): {"zipmap": False}},
    )
    return bytes(model.SerializeToString())


def export_onnx(
    pipeline: Pipeline,
    schema: FeatureSchema,
    validation: pd.DataFrame,
    export: ExportConfig,
    risk: RiskConfig,
) -> OnnxExport:
    """Convert, then compare with sklearn on the validation set; refuse if they disagree."""
    try:
        onnx_bytes = convert(pipeline, schema)
    except Exception as exc:  # skl2onnx raises many types for unsupported models
        return OnnxExport(None, None, None, f"conversion failed: {exc}")
    onnx_p = OnnxPredictor(schema, onnx_bytes).predict_proba(frame_to_columns(validation, schema))
    sklearn_p = pipeline.predict_proba(validation)[:, 1]
    diff = float(np.max(np.abs(onnx_p - sklearn_p)))
    agreement = float(
        np.mean(
            risk_tiers(onnx_p, risk.high, risk.medium)
            == risk_tiers(sklearn_p, risk.high, risk.medium)
        )
    )
    if diff > export.onnx_max_abs_diff or agreement < export.onnx_min_tier_agreement:
        reason = (
            f"not shipped: max |Δp| {diff:.5f} (limit {export.onnx_max_abs_diff}), "
            f"tier agreement {agreement:.4%} (minimum {export.onnx_min_tier_agreement:.2%})"
        )
        return OnnxExport(None, diff, agreement, reason)
    return OnnxExport(onnx_bytes, diff, agreement, "agrees with the sklearn pipeline")
