"""Label-free performance estimation and segments at scale (issue: < 5 s for 1,000,000
predictions), on generated customers scored with their true probabilities, half labelled."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from churn.datagen import CONTRACTS, INTERNET_SERVICES, PAYMENT_METHODS, generate_with_truth
from monitoring.performance.estimate import estimate_performance
from monitoring.performance.segments import SegmentSpec, analyse_segments

SEGMENTS = [
    SegmentSpec("contract_type", CONTRACTS),
    SegmentSpec("internet_service", INTERNET_SERVICES),
    SegmentSpec("payment_method", PAYMENT_METHODS),
    SegmentSpec("tenure", edges=(6, 12, 24, 48)),
]


def performance(row_counts: tuple[int, ...]) -> dict[str, Any]:
    """Seconds to estimate a window's performance (with reconciliation) and its segment table."""
    results: dict[str, Any] = {}
    for n in row_counts:
        frame, truth = generate_with_truth(n, seed=1)
        labels = frame["churned"].to_numpy(dtype=float)
        labels[::2] = np.nan  # half the window labelled
        started = time.perf_counter()
        estimate = estimate_performance(truth, truth, 0.5, labels=labels)
        estimated = time.perf_counter()
        report = analyse_segments(frame, SEGMENTS, truth, truth, labels)
        done = time.perf_counter()
        results[str(n)] = {
            "estimate_s": estimated - started,
            "segments_s": done - estimated,
            "total_s": done - started,
            "segments": len(report.segments),
            "estimated_auc": estimate.metric("roc_auc").estimate,
        }
    return results
