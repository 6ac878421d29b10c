"""Our label-free estimate beside NannyML's CBPE on the same windows, against the truth.

NannyML is a reference only (it pins libraries this project does not), so it runs in its own
virtualenv (`make bench-cbpe` makes it) and the two sides meet in files:

    python -m bench.cbpe_compare prepare DIR   # project venv: model, windows, our estimates
    <nannyml venv>/python bench/cbpe_compare.py nannyml DIR
    python -m bench.cbpe_compare compare DIR   # the table (also written to DIR/compare.json)

The model is the configured pipeline trained as `make train` trains it (40,000 customers, the
calibrator on 10,000 validation rows, which are also NannyML's reference); the windows are the
generator's covariate-shift scenarios, 5,000 customers each, 20 seeds, with their labels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

WINDOW = 5000
SEEDS = 20
SCENARIOS = ("price_increase", "new_payment_method", "month_to_month_shift")
METRICS = ("roc_auc", "recall")
TOLERANCE = {"roc_auc": 0.015, "recall": 0.03}


def prepare(out: Path) -> None:
    import pandas as pd

    from churn.calibration import fit_calibrator
    from churn.config import load_config
    from churn.data import prepare_features
    from churn.datagen import generate_drifted_with_truth, generate_with_truth
    from churn.pipeline import build_pipeline
    from monitoring.performance.estimate import estimate_performance

    out.mkdir(parents=True, exist_ok=True)
    config = load_config("config.yaml")
    numeric, categorical = config.features.numeric, config.features.categorical
    frame, _ = generate_with_truth(50_000, seed=42)
    x = prepare_features(frame[numeric + categorical], numeric, categorical)
    y = frame["churned"].to_numpy()
    pipeline = build_pipeline(config).fit(x.iloc[:40_000], y[:40_000])
    p_val = pipeline.predict_proba(x.iloc[40_000:])[:, 1]
    calibrator = fit_calibrator(p_val, y[40_000:])
    threshold = config.risk.decision_threshold
    pd.DataFrame(
        {"p": p_val, "y_pred": (p_val >= threshold).astype(int), "y": y[40_000:]}
    ).to_parquet(out / "reference.parquet")
    windows, ours = [], []
    for scenario in SCENARIOS:
        for seed in range(SEEDS):
            batch, _ = generate_drifted_with_truth(scenario, WINDOW, seed=2000 + seed)
            xb = prepare_features(batch[numeric + categorical], numeric, categorical)
            p = pipeline.predict_proba(xb)[:, 1]
            labels = batch["churned"].to_numpy(dtype=float)
            estimate = estimate_performance(p, calibrator.apply(p), threshold, labels=labels)
            realised = {m.name: m.realised for m in estimate.reconciled}
            ours.append(
                {
                    "window": len(ours),
                    "scenario": scenario,
                    **{f"estimated_{m}": estimate.metric(m).estimate for m in METRICS},
                    **{f"realised_{m}": realised[m] for m in METRICS},
                }
            )
            windows.append(
                pd.DataFrame({"p": p, "y_pred": (p >= threshold).astype(int), "y": labels})
            )
    pd.concat(windows, ignore_index=True).to_parquet(out / "analysis.parquet")
    (out / "ours.json").write_text(json.dumps(ours, indent=1))
    print(f"prepared {len(ours)} windows of {WINDOW:,} in {out}")


def nannyml(out: Path) -> None:
    """Runs in NannyML's own virtualenv: CBPE fitted on the reference, one chunk per window."""
    import os

    os.environ["NML_DISABLE_USAGE_LOGGING"] = "1"  # NannyML phones home otherwise
    import nannyml as nml
    import pandas as pd

    reference = pd.read_parquet(out / "reference.parquet")
    analysis = pd.read_parquet(out / "analysis.parquet")
    cbpe = nml.CBPE(
        y_pred_proba="p",
        y_pred="y_pred",
        y_true="y",
        problem_type="classification_binary",
        metrics=list(METRICS),
        chunk_size=WINDOW,
    )
    cbpe.fit(reference)
    result = cbpe.estimate(analysis.drop(columns=["y"])).filter(period="analysis").to_df()
    rows = []
    for i in range(len(result)):
        rows.append(
            {
                "window": i,
                **{f"estimated_{m}": float(result[(m, "value")].iloc[i]) for m in METRICS},
            }
        )
    (out / "nannyml.json").write_text(json.dumps(rows, indent=1))
    print(f"NannyML CBPE estimated {len(rows)} windows")


def compare(out: Path) -> dict[str, dict[str, float]]:
    ours = json.loads((out / "ours.json").read_text())
    theirs = {r["window"]: r for r in json.loads((out / "nannyml.json").read_text())}
    table: dict[str, dict[str, float]] = {}
    for name, source in (("ours", {r["window"]: r for r in ours}), ("nannyml", theirs)):
        for metric in METRICS:
            errors = [
                abs(source[r["window"]][f"estimated_{metric}"] - r[f"realised_{metric}"])
                for r in ours
                if r["window"] in source
            ]
            table.setdefault(name, {})[f"{metric}_mean_abs_error"] = sum(errors) / len(errors)
            table[name][f"{metric}_within_tolerance"] = sum(
                e <= TOLERANCE[metric] for e in errors
            ) / len(errors)
    (out / "compare.json").write_text(json.dumps(table, indent=1))
    for name, figures in table.items():
        print(name, " ".join(f"{k}={v:.4f}" for k, v in figures.items()))
    return table


if __name__ == "__main__":
    command, directory = sys.argv[1], Path(sys.argv[2])
    {"prepare": prepare, "nannyml": nannyml, "compare": compare}[command](directory)
