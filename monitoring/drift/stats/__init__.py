"""The statistical tests of the drift job, one per module on a shared base (``base``).

``ks`` (numeric), ``chisquare`` (categorical), ``missing`` (missing rate), ``psi`` (reported
beside each test) and ``correction`` (multiple testing). Each returns immutable values and
reads no file; ``monitoring.drift.detection`` combines them into reports.
"""

from monitoring.drift.stats.base import DriftTest, TestResult
from monitoring.drift.stats.chisquare import CategoricalResult, ChiSquare, categorical_statistics
from monitoring.drift.stats.correction import CORRECTIONS, Correction, correct_p_values
from monitoring.drift.stats.ks import KolmogorovSmirnov, ks_and_wasserstein, numeric_statistics
from monitoring.drift.stats.missing import missing_rate_p_value
from monitoring.drift.stats.psi import PSI_EPSILON, population_stability_index

__all__ = [
    "CORRECTIONS",
    "PSI_EPSILON",
    "CategoricalResult",
    "ChiSquare",
    "Correction",
    "DriftTest",
    "KolmogorovSmirnov",
    "TestResult",
    "categorical_statistics",
    "correct_p_values",
    "ks_and_wasserstein",
    "missing_rate_p_value",
    "numeric_statistics",
    "population_stability_index",
]
