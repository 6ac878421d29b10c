"""Drift of the whole scored population, summarised while scoring, judged by the monitoring
detector.

The scoring pass reduces the valid rows to the same summaries a bundle's reference profile
holds (:class:`churn.profile.ReferenceProfile`; gathered by :mod:`churn.batch.summary`), and
the monitoring job's detector compares them:

* categorical features: the exact count of every category;
* numeric features and the predicted probabilities: exact counts, missing counts, mean and
  standard deviation, plus a **uniform sample of bounded size** for the Kolmogorov-Smirnov
  test and the Wasserstein distance.

Why a sample rather than ``approxQuantile``: the detector's tests are defined on values (two
empirical CDFs), and the reference side is itself a uniform sample (``export.
profile_sample_size``); a uniform sample of the population keeps both sides the same kind of
object, so the statistics mean what they mean in the monitoring job. Quantile sketches would
have to be turned back into pseudo-values whose sampling error is not that of a sample. With
``sample_size`` at or above the number of rows the sample is every row, and the verdicts are
exactly the in-process detector's on the same rows.

:func:`judge` is the one place this package calls the monitoring drift code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from churn.batch.summary import PROBABILITY, ScoreSummary
from churn.profile import CategoricalSummary, NumericSummary, ReferenceProfile

# The monitoring job's defaults (python -m monitoring.drift_detector), so both judge alike.
CORRECTION = "bonferroni"
MIN_ROWS = 100


@dataclass(frozen=True)
class Population:
    """The scored population's summaries plus the sample they were drawn with."""

    profile: ReferenceProfile
    sample: pd.DataFrame  # sampled rows: numeric features, categories, "probability"
    rows: int


def population(summary: ScoreSummary) -> Population:
    """The valid rows' profile (exact counts and moments, the bounded sample's values)."""
    sample = summary.values()
    rows = summary.scored

    def numeric(name: str) -> NumericSummary:
        moments = summary.moments[name]
        base = NumericSummary.from_values(sample[name].to_numpy(dtype=float, na_value=np.nan))
        return replace(
            base,
            n=moments.n,
            n_missing=rows - moments.n,
            mean=moments.average,
            std=moments.std,
            sampled=base.n < moments.n,
        )

    profile = ReferenceProfile(
        numeric={name: numeric(name) for name in summary.numeric},
        categorical={
            name: CategoricalSummary(
                counts=dict(sorted(summary.categories[name].items(), key=lambda kv: -kv[1])),
                n_missing=summary.missing[name],
            )
            for name in summary.categorical
        },
        predictions=numeric(PROBABILITY),
        n_rows=rows,
    )
    return Population(profile, sample.rename(columns={PROBABILITY: "probability"}), rows)


def judge(
    reference: ReferenceProfile,
    reference_label: str,
    population: Population,
    current_label: str,
    numeric: Sequence[str],
    categorical: Sequence[str],
    *,
    alpha: float = 0.05,
) -> tuple[Any, dict[str, Any], str]:
    """The monitoring detector's verdicts on the population: (DriftRun, JSON dict, HTML).

    The only calls into ``monitoring``: a split of the detector into a package re-points
    these imports and nothing else.
    """
    from monitoring import report
    from monitoring.drift_detector import DriftRun, detect_feature_drift, detect_prediction_drift

    features = detect_feature_drift(
        reference,
        population.profile,
        list(numeric),
        list(categorical),
        alpha,
        correction=CORRECTION,
        min_rows=MIN_ROWS,
    )
    prediction = None
    if reference.predictions is not None and population.profile.predictions is not None:
        prediction = detect_prediction_drift(
            reference.predictions, population.profile.predictions, alpha, min_rows=MIN_ROWS
        )
    run = DriftRun(
        features=tuple(features),
        prediction=prediction,
        live=None,
        reference=reference,
        reference_label=reference_label,
        current_label=current_label,
        current_rows=population.rows,
        alpha=alpha,
        correction=CORRECTION,
        min_rows=MIN_ROWS,
        finished_at=datetime.now(UTC),
    )
    return run, report.report_json(run), report.render_html(run, population.sample)


def push_drift_metrics(run: Any, gateway: str, job: str) -> None:
    """The monitoring job's drift gauges (the alert rules' contract), under ``job``."""
    from monitoring.drift_detector import push_metrics

    push_metrics(run, gateway, job)
