"""Categorical features: chi-squared homogeneity test, Jensen–Shannon distance as effect size."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

from churn.profile import CategoricalSummary
from monitoring.drift.results import EffectThresholds
from monitoring.drift.stats.base import DriftTest, TestResult
from monitoring.drift.stats.psi import population_stability_index


@dataclass(frozen=True)
class CategoricalResult(TestResult):
    """The chi-squared result plus what a reader needs: unseen categories and sparseness."""

    unseen: Mapping[str, float] = field(default_factory=dict)
    sparse: bool = False

    @property
    def js(self) -> float:
        """The Jensen–Shannon distance (base 2), this test's effect size."""
        return self.effect_size


def categorical_statistics(
    reference: CategoricalSummary, current: CategoricalSummary
) -> CategoricalResult:
    """Chi-squared homogeneity test on the 2×K table of counts, JS distance and PSI.

    Homogeneity (``chi2_contingency``), not goodness of fit: both rows are samples, so unequal
    totals are handled and the reference's own sampling noise is accounted for. Each category
    unseen in the reference is a column of its own (reference count 0); a category present
    in neither side is dropped (its expected count would be 0).
    """
    categories = list(reference.counts)
    unseen_names = [c for c in current.counts if c not in reference.counts]
    categories += unseen_names
    table = np.array(
        [
            [reference.counts.get(c, 0) for c in categories],
            [current.counts.get(c, 0) for c in categories],
        ],
        dtype=float,
    )
    table = table[:, table.sum(axis=0) > 0]
    cur_total = max(current.n, 1)
    unseen = {c: current.counts[c] / cur_total for c in unseen_names}
    if table.shape[1] < 2:  # one category on both sides: nothing can differ
        return CategoricalResult(0.0, 1.0, 0.0, 0.0, unseen=unseen)
    result = stats.chi2_contingency(table, correction=False)
    shares = table / table.sum(axis=1, keepdims=True)
    js = float(jensenshannon(shares[0], shares[1], base=2))
    return CategoricalResult(
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
        effect_size=js if math.isfinite(js) else 0.0,
        psi=population_stability_index(table[0], table[1]),
        unseen=unseen,
        sparse=bool((result.expected_freq < 5).any()),
    )


class ChiSquare(DriftTest[CategoricalSummary]):
    """The categorical test; unseen categories are listed and sparse tables flagged."""

    kind: ClassVar[str] = "categorical"
    test_used: ClassVar[str] = "chi2_contingency"
    effect_size_name: ClassVar[str] = "jensen_shannon"

    def threshold(self, limits: EffectThresholds) -> float:
        return limits.js

    def run(self, reference: CategoricalSummary, current: CategoricalSummary) -> TestResult:
        return categorical_statistics(reference, current)

    def notes(self, result: TestResult) -> tuple[str, ...]:
        if not isinstance(result, CategoricalResult):
            return ()
        notes: list[str] = []
        if result.unseen:
            listed = ", ".join(f"{k!r} {v:.1%}" for k, v in result.unseen.items())
            notes.append(f"categories never seen in the reference: {listed}")
        if result.sparse:
            notes.append("some expected counts are below 5: chi-squared is approximate")
        return tuple(notes)
