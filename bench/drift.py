"""The drift check's benchmark (moved here from the drift module: speed targets live in bench/).

``bench.inprocess.drift`` runs it for several row counts; ``make bench`` reports the figures.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from churn.profile import ReferenceProfile
from monitoring.drift.detection import detect_feature_drift


def benchmark_feature_drift(n_rows: int = 1_000_000, seed: int = 0) -> dict[str, float]:
    """Seconds to check ``n_rows`` × 7 features (4 numeric, 3 categorical), DataFrame vs
    DataFrame and DataFrame vs a 5,000-value profile."""
    rng = np.random.default_rng(seed)

    def frame(shift: float) -> pd.DataFrame:
        cats = np.array(["a", "b", "c", "d"], dtype=object)
        data: dict[str, Any] = {f"x{i}": rng.normal(shift, 1.0, n_rows) for i in range(4)}
        data.update({f"c{i}": cats[rng.integers(0, 4, n_rows)] for i in range(3)})
        return pd.DataFrame(data)

    numeric, categorical = [f"x{i}" for i in range(4)], [f"c{i}" for i in range(3)]
    reference, current = frame(0.0), frame(0.01)
    started = time.perf_counter()
    profile = ReferenceProfile.from_frame(reference, numeric, categorical, sample_size=5000)
    profiled = time.perf_counter()
    detect_feature_drift(reference, current, numeric, categorical)
    full = time.perf_counter()
    detect_feature_drift(profile, current, numeric, categorical)
    done = time.perf_counter()
    return {
        "rows": float(n_rows),
        "build_profile_s": profiled - started,
        "frame_vs_frame_s": full - profiled,
        "profile_vs_frame_s": done - full,
    }
