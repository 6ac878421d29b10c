"""The evidence about a challenger, computed from the paired log (pure: frames in, values out).

Without labels: agreement of decisions and risk tiers, the distance between the two score
distributions, per-segment predicted churn rates. With feedback labels, on the same customers:
the AUC difference (DeLong or the paired bootstrap), log-loss and Brier differences, and each
model's calibration per segment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from churn.config import RolloutConfig
from churn.prediction_log.reader import CHALLENGER_ROLE, CHAMPION_ROLE, OUTCOME_COLUMN
from churn.risk import HIGH
from monitoring.performance.segments import SegmentSpec
from monitoring.rollout.results import Agreement, SegmentRow
from monitoring.rollout.stats import (
    PairedDifference,
    delong_auc_difference,
    paired_bootstrap_auc,
    paired_loss_differences,
)

A, B = "champion_probability", "challenger_probability"


def agreement(frame: pd.DataFrame, threshold: float) -> Agreement | None:
    if frame.empty:
        return None
    a = frame[A].to_numpy(dtype=float)
    b = frame[B].to_numpy(dtype=float)
    return Agreement(
        pairs=len(frame),
        decision_agreement=float(np.mean((a >= threshold) == (b >= threshold))),
        tier_agreement=float(np.mean(frame["champion_tier"] == frame["challenger_tier"])),
        ks_statistic=float(ks_2samp(a, b).statistic),
        mean_abs_difference=float(np.mean(np.abs(b - a))),
        champion_high_rate=float(np.mean(frame["champion_tier"] == HIGH)),
        challenger_high_rate=float(np.mean(frame["challenger_tier"] == HIGH)),
    )


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame[OUTCOME_COLUMN].notna()] if OUTCOME_COLUMN in frame else frame.iloc[:0]


def auc_difference(rows: pd.DataFrame, rule: RolloutConfig) -> PairedDifference | None:
    """AUC(challenger) - AUC(champion) on the labelled pairs, by the configured method;
    None while the labels hold one class only (no AUC exists)."""
    y = rows[OUTCOME_COLUMN].to_numpy(dtype=float).astype(int)
    if len(rows) < 4 or y.min() == y.max():
        return None
    a, b = rows[A].to_numpy(dtype=float), rows[B].to_numpy(dtype=float)
    if rule.method == "bootstrap":
        return paired_bootstrap_auc(a, b, y, rule.confidence, rule.bootstrap_resamples)
    return delong_auc_difference(a, b, y, rule.confidence)


def loss_differences(
    rows: pd.DataFrame, confidence: float
) -> tuple[PairedDifference | None, PairedDifference | None]:
    if len(rows) < 2:
        return None, None
    y = rows[OUTCOME_COLUMN].to_numpy(dtype=float)
    return paired_loss_differences(
        rows[A].to_numpy(dtype=float), rows[B].to_numpy(dtype=float), y, confidence
    )


def _calibration_z(p: np.ndarray, y: np.ndarray) -> float | None:
    """(observed churners - predicted) / sqrt(sum p(1-p)): calibration in the large."""
    variance = float(np.sum(p * (1 - p)))
    if len(p) == 0 or variance <= 0:
        return None
    return float((y.sum() - p.sum()) / math.sqrt(variance))


def segment_rows(
    frame: pd.DataFrame, specs: Sequence[SegmentSpec], min_labelled: int
) -> tuple[SegmentRow, ...]:
    """Per segment: both models' mean predicted churn, and where at least `min_labelled` rows
    are labelled the observed rate and each model's calibration z."""
    out: list[SegmentRow] = []
    if frame.empty:
        return ()
    a, b = frame[A].to_numpy(dtype=float), frame[B].to_numpy(dtype=float)
    y = frame[OUTCOME_COLUMN].to_numpy(dtype=float)
    known = np.isfinite(y)
    for spec in specs:
        if spec.feature not in frame:
            continue
        codes = spec.codes(frame[spec.feature])
        for i, name in enumerate(spec.labels()):
            rows = codes == i
            n = int(rows.sum())
            if n == 0:
                continue
            lab = rows & known
            k = int(lab.sum())
            observed = za = zb = None
            if k >= min_labelled:
                observed = float(y[lab].mean())
                za = _calibration_z(a[lab], y[lab])
                zb = _calibration_z(b[lab], y[lab])
            out.append(
                SegmentRow(
                    feature=spec.feature,
                    segment=name,
                    rows=n,
                    champion_rate=float(a[rows].mean()),
                    challenger_rate=float(b[rows].mean()),
                    labelled=k,
                    observed_rate=observed,
                    champion_calibration_z=za,
                    challenger_calibration_z=zb,
                )
            )
    return tuple(out)


def role_counts(frame: pd.DataFrame) -> tuple[int, int]:
    """(pairs answered by the champion, pairs answered by the challenger)."""
    if frame.empty:
        return 0, 0
    roles = frame["served_role"]
    return int((roles == CHAMPION_ROLE).sum()), int((roles == CHALLENGER_ROLE).sum())
