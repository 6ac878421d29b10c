"""Evaluation plots logged with each training run (matplotlib, headless)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
)
from sklearn.pipeline import Pipeline


def evaluation_figures(
    y_true: np.ndarray, probability: np.ndarray, threshold: float
) -> dict[str, Any]:
    """ROC, precision-recall, calibration and confusion-matrix figures, by file name."""
    figures: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(y_true, probability, ax=ax, name="validation")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.set_title("ROC curve")
    figures["roc_curve.png"] = fig

    fig, ax = plt.subplots(figsize=(5, 5))
    PrecisionRecallDisplay.from_predictions(y_true, probability, ax=ax, name="validation")
    ax.set_title("Precision-recall curve")
    figures["precision_recall_curve.png"] = fig

    fig, ax = plt.subplots(figsize=(5, 5))
    observed, predicted = calibration_curve(y_true, probability, n_bins=10, strategy="quantile")
    ax.plot(predicted, observed, "o-", label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed churn rate")
    ax.set_title("Calibration")
    ax.legend()
    figures["calibration_curve.png"] = fig

    fig, ax = plt.subplots(figsize=(5, 5))
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        (probability >= threshold).astype(int),
        ax=ax,
        display_labels=["retained", "churned"],
        colorbar=False,
    )
    ax.set_title(f"Confusion matrix (threshold {threshold})")
    figures["confusion_matrix.png"] = fig
    return figures


def feature_importance(pipeline: Pipeline) -> dict[str, float]:
    """Importance per transformed feature: impurity importance for trees, |coef| for linear."""
    names = pipeline.named_steps["preprocess"].get_feature_names_out()
    classifier = pipeline.named_steps["classifier"]
    if hasattr(classifier, "feature_importances_"):
        values = np.asarray(classifier.feature_importances_)
    else:
        values = np.abs(np.ravel(classifier.coef_))
    return {str(n): float(v) for n, v in zip(names, values, strict=True)}


def feature_importance_figure(importance: dict[str, float], top: int = 20) -> Any:
    ranked = sorted(importance.items(), key=lambda kv: kv[1])[-top:]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.35 * len(ranked))))
    ax.barh([k for k, _ in ranked], [v for _, v in ranked], color="#3b7dd8")
    ax.set_title("Feature importance")
    fig.tight_layout()
    return fig


def close(figures: dict[str, Any]) -> None:
    for fig in figures.values():
        plt.close(fig)
