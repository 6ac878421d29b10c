"""The drift job's historical entry point, kept thin: ``python -m monitoring.drift_detector``.

The README, the Makefile, compose and the workflows call this module, and other code imports
the public API from it; the work lives in the ``monitoring.drift`` package (see its
docstring). ``python -m monitoring.drift`` is the same CLI.
"""

from __future__ import annotations

import sys

from monitoring.drift.cli import build_parser, main
from monitoring.drift.detection import (
    as_profile,
    detect_feature_drift,
    detect_prediction_drift,
    run_drift_check,
)
from monitoring.drift.push import push_metrics
from monitoring.drift.results import (
    EXIT_CODES,
    EXIT_DRIFT,
    EXIT_ERROR,
    EXIT_INSUFFICIENT,
    EXIT_OK,
    DriftInputError,
    DriftReport,
    DriftRun,
    EffectThresholds,
)
from monitoring.drift.sources import (
    ReferenceSource,
    load_current_from_log,
    load_reference,
    parse_duration,
)
from monitoring.drift.stats import (
    CORRECTIONS,
    categorical_statistics,
    correct_p_values,
    ks_and_wasserstein,
    missing_rate_p_value,
    numeric_statistics,
    population_stability_index,
)

__all__ = [
    "CORRECTIONS",
    "EXIT_CODES",
    "EXIT_DRIFT",
    "EXIT_ERROR",
    "EXIT_INSUFFICIENT",
    "EXIT_OK",
    "DriftInputError",
    "DriftReport",
    "DriftRun",
    "EffectThresholds",
    "ReferenceSource",
    "as_profile",
    "build_parser",
    "categorical_statistics",
    "correct_p_values",
    "detect_feature_drift",
    "detect_prediction_drift",
    "ks_and_wasserstein",
    "load_current_from_log",
    "load_reference",
    "main",
    "missing_rate_p_value",
    "numeric_statistics",
    "parse_duration",
    "population_stability_index",
    "push_metrics",
    "run_drift_check",
]

if __name__ == "__main__":
    sys.exit(main())
