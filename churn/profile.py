"""Reference profile: the statistics of the training data that drift detection compares against.

The profile travels inside the model bundle (``metadata["reference_profile"]``) so the drift job
needs no access to the raw training data. It is small (well under 1 MB of JSON) and holds, per

* numeric feature: a random sample of the non-missing values (for the Kolmogorov–Smirnov test
  and the Wasserstein distance), decile bin edges with the full-data count in each bin (for
  PSI), mean, standard deviation, row count and missing count;
* categorical feature: the full-data count of every category, row count and missing count;
* the model's predicted probabilities: a sample, summarised like a numeric feature.

The same classes summarise a *current* DataFrame without sampling (``sample_size=None``), so the
detector compares two summaries whichever way each side arrived.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

PROFILE_VERSION = 1
# Interior quantiles for PSI bins: deciles. Outer bins are open (-inf, +inf).
_BIN_QUANTILES = np.linspace(0.1, 0.9, 9)
# Seven significant digits keep KS ties and order intact while halving the JSON size.
_SIGNIFICANT_DIGITS = 7


class ProfileError(ValueError):
    """A reference profile is malformed or does not cover the features asked for."""


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value for interior ``edges``: bin i is (edges[i-1], edges[i]], outer bins open.

    A value equal to an edge goes to the lower bin, so discrete features (whose deciles repeat
    their own values) bin the same way on both sides.
    """
    return np.searchsorted(edges, values, side="left")


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Count of ``values`` in each of the ``len(edges) + 1`` bins (vectorised)."""
    return np.bincount(bin_index(values, edges), minlength=len(edges) + 1).astype(np.int64)


def _round(values: np.ndarray) -> list[float]:
    """Floats rounded to a fixed number of significant digits for compact JSON."""
    return [float(f"{v:.{_SIGNIFICANT_DIGITS}g}") for v in values.tolist()]


@dataclass(frozen=True)
class NumericSummary:
    """One numeric column: the values the tests use plus full-data moments and PSI bins.

    ``values`` is either every non-missing value or a random sample of them (``sampled``);
    ``n``, ``n_missing``, ``mean``, ``std`` and ``bin_counts`` always describe the full data.
    """

    values: np.ndarray
    n: int
    n_missing: int
    mean: float
    std: float
    edges: np.ndarray
    bin_counts: np.ndarray
    sampled: bool = False

    @property
    def missing_rate(self) -> float:
        total = self.n + self.n_missing
        return self.n_missing / total if total else float("nan")

    @classmethod
    def from_values(
        cls,
        raw: np.ndarray | pd.Series | Sequence[float],
        sample_size: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> NumericSummary:
        """Summarise raw values (NaN = missing); keep at most ``sample_size`` of them."""
        array = pd.to_numeric(pd.Series(np.asarray(raw)), errors="coerce").to_numpy(float)
        finite = np.isfinite(array)
        values = array[finite]
        n = int(values.size)
        edges = np.unique(np.quantile(values, _BIN_QUANTILES)) if n else np.empty(0)
        sampled = sample_size is not None and n > sample_size
        if sampled:
            generator = rng if rng is not None else np.random.default_rng(0)
            kept = np.sort(generator.choice(values, size=sample_size, replace=False))
        else:
            kept = values
        return cls(
            values=kept,
            n=n,
            n_missing=int(array.size - n),
            mean=float(values.mean()) if n else float("nan"),
            std=float(values.std(ddof=1)) if n > 1 else float("nan"),
            edges=edges,
            bin_counts=bin_counts(values, edges),
            sampled=sampled,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_missing": self.n_missing,
            "missing_rate": self.missing_rate if self.n + self.n_missing else None,
            "mean": _finite_or_none(self.mean),
            "std": _finite_or_none(self.std),
            "quantile_edges": _round(self.edges),
            "bin_counts": self.bin_counts.tolist(),
            "sampled": self.sampled,
            "sample": _round(self.values),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> NumericSummary:
        try:
            edges = np.asarray(data["quantile_edges"], dtype=float)
            counts = np.asarray(data["bin_counts"], dtype=np.int64)
            summary = cls(
                values=np.asarray(data["sample"], dtype=float),
                n=int(data["n"]),
                n_missing=int(data["n_missing"]),
                mean=_float_or_nan(data.get("mean")),
                std=_float_or_nan(data.get("std")),
                edges=edges,
                bin_counts=counts,
                sampled=bool(data.get("sampled", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(
                f"reference profile {where}: malformed numeric entry ({exc})"
            ) from exc
        if counts.size != edges.size + 1:
            raise ProfileError(
                f"reference profile {where}: {edges.size} quantile edges need "
                f"{edges.size + 1} bin counts, found {counts.size}"
            )
        return summary


@dataclass(frozen=True)
class CategoricalSummary:
    """One categorical column: count per category (as strings) and the missing count."""

    counts: dict[str, int]
    n_missing: int

    @property
    def n(self) -> int:
        return int(sum(self.counts.values()))

    @property
    def missing_rate(self) -> float:
        total = self.n + self.n_missing
        return self.n_missing / total if total else float("nan")

    @classmethod
    def from_values(cls, raw: np.ndarray | pd.Series | Sequence[Any]) -> CategoricalSummary:
        """Count categories; values are compared as strings so JSON keys and data agree."""
        series = pd.Series(raw)
        present = series.dropna()
        counts = present.astype(str).value_counts(sort=True)
        return cls(
            counts={str(k): int(v) for k, v in counts.items()},
            n_missing=int(series.size - present.size),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_missing": self.n_missing,
            "missing_rate": self.missing_rate if self.n + self.n_missing else None,
            "counts": dict(self.counts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> CategoricalSummary:
        try:
            counts = {str(k): int(v) for k, v in dict(data["counts"]).items()}
            return cls(counts=counts, n_missing=int(data["n_missing"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(
                f"reference profile {where}: malformed categorical entry ({exc})"
            ) from exc


@dataclass(frozen=True)
class ReferenceProfile:
    """Summaries of every feature (and optionally the predictions) of one data set."""

    numeric: dict[str, NumericSummary]
    categorical: dict[str, CategoricalSummary]
    predictions: NumericSummary | None = None
    n_rows: int = 0

    @classmethod
    def from_frame(
        cls,
        features: pd.DataFrame,
        numeric: Sequence[str],
        categorical: Sequence[str],
        predictions: np.ndarray | pd.Series | None = None,
        sample_size: int | None = None,
        seed: int = 0,
    ) -> ReferenceProfile:
        """Summarise a DataFrame; ``sample_size=None`` keeps every value (no sampling)."""
        absent = [c for c in (*numeric, *categorical) if c not in features.columns]
        if absent:
            raise ProfileError(f"feature column(s) not in the data: {', '.join(absent)}")
        rng = np.random.default_rng(seed)
        return cls(
            numeric={
                name: NumericSummary.from_values(features[name], sample_size, rng)
                for name in numeric
            },
            categorical={
                name: CategoricalSummary.from_values(features[name]) for name in categorical
            },
            predictions=(
                NumericSummary.from_values(predictions, sample_size, rng)
                if predictions is not None
                else None
            ),
            n_rows=len(features),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "n_rows": self.n_rows,
            "numeric": {k: v.to_dict() for k, v in self.numeric.items()},
            "categorical": {k: v.to_dict() for k, v in self.categorical.items()},
            "predictions": self.predictions.to_dict() if self.predictions is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        """Load a profile written by :func:`build_reference_profile` (checks the version)."""
        if not isinstance(data, Mapping):
            raise ProfileError("reference profile must be a JSON object")
        version = data.get("version")
        if version != PROFILE_VERSION:
            raise ProfileError(
                f"reference profile version {version!r} is not supported (expected "
                f"{PROFILE_VERSION}); rebuild it with churn.profile.build_reference_profile"
            )
        preds = data.get("predictions")
        return cls(
            numeric={
                k: NumericSummary.from_dict(v, f"numeric.{k}")
                for k, v in dict(data.get("numeric", {})).items()
            },
            categorical={
                k: CategoricalSummary.from_dict(v, f"categorical.{k}")
                for k, v in dict(data.get("categorical", {})).items()
            },
            predictions=NumericSummary.from_dict(preds, "predictions") if preds else None,
            n_rows=int(data.get("n_rows", 0)),
        )

    def require(self, numeric: Sequence[str], categorical: Sequence[str]) -> None:
        """Refuse features the profile does not describe (or describes as the other type)."""
        lacking = [f"{n} (numeric)" for n in numeric if n not in self.numeric]
        lacking += [f"{c} (categorical)" for c in categorical if c not in self.categorical]
        if lacking:
            raise ProfileError(
                f"reference profile has no statistics for {', '.join(lacking)}; "
                "retrain so the bundle's profile matches the feature schema"
            )


def build_reference_profile(
    features: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    predictions: np.ndarray | None,
    sample_size: int = 5000,
    seed: int = 0,
) -> dict[str, Any]:
    """JSON-serialisable reference profile for ``metadata["reference_profile"]``.

    Numeric features and predictions keep a random sample of ``sample_size`` values (seeded,
    so a retrain on the same data writes the same profile); counts, moments and PSI bins use
    all rows.
    """
    if sample_size < 1:
        raise ValueError(f"sample_size must be positive, got {sample_size}")
    profile = ReferenceProfile.from_frame(
        features, numeric, categorical, predictions, sample_size=sample_size, seed=seed
    )
    return profile.to_dict()


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _float_or_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


VALIDATION_SAMPLE_ROWS = 20_000


def validation_sample(
    features: pd.DataFrame,
    probabilities: np.ndarray,
    labels: np.ndarray,
    rows: int = VALIDATION_SAMPLE_ROWS,
    seed: int = 0,
) -> dict[str, Any]:
    """Validation rows, column-wise (features with None for missing, the model's probability
    and the label), at most `rows` of them, for ``reference_profile["validation"]``."""
    index = np.arange(len(features))
    if len(index) > rows:
        index = np.sort(np.random.default_rng(seed).choice(index, rows, replace=False))
    part = features.iloc[index]
    columns = {
        name: [None if pd.isna(v) else (v if isinstance(v, str) else float(v)) for v in part[name]]
        for name in part.columns
    }
    return {
        "features": columns,
        "probability": np.round(np.asarray(probabilities, dtype=float)[index], 6).tolist(),
        "label": np.asarray(labels, dtype=int)[index].tolist(),
    }
