"""The rollout evaluation at scale: the evidence on N labelled pairs (agreement, DeLong's test,
log-loss and Brier differences, 16 segments per model) and the paired bootstrap's 2,000
resamples, on generated customers scored by two correlated models (the true probability plus
each model's own noise)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.performance import SEGMENTS
from churn.config import RolloutConfig
from churn.datagen import generate_with_truth
from churn.risk import risk_tiers
from monitoring.rollout import evidence as ev
from monitoring.rollout.stats import paired_bootstrap_auc


def _paired(n: int) -> Any:
    frame, truth = generate_with_truth(n, seed=2)
    rng = np.random.default_rng(3)
    logit = np.log(truth / (1 - truth))
    a = np.round(1 / (1 + np.exp(-(logit + rng.normal(0, 0.2, n)))), 4)
    b = np.round(1 / (1 + np.exp(-(logit + rng.normal(0, 0.2, n)))), 4)
    return frame.assign(
        champion_probability=a,
        challenger_probability=b,
        champion_tier=risk_tiers(a, 0.75, 0.45),
        challenger_tier=risk_tiers(b, 0.75, 0.45),
        outcome=frame["churned"].astype(float),
        served_role="champion",
    )


def rollout_evaluation(row_counts: tuple[int, ...], bootstrap_rows: int) -> dict[str, Any]:
    rule = RolloutConfig()
    results: dict[str, Any] = {}
    for n in row_counts:
        frame = _paired(n)
        started = time.perf_counter()
        labelled = ev.labelled(frame)
        agreement = ev.agreement(frame, 0.5)
        auc = ev.auc_difference(labelled, rule)
        ev.loss_differences(labelled, rule.confidence)
        segments = ev.segment_rows(frame, SEGMENTS, 100)
        done = time.perf_counter()
        if auc is None or agreement is None:
            raise RuntimeError("the generated pairs hold one class only")
        results[str(n)] = {
            "evidence_s": done - started,
            "segments": len(segments),
            "auc_difference": auc.difference,
            "standard_error": auc.standard_error,
        }
    frame = _paired(bootstrap_rows)
    y = frame["outcome"].to_numpy(dtype=int)
    started = time.perf_counter()
    boot = paired_bootstrap_auc(
        frame["champion_probability"].to_numpy(),
        frame["challenger_probability"].to_numpy(),
        y,
        resamples=rule.bootstrap_resamples,
    )
    results["bootstrap"] = {
        "rows": bootstrap_rows,
        "resamples": rule.bootstrap_resamples,
        "seconds": time.perf_counter() - started,
        "standard_error": boot.standard_error,
    }
    return results
