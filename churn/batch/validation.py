"""Per-row validation of a customer table against the bundle's feature schema.

The rules are the schema's own (``FeatureSpec.min``/``max``/``integer``/``allowed``, the ones
the API builds its request model from), applied column-wise to a pandas batch so a bad row
is *reported* (``status="invalid"`` plus reasons) instead of failing the job. Missing values
are imputed by the model's pipeline, so they are valid unless ``allow_missing`` is off; a
value the pipeline cannot impute or compare (text in a numeric column, an infinity, a number
beyond float32 which the compiled and ONNX backends compute in) is a bad row.

Reason codes are ``<feature>:<code>`` with ``code`` one of :data:`REASONS`; the job counts
them, people read the ``error`` message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from churn.schema import FeatureSchema, FeatureSpec

STATUS_OK, STATUS_INVALID = "ok", "invalid"
# What each reason code means; README "Nightly scoring on Spark" lists the same.
REASONS = {
    "missing": "no value, and missing values are not accepted (--no-allow-missing)",
    "wrong_type": "not a number",
    "not_finite": "an infinity (cannot be imputed or compared)",
    "below_min": "below the feature's minimum",
    "above_max": "above the feature's maximum (or beyond float32)",
    "not_integer": "a fraction where the feature is an integer",
    "not_allowed": "not one of the feature's allowed categories",
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class ValidatedBatch:
    """One batch after validation: a mask, per-row reasons, and model-ready columns."""

    valid: np.ndarray  # bool per row
    reasons: np.ndarray  # object: list of "<feature>:<code>" per invalid row, None when valid
    messages: np.ndarray  # object: human-readable error per invalid row, None when valid
    columns: dict[str, Any]  # feature -> values of the VALID rows, as the predictors take them


def _numeric_values(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Float values (NaN when missing) and a mask of values that are not numbers at all."""
    if pd.api.types.is_bool_dtype(raw):
        return np.full(len(raw), np.nan), raw.notna().to_numpy()
    if pd.api.types.is_numeric_dtype(raw):
        return raw.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(raw), dtype=bool)
    text = raw.astype(object)
    values = pd.to_numeric(text.where(text.notna(), None), errors="coerce")
    array = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return array, (text.notna() & values.isna()).to_numpy()


def _numeric_checks(
    spec: FeatureSpec, values: np.ndarray, wrong_type: np.ndarray, allow_missing: bool
) -> dict[str, np.ndarray]:
    finite = np.isfinite(values)
    upper = spec.max if spec.max is not None else _FLOAT32_MAX
    checks = {
        "wrong_type": wrong_type,
        "not_finite": np.isinf(values),
        "above_max": finite & (values > upper),
    }
    if spec.min is not None:
        checks["below_min"] = finite & (values < spec.min)
    if spec.integer:
        checks["not_integer"] = finite & (
            np.mod(values, 1.0, where=finite, out=np.zeros_like(values)) != 0
        )
    if not allow_missing:
        checks["missing"] = np.isnan(values) & ~wrong_type
    return checks


def _categorical_values(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Values as strings (None when missing, as the predictors expect) and the missing mask."""
    values = np.array(raw.to_numpy(dtype=object, na_value=None), dtype=object)  # writable
    missing = pd.isna(values)
    values[missing] = None
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        present = ~missing
        values[present] = [str(v) for v in values[present]]
    return values, missing


def _categorical_checks(
    spec: FeatureSpec, values: np.ndarray, missing: np.ndarray, allow_missing: bool
) -> dict[str, np.ndarray]:
    checks: dict[str, np.ndarray] = {}
    if spec.allowed:
        checks["not_allowed"] = ~missing & ~pd.Series(values).isin(spec.allowed).to_numpy()
    if not allow_missing:
        checks["missing"] = missing
    return checks


def _describe(spec: FeatureSpec, code: str, value: Any) -> str:
    if isinstance(value, np.generic):  # numpy 2 writes np.float64(-3.0) otherwise
        value = value.item()
    shown = "missing" if value is None or value != value else repr(value)
    if code == "below_min":
        return f"{spec.name}: {shown} is below the minimum {spec.min:g}"
    if code == "above_max":
        limit = spec.max if spec.max is not None else _FLOAT32_MAX
        return f"{spec.name}: {shown} is above the maximum {limit:g}"
    if code == "not_allowed":
        return f"{spec.name}: {shown} is not one of {spec.allowed}"
    return f"{spec.name}: {shown} is {REASONS[code]}"


def validate_batch(
    frame: pd.DataFrame, schema: FeatureSchema, *, allow_missing: bool = True
) -> ValidatedBatch:
    """Check every row of ``frame`` against ``schema``; never raises for a bad value.

    Vectorised per column; only the (few) invalid rows cost Python work per row."""
    n = len(frame)
    parsed: dict[str, np.ndarray] = {}
    failed: list[tuple[FeatureSpec, str, np.ndarray, Any]] = []
    bad = np.zeros(n, dtype=bool)
    for spec in schema.features:
        raw = frame[spec.name]
        if spec.kind == "numeric":
            values, wrong_type = _numeric_values(raw)
            checks = _numeric_checks(spec, values, wrong_type, allow_missing)
            shown = raw.to_numpy(dtype=object)
        else:
            values, missing = _categorical_values(raw)
            checks = _categorical_checks(spec, values, missing, allow_missing)
            shown = values
        parsed[spec.name] = values
        for code, mask in checks.items():
            if mask.any():
                bad |= mask
                failed.append((spec, code, mask, shown))
    reasons = np.full(n, None, dtype=object)
    messages = np.full(n, None, dtype=object)
    for row in np.flatnonzero(bad):
        reasons[row], messages[row] = [], []
    for spec, code, mask, shown in failed:
        for row in np.flatnonzero(mask):
            reasons[row].append(f"{spec.name}:{code}")
            messages[row].append(_describe(spec, code, shown[row]))
    for row in np.flatnonzero(bad):
        messages[row] = "; ".join(messages[row])
    valid = ~bad
    columns = {name: values if not bad.any() else values[valid] for name, values in parsed.items()}
    return ValidatedBatch(valid=valid, reasons=reasons, messages=messages, columns=columns)
