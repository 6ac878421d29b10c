"""Probability calibration fitted at training time and stored in the bundle as plain numbers.

Estimating a model's accuracy without labels (monitoring.performance) treats each served
probability as the chance that the customer churns, so the probabilities must be calibrated.
The served answers are not changed: the calibrator maps the model's probability to a calibrated
one only where performance is estimated.

Two calibrators are fitted on the validation predictions and the one with the lower
cross-validated Brier score is kept: isotonic regression (a monotone step function, flexible,
needs data) and Platt's sigmoid (two numbers, robust on small sets). Both are stored as numbers
(breakpoints, or slope and intercept), never as a pickle, and applied with numpy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Method = Literal["isotonic", "sigmoid", "identity"]
_EPS = 1e-6
_FOLDS = 5


class CalibrationError(ValueError):
    """The calibration record in a bundle is malformed."""


@dataclass(frozen=True)
class Calibrator:
    """A monotone map from the model's churn probability to a calibrated one."""

    method: Method
    # isotonic: breakpoints (x ascending) and values; sigmoid: slope and intercept on logit(p)
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    slope: float = 1.0
    intercept: float = 0.0
    brier_before: float | None = None
    brier_after: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        p = np.asarray(probabilities, dtype=float)
        if self.method == "isotonic":
            return np.clip(np.interp(p, self.x, self.y), 0.0, 1.0)
        if self.method == "sigmoid":
            return _sigmoid(self.slope * _logit(p) + self.intercept)
        return p

    def as_metadata(self) -> dict[str, Any]:
        record: dict[str, Any] = {"method": self.method}
        if self.method == "isotonic":
            record.update(x=list(self.x), y=list(self.y))
        elif self.method == "sigmoid":
            record.update(slope=self.slope, intercept=self.intercept)
        for name in ("brier_before", "brier_after", "ece_before", "ece_after"):
            value = getattr(self, name)
            if value is not None:
                record[name] = round(float(value), 6)
        return record

    @classmethod
    def from_metadata(cls, record: dict[str, Any] | None) -> Calibrator:
        """The calibrator saved in a bundle; identity for bundles trained before calibration."""
        if not record:
            return cls("identity")
        method = record.get("method")
        scores: dict[str, Any] = {
            k: float(record[k])
            for k in ("brier_before", "brier_after", "ece_before", "ece_after")
            if k in record
        }
        found: Calibrator
        if method == "isotonic":
            x = np.asarray(record.get("x", []), dtype=float)
            y = np.asarray(record.get("y", []), dtype=float)
            if x.size == 0 or x.shape != y.shape or np.any(np.diff(x) < 0):
                raise CalibrationError("calibration.x/y: need equal-length lists, x ascending")
            if not (np.all(np.isfinite(y)) and np.all((y >= 0) & (y <= 1))):
                raise CalibrationError("calibration.y: values must lie in [0, 1]")
            found = cls("isotonic", x=tuple(x.tolist()), y=tuple(y.tolist()))
        elif method == "sigmoid":
            slope, intercept = float(record["slope"]), float(record["intercept"])
            if not (np.isfinite(slope) and np.isfinite(intercept)):
                raise CalibrationError("calibration.slope/intercept must be finite")
            found = cls("sigmoid", slope=slope, intercept=intercept)
        elif method == "identity":
            found = cls("identity")
        else:
            raise CalibrationError(f"calibration.method: unknown method {method!r}")
        return dataclasses.replace(found, **scores)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1 - _EPS)
    return np.asarray(np.log(q / (1 - q)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
) -> float:
    """Weighted mean |observed rate - mean probability| over equal-count bins."""
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels, dtype=float)
    if p.size == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    total = 0.0
    for part in np.array_split(order, min(bins, p.size)):
        if part.size:
            total += part.size * abs(float(y[part].mean()) - float(p[part].mean()))
    return total / p.size


def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    return tuple(iso.X_thresholds_.tolist()), tuple(iso.y_thresholds_.tolist())


def _fit_sigmoid(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6).fit(_logit(p).reshape(-1, 1), y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def _fit(method: Method, p: np.ndarray, y: np.ndarray) -> Calibrator:
    if method == "isotonic":
        x, values = _fit_isotonic(p, y)
        return Calibrator("isotonic", x=x, y=values)
    slope, intercept = _fit_sigmoid(p, y)
    return Calibrator("sigmoid", slope=slope, intercept=intercept)


def fit_calibrator(probabilities: np.ndarray, labels: np.ndarray, seed: int = 0) -> Calibrator:
    """Isotonic or sigmoid, whichever has the lower 5-fold cross-validated Brier score on the
    validation predictions, refitted on all of them; the reported Brier score and calibration
    error after calibration are the out-of-fold ones. Identity when one class is missing."""
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels, dtype=int)
    brier_before = float(np.mean((p - y) ** 2))
    ece_before = expected_calibration_error(p, y)
    if p.size < 2 * _FOLDS or y.min() == y.max():
        return Calibrator(
            "identity",
            brier_before=brier_before,
            brier_after=brier_before,
            ece_before=ece_before,
            ece_after=ece_before,
        )
    folds = np.random.default_rng(seed).permutation(p.size) % _FOLDS
    out_of_fold: dict[Method, np.ndarray] = {}
    for method in ("isotonic", "sigmoid"):
        oof = p.copy()
        for k in range(_FOLDS):
            train, test = folds != k, folds == k
            if y[train].min() != y[train].max():
                oof[test] = _fit(method, p[train], y[train]).apply(p[test])
        out_of_fold[method] = oof
    best: Method = min(out_of_fold, key=lambda m: float(np.mean((out_of_fold[m] - y) ** 2)))
    fitted = _fit(best, p, y)
    # Reported after-calibration figures are out-of-fold: honest, not in-sample.
    calibrated = out_of_fold[best]
    return Calibrator(
        fitted.method,
        x=fitted.x,
        y=fitted.y,
        slope=fitted.slope,
        intercept=fitted.intercept,
        brier_before=brier_before,
        brier_after=float(np.mean((calibrated - y) ** 2)),
        ece_before=ece_before,
        ece_after=expected_calibration_error(calibrated, y),
    )
