"""Live model quality from the prediction log rows that have received feedback labels.

Labels arrive late and sparsely, so each metric is computed only when it means something:
at least ``min_labelled`` labelled rows, both classes present (AUC, recall), and at least one
predicted positive (precision). A skipped metric is None, never NaN, so nothing meaningless
reaches Prometheus or the alert rules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import precision_score, recall_score, roc_auc_score

DEFAULT_MIN_LABELLED = 50
DEFAULT_THRESHOLD = 0.5


@dataclass
class LiveQuality:
    """Rolling quality of the production model over the labelled rows of one window."""

    labelled_samples: int
    positives: int
    auc: float | None = None
    precision: float | None = None
    recall: float | None = None
    threshold: float = DEFAULT_THRESHOLD
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_live_quality(
    frame: pd.DataFrame,
    min_labelled: int = DEFAULT_MIN_LABELLED,
    threshold: float = DEFAULT_THRESHOLD,
    probability_column: str = "probability",
    outcome_column: str = "outcome",
) -> LiveQuality:
    """AUC, precision and recall at ``threshold`` on rows whose outcome is known."""
    if probability_column not in frame or outcome_column not in frame:
        return LiveQuality(0, 0, notes=[f"no '{outcome_column}' feedback column in the data"])
    labelled = frame[[probability_column, outcome_column]].dropna()
    y_true = labelled[outcome_column].to_numpy(dtype=float).astype(int)
    score = labelled[probability_column].to_numpy(dtype=float)
    quality = LiveQuality(len(labelled), int(y_true.sum()), threshold=threshold)
    if len(labelled) < min_labelled:
        quality.notes.append(
            f"{len(labelled)} labelled rows, fewer than {min_labelled}: metrics skipped"
        )
        return quality
    if np.unique(y_true).size < 2:
        quality.notes.append("labels hold one class only: AUC and recall undefined, skipped")
    else:
        quality.auc = float(roc_auc_score(y_true, score))
        quality.recall = float(recall_score(y_true, score >= threshold))
    predicted = score >= threshold
    if predicted.any():
        quality.precision = float(precision_score(y_true, predicted, zero_division=0))
    else:
        quality.notes.append(f"no prediction at or above {threshold}: precision undefined")
    return quality
