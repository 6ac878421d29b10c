"""In-process sections: compiled forest and ONNX Runtime vs the sklearn pipeline, training time,
drift check time."""

from __future__ import annotations

import functools
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bench.http import say as http_say
from churn.bundle import ModelBundle
from churn.datagen import generate_customers
from churn.forest import ForestPredictor, UnsupportedModel
from churn.inference import OnnxPredictor, Predictor, SklearnPredictor, frame_to_columns
from churn.risk import risk_tiers

ROOT = Path(__file__).resolve().parents[1]


def customers(n: int, seed: int = 3) -> pd.DataFrame:
    """n generated customers (with the generator's realistic missing values)."""
    return generate_customers(n, seed=seed)


def _timed(call: Callable[[], object], repeats: int) -> dict[str, float]:
    call()  # warm-up: first calls allocate
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return {
        "repeats": repeats,
        "median_ms": 1000 * statistics.median(times),
        "p99_ms": 1000 * float(np.percentile(times, 99)),
    }


def inference(
    bundle: ModelBundle, sizes: tuple[int, ...], repeats: dict[int, int], parity_rows: int
) -> dict[str, Any]:
    """Seconds per call for each batch size on every backend, and each one's agreement with
    the sklearn pipeline."""
    if bundle.onnx_bytes is None:
        raise ValueError(f"{bundle.directory}: the bundle has no ONNX export to compare")
    schema = bundle.schema
    sklearn = SklearnPredictor(schema, bundle.pipeline)
    fast: dict[str, Predictor] = {}
    try:
        fast["forest"] = ForestPredictor(schema, bundle.pipeline)
    except UnsupportedModel as exc:
        http_say(f"compiled forest not measured: {exc}")
    fast["onnx"] = OnnxPredictor(schema, bundle.onnx_bytes, threads=1)
    backends: dict[str, Predictor] = {**fast, "sklearn": sklearn}
    timings: dict[str, dict[str, Any]] = {name: {} for name in backends}
    for size in sizes:
        columns = frame_to_columns(customers(size), schema)
        for name, predictor in backends.items():
            timing = _timed(functools.partial(predictor.predict_proba, columns), repeats[size])
            timing["rows_per_s"] = size / (timing["median_ms"] / 1000)
            timings[name][str(size)] = timing
    return {
        "onnx_threads": 1,
        "sklearn_n_jobs": getattr(bundle.pipeline[-1], "n_jobs", None),
        "timings": timings,
        "parity": {name: parity(bundle, p, sklearn, parity_rows) for name, p in fast.items()},
    }


def explanations(
    bundle: ModelBundle, sizes: tuple[int, ...], repeats: dict[int, int]
) -> dict[str, Any]:
    """Milliseconds per call of the exact explainer (churn.explain) beside the served
    backend's prediction for the same rows, and the worst additivity error seen."""
    from churn.explain import checked_explainer
    from churn.inference import choose_predictor
    from churn.risk import Thresholds

    explainer = checked_explainer(bundle)
    predictor, _ = choose_predictor(bundle, "auto", Thresholds.from_metadata(bundle.metadata))
    out: dict[str, Any] = {"method": explainer.method, "backend": predictor.backend}
    worst = 0.0
    for size in sizes:
        prepared = predictor.prepare(frame_to_columns(customers(size, seed=7), bundle.schema))
        explain = _timed(functools.partial(explainer.explain, prepared), repeats[size])
        predict = _timed(functools.partial(predictor.predict_prepared, prepared), repeats[size])
        got = explainer.explain(prepared)
        total = got.base_value + got.contributions.sum(axis=1)
        worst = max(worst, float(np.max(np.abs(total - got.probabilities))))
        explain["rows_per_s"] = size / (explain["median_ms"] / 1000)
        out[str(size)] = {"explain": explain, "predict": predict}
    out["max_additivity_error"] = worst
    return out


def parity(
    bundle: ModelBundle, predictor: Predictor, sklearn: SklearnPredictor, rows: int
) -> dict[str, Any]:
    """max |Δp| and tier/decision agreement of a backend vs sklearn on generated customers."""
    columns = frame_to_columns(customers(rows, seed=5), bundle.schema)
    expected, got = sklearn.predict_proba(columns), predictor.predict_proba(columns)
    risk = bundle.metadata.get("risk") or {"high": 0.75, "medium": 0.45, "decision_threshold": 0.5}
    same_tier = risk_tiers(expected, risk["high"], risk["medium"]) == risk_tiers(
        got, risk["high"], risk["medium"]
    )
    threshold = risk["decision_threshold"]
    return {
        "rows": rows,
        "max_abs_diff": float(np.max(np.abs(expected - got))),
        "mean_abs_diff": float(np.mean(np.abs(expected - got))),
        "tiers_identical": int(np.sum(same_tier)),
        "tier_agreement": float(np.mean(same_tier)),
        "decision_agreement": float(np.mean((expected >= threshold) == (got >= threshold))),
    }


def training(config_path: Path, rows: int, work_dir: Path) -> dict[str, Any]:
    """Train with `config_path` (paths moved into `work_dir`) on `rows` generated customers.

    Runs ``train.py`` in a child process, as ``make train`` does; reports the recipe's own
    time (load, fit, evaluate, ONNX export, MLflow logging) and the wall time with start-up.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    data = work_dir / "churn_train.csv"
    generate_customers(rows, seed=42).to_csv(data, index=False)
    raw = yaml.safe_load(config_path.read_text())
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{work_dir / 'mlflow.db'}"
    raw["data"]["train_path"] = str(data)
    raw["export"]["artifacts_dir"] = str(work_dir / "artifacts")
    raw["export"]["candidates_dir"] = str(work_dir / "candidates")  # never the caller's
    raw["export"]["model_card"] = str(work_dir / "MODEL_CARD.md")
    config = work_dir / "config.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(config)],
        cwd=work_dir,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"train.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    found = re.search(r" in ([0-9.]+)s:", done.stdout)
    model = raw["model"]
    return {
        "rows": rows,
        "model": f"{model['type']}, {model.get('n_estimators')} trees, max_depth "
        f"{model.get('max_depth')}",
        "train_s": float(found.group(1)) if found else wall,
        "wall_s_with_interpreter_start": wall,
    }


def drift(row_counts: tuple[int, ...]) -> dict[str, Any]:
    """Seconds for the drift check on n rows × 7 features (monitoring's own benchmark)."""
    from bench.drift import benchmark_feature_drift

    out: dict[str, Any] = {}
    for n in row_counts:
        figures = benchmark_feature_drift(n_rows=n, seed=0)
        figures["check_s"] = max(figures["frame_vs_frame_s"], figures["profile_vs_frame_s"])
        out[str(n)] = figures
    return out
