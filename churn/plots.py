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

from churn.importance import FeatureImportance


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


def feature_importance_figure(rows: list[FeatureImportance]) -> Any:
    """Horizontal bars of permutation importance per original feature, coloured by direction.

    Red: a higher value raises the predicted churn risk; blue: it lowers it; grey: categorical
    (the effect text names the riskiest and safest category). Error bars: one std over repeats.
    """
    ranked = sorted(rows, key=lambda r: r.importance)
    colours = {1: "#d8453b", -1: "#3b7dd8", 0: "#8c8c8c"}
    fig, ax = plt.subplots(figsize=(8, max(3, 0.45 * len(ranked) + 1)))
    ax.barh(
        [r.feature for r in ranked],
        [r.importance for r in ranked],
        xerr=[r.importance_std for r in ranked],
        color=[colours[r.direction] for r in ranked],
    )
    right = max((r.importance + r.importance_std for r in ranked), default=0.0)
    left = min((r.importance - r.importance_std for r in ranked), default=0.0)
    for i, r in enumerate(ranked):
        ax.annotate(
            f"  {r.effect}",
            (max(r.importance + r.importance_std, 0.0), i),
            va="center",
            fontsize=8,
            color="#333333",
        )
    # Room on the right for the longest effect text.
    ax.set_xlim(min(left, 0.0) - 0.02 * right, 2.2 * right if right > 0 else 1.0)
    ax.set_xlabel("drop in validation AUC when the feature is shuffled")
    ax.set_title("Permutation importance (red: raises risk, blue: lowers it)")
    fig.tight_layout()
    return fig


def close(figures: dict[str, Any]) -> None:
    for fig in figures.values():
        plt.close(fig)


def shap_summary_figure(
    features: tuple[str, ...], contributions: np.ndarray, values: dict[str, list[Any]]
) -> Any:
    """A SHAP summary (beeswarm) plot: one row per feature, most important on top, a dot per
    explained customer at its contribution to the churn probability, coloured by the
    feature's value (numeric: low blue to high red by rank; categorical: one colour per
    category, its name written at the median of its dots)."""
    mean_abs = np.abs(contributions).mean(axis=0)
    order = np.argsort(mean_abs, kind="stable")  # least important at the bottom
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(10, max(3, 0.8 * len(features) + 1.2)))
    cmap = plt.get_cmap("coolwarm")
    palette = plt.get_cmap("tab10")
    for row, j in enumerate(order):
        name = features[j]
        x = contributions[:, j]
        y = row + rng.uniform(-0.25, 0.25, len(x))
        raw = values[name]
        colour: Any
        if not any(isinstance(v, str) for v in raw):  # numeric (None/NaN: missing)
            known = np.array([np.nan if v is None else float(v) for v in raw])
            filled = np.nan_to_num(known, nan=float(np.nanmedian(known)))
            ranks = np.argsort(np.argsort(filled, kind="stable"), kind="stable")
            colour = cmap(ranks / max(len(ranks) - 1, 1))
        else:
            shown = ["missing" if v is None else str(v) for v in raw]
            categories = sorted(set(shown))
            index = {c: i for i, c in enumerate(categories)}
            colour = [palette(index[v] % 10) for v in shown]
            for category in categories:
                mask = np.array([v == category for v in shown])
                ax.annotate(
                    category,
                    # alternately above and below the row, so close medians stay legible
                    (float(np.median(x[mask])), row + (0.3 if index[category] % 2 else -0.42)),
                    ha="center",
                    fontsize=7,
                    color=palette(index[category] % 10),
                )
        ax.scatter(x, y, s=6, c=colour, alpha=0.6, linewidths=0)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(range(len(order)), [features[j] for j in order])
    ax.set_ylim(-0.7, len(order) - 0.2)
    ax.set_xlabel("contribution to the churn probability (exact; numeric: blue low, red high)")
    ax.set_title("Why customers are at risk: per-customer contributions")
    fig.tight_layout()
    return fig
