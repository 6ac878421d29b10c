"""What one scoring pass learns about the night, gathered while it scores (no second pass).

Each Spark task summarises the batches it scores: rows, invalid rows per reason, risk tiers,
and the drift statistics of the valid rows as the model saw them: exact counts, missing
counts, mean and variance of every numeric feature and of the probabilities (merged with
Chan's formula, as Spark's own ``stddev_samp`` does), exact counts of every category, and a
bounded uniform sample for the tests that need values. The task hands its summary to the
driver through an accumulator keyed by partition, so a task that Spark runs twice (a retry,
a speculative copy) is counted once, and the driver checks that the summaries cover exactly
the rows the table has before anything is published (:meth:`ScoreSummary.require_rows`).

The sample: every valid row draws a uniform key; a task keeps the rows whose key is below
``fraction`` (at most ``sample_size`` of them, the smallest keys), and the driver keeps the
``sample_size`` smallest keys overall, a uniform sample without replacement of the valid
rows, of ``sample_size`` rows whenever ``fraction`` leaves that many (:func:`sample_fraction`
leaves twice as many as needed, ten standard deviations over). With ``sample_size`` at or
above the number of rows the fraction is 1 and the sample is every valid row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from churn.batch.validation import ValidatedBatch

PROBABILITY = "churn_probability"
SAMPLE_KEY = "_key"
# Mixed into the sample's seed so its keys are not the stream of numpy's generator with the
# job's seed alone (data generated with that seed would otherwise be sampled by its values).
SAMPLE_SALT = 0x5A3B_C7E1


def sample_fraction(rows: int, size: int) -> float:
    """Bernoulli fraction that leaves ``size`` valid rows with overwhelming probability even
    when up to half the rows are invalid (twice the need plus ten standard deviations)."""
    if rows <= size:
        return 1.0
    need = 2 * size
    return min(1.0, (need + 10 * math.sqrt(need) + 100) / rows)


@dataclass
class Moments:
    """Count, mean and sum of squared deviations of the non-missing values, mergeable."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        present = values[~np.isnan(values)]
        if not present.size:
            return cls()
        mean = float(present.mean())
        return cls(int(present.size), mean, float(np.square(present - mean).sum()))

    def merge(self, other: Moments) -> None:
        if not other.n:
            return
        if not self.n:
            self.n, self.mean, self.m2 = other.n, other.mean, other.m2
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / n
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n = n

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1), NaN below two values."""
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else float("nan")

    @property
    def average(self) -> float:
        return self.mean if self.n else float("nan")


def _add_counts(into: dict[str, int], counts: Mapping[str, int]) -> None:
    for key, count in counts.items():
        into[key] = into.get(key, 0) + int(count)


@dataclass
class ScoreSummary:
    """Counts and drift statistics of scored rows; :meth:`add` one batch, :meth:`merge` two."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    sample_size: int
    fraction: float
    seed: tuple[int, ...] = (0,)  # the sample's random keys: (job seed, partition)
    rows: int = 0
    invalid: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    tiers: dict[str, int] = field(default_factory=dict)
    moments: dict[str, Moments] = field(default_factory=dict)  # numeric + probability
    categories: dict[str, dict[str, int]] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)  # categorical features
    sample: pd.DataFrame | None = None  # measured + categorical columns + SAMPLE_KEY
    _pending: list[pd.DataFrame] = field(default_factory=list, init=False, repr=False)
    _pending_rows: int = field(default=0, init=False, repr=False)
    _rng: np.random.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in self.measured:
            self.moments.setdefault(name, Moments())
        for name in self.categorical:
            self.categories.setdefault(name, {})
            self.missing.setdefault(name, 0)

    def fresh(self, seed: tuple[int, ...] | None = None) -> ScoreSummary:
        """An empty summary with the same features and sample settings (and ``seed``)."""
        return ScoreSummary(
            self.numeric,
            self.categorical,
            self.sample_size,
            self.fraction,
            self.seed if seed is None else seed,
        )

    @property
    def measured(self) -> tuple[str, ...]:
        return (*self.numeric, PROBABILITY)

    @property
    def scored(self) -> int:
        return self.rows - self.invalid

    def add(
        self,
        checked: ValidatedBatch,
        probability: np.ndarray,
        tiers: np.ndarray,
    ) -> None:
        """One scored batch: ``checked`` from validation, ``probability`` (as written, rounded)
        and ``tiers`` of its valid rows, in the order of ``checked.columns``."""
        self.rows += int(checked.valid.size)
        bad = np.flatnonzero(~checked.valid)
        if bad.size:
            self.invalid += int(bad.size)
            for row in bad:
                for reason in checked.reasons[row]:
                    self.reasons[reason] = self.reasons.get(reason, 0) + 1
        n = int(probability.size)
        if not n:
            return
        _add_counts(self.tiers, pd.Series(tiers).value_counts().to_dict())
        values: dict[str, np.ndarray] = {PROBABILITY: probability}
        for name in self.numeric:
            values[name] = np.asarray(checked.columns[name], dtype=np.float64)
        for name in self.measured:
            self.moments[name].merge(Moments.of(values[name]))
        for name in self.categorical:
            column = pd.Series(checked.columns[name], dtype=object)
            _add_counts(self.categories[name], column.value_counts(dropna=True).to_dict())
            self.missing[name] += int(column.isna().sum())
        if self._rng is None:
            self._rng = np.random.default_rng([SAMPLE_SALT, *self.seed])
        keys = self._rng.random(n)
        kept = np.flatnonzero(keys < self.fraction)
        if kept.size:
            part = {name: values[name][kept] for name in self.measured}
            for name in self.categorical:
                part[name] = np.asarray(checked.columns[name], dtype=object)[kept]
            part[SAMPLE_KEY] = keys[kept]
            self._keep(pd.DataFrame(part))

    def _keep(self, rows: pd.DataFrame) -> None:
        """Add candidate sample rows; the smallest ``sample_size`` keys are what stays."""
        self._pending.append(rows)
        self._pending_rows += len(rows)
        if self._pending_rows > 2 * self.sample_size:
            self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        frames = self._pending if self.sample is None else [self.sample, *self._pending]
        sample = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        if len(sample) > self.sample_size:
            sample = sample.nsmallest(self.sample_size, SAMPLE_KEY)
        self.sample = sample.reset_index(drop=True)
        self._pending, self._pending_rows = [], 0

    def __getstate__(self) -> dict[str, object]:  # what a task sends: compacted
        self._compact()
        return {**self.__dict__, "_rng": None}

    def merge(self, other: ScoreSummary) -> None:
        self.rows += other.rows
        self.invalid += other.invalid
        _add_counts(self.reasons, other.reasons)
        _add_counts(self.tiers, other.tiers)
        for name in self.measured:
            self.moments[name].merge(other.moments[name])
        for name in self.categorical:
            _add_counts(self.categories[name], other.categories[name])
            self.missing[name] += other.missing[name]
        other._compact()
        if other.sample is not None:
            self._keep(other.sample)

    def values(self) -> pd.DataFrame:
        """The sampled valid rows (every valid row when the sample is not smaller), in the
        order of their keys, without the key."""
        columns = [*self.measured, *self.categorical]
        self._compact()
        if self.sample is None:
            return pd.DataFrame({name: pd.Series(dtype=float) for name in columns})
        return self.sample.sort_values(SAMPLE_KEY)[columns].reset_index(drop=True)

    def sorted_reasons(self) -> dict[str, int]:
        return dict(sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0])))


def merge_partitions(parts: Mapping[int, ScoreSummary], empty: ScoreSummary) -> ScoreSummary:
    """The night's summary from one summary per Spark partition (``empty`` when none)."""
    total = empty
    for index in sorted(parts):
        total.merge(parts[index])
    return total


def first_per_partition(
    into: dict[int, ScoreSummary], parts: Iterable[tuple[int, ScoreSummary]]
) -> dict[int, ScoreSummary]:
    """Keep one summary per partition: a task that ran twice scored the same rows twice."""
    for index, summary in parts:
        into.setdefault(index, summary)
    return into
