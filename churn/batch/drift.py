"""Drift of the whole scored population, computed in Spark, judged by the monitoring detector.

Spark reduces the population to the same summaries a bundle's reference profile holds
(:class:`churn.profile.ReferenceProfile`), and the monitoring job's detector compares them:

* categorical features: the exact count of every category (one group-by over all features);
* numeric features and the predicted probabilities: exact counts, missing counts, mean and
  standard deviation (one aggregation), plus a **uniform sample of bounded size** for the
  Kolmogorov-Smirnov test and the Wasserstein distance.

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

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from churn.profile import CategoricalSummary, NumericSummary, ReferenceProfile

PROBABILITY = "churn_probability"
# The monitoring job's defaults (python -m monitoring.drift_detector), so both judge alike.
CORRECTION = "bonferroni"
MIN_ROWS = 100


@dataclass(frozen=True)
class Population:
    """The scored population's summaries plus the sample they were drawn with."""

    profile: ReferenceProfile
    sample: pd.DataFrame  # sampled rows: numeric features, categories, "probability"
    rows: int


def _sample_fraction(rows: int, size: int) -> float:
    """Bernoulli fraction that yields at least ``size`` rows with overwhelming probability
    (10 standard deviations of margin); the surplus is cut by a random order."""
    if rows <= size:
        return 1.0
    return min(1.0, (size + 10 * math.sqrt(size) + 100) / rows)


def population_profile(
    scored: DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    *,
    sample_size: int,
    seed: int = 0,
) -> Population:
    """Summaries of ``scored`` (valid rows: features as the model saw them + probability)."""
    measured = [*numeric, PROBABILITY]
    aggregates = [F.count(F.lit(1)).alias("_rows")]
    for name in measured:
        column = F.col(name)
        aggregates += [
            F.count(column).alias(f"{name}__n"),
            F.mean(column).alias(f"{name}__mean"),
            F.stddev_samp(column).alias(f"{name}__std"),
        ]
    totals = scored.agg(*aggregates).first()
    assert totals is not None
    rows = int(totals["_rows"])

    counts: dict[str, dict[str, int]] = {name: {} for name in categorical}
    missing: dict[str, int] = dict.fromkeys(categorical, 0)
    if categorical:
        pairs = F.explode(
            F.array(*[F.struct(F.lit(n).alias("f"), F.col(n).alias("v")) for n in categorical])
        ).alias("kv")
        grouped = scored.select(pairs).groupBy("kv.f", "kv.v").count().collect()
        for feature, value, count in grouped:
            if value is None:
                missing[feature] += int(count)
            else:
                counts[feature][str(value)] = int(count)

    chosen = scored.select(*measured, *categorical)
    if rows > sample_size:
        fraction = _sample_fraction(rows, sample_size)
        if fraction < 1.0:
            chosen = chosen.sample(False, fraction, seed)
        chosen = chosen.orderBy(F.rand(seed)).limit(sample_size)
    sample = pd.DataFrame(chosen.toPandas())

    def summary(name: str) -> NumericSummary:
        n = int(totals[f"{name}__n"])
        values = sample[name].to_numpy(dtype=float, na_value=np.nan)
        base = NumericSummary.from_values(values)
        return replace(
            base,
            n=n,
            n_missing=rows - n,
            mean=_float(totals[f"{name}__mean"]),
            std=_float(totals[f"{name}__std"]),
            sampled=base.n < n,
        )

    profile = ReferenceProfile(
        numeric={name: summary(name) for name in numeric},
        categorical={
            name: CategoricalSummary(
                counts=dict(sorted(counts[name].items(), key=lambda kv: -kv[1])),
                n_missing=missing[name],
            )
            for name in categorical
        },
        predictions=summary(PROBABILITY),
        n_rows=rows,
    )
    return Population(profile, sample.rename(columns={PROBABILITY: "probability"}), rows)


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


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
