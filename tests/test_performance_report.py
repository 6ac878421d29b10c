"""Estimated performance wired in like the rest: the trained bundle carries its calibrator,
segments and validation rows; the drift job reports, renders and pushes the estimate; the
closed loop treats an estimated AUC below the gate as a retrain trigger."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churn.bundle import load_bundle
from churn.calibration import Calibrator
from churn.data import prepare_features
from churn.datagen import generate_drifted
from churn.profile import ReferenceProfile
from monitoring.closed_loop.decision import ESTIMATED_AUC_TRIGGER, decide
from monitoring.drift.results import DriftRun
from monitoring.drift_detector import main
from monitoring.performance.estimate import estimate_performance
from monitoring.performance.results import PerformanceReport
from monitoring.performance.segments import analyse_segments
from tests.conftest import TrainedModel


def test_the_bundle_carries_calibration_segments_and_validation_rows(
    trained_model: TrainedModel,
) -> None:
    metadata = load_bundle(trained_model.bundle_dir).metadata
    calibrator = Calibrator.from_metadata(metadata["calibration"])
    assert calibrator.method in {"isotonic", "sigmoid"}
    assert calibrator.ece_after is not None and calibrator.ece_after < 0.05
    assert {s["feature"] for s in metadata["monitoring"]["segments"]} >= {"contract_type"}
    validation = metadata["reference_profile"]["validation"]
    assert len(validation["label"]) == len(validation["probability"]) > 100
    assert set(validation["features"]) == set(trained_model.config.features.all)
    assert metadata["gate"]["min_val_auc"] == trained_model.config.gate.min_val_auc
    assert "calibration_ece" in trained_model.result.metrics


@pytest.fixture(scope="module")
def scored_window(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled window of the concept-shift scenario, scored by the trained bundle."""
    bundle = load_bundle(trained_model.bundle_dir)
    frame = generate_drifted("fibre_competitor", 3000, seed=21)
    schema = bundle.schema
    x = prepare_features(frame[schema.names], schema.numeric, schema.categorical)
    frame["probability"] = bundle.pipeline.predict_proba(x)[:, 1]
    frame["outcome"] = frame.pop(trained_model.config.data.target_column).astype(float)
    path = tmp_path_factory.mktemp("window") / "window.csv"
    frame.to_csv(path, index=False)
    return path


def test_drift_report_has_the_estimated_performance_section(
    trained_model: TrainedModel,
    scored_window: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_json, out_html = tmp_path / "drift.json", tmp_path / "drift.html"
    code = main(
        [
            "--reference",
            str(trained_model.bundle_dir / "metadata.json"),
            "--current",
            str(scored_window),
            "--json",
            str(out_json),
            "--html",
            str(out_html),
        ]
    )
    assert code in (0, 1)
    perf = json.loads(out_json.read_text())["performance"]
    assert perf["rows"] == 3000 and perf["labelled"] == 3000
    estimated = {m["name"]: m for m in perf["estimated"]}
    assert set(estimated) == {"roc_auc", "precision", "recall", "f1", "accuracy", "churn_rate"}
    assert estimated["roc_auc"]["low"] < estimated["roc_auc"]["estimate"]
    reconciled = {m["name"]: m for m in perf["reconciled"]}
    # fibre customers churn more than any input shows: the realised churn rate leaves the band
    assert reconciled["churn_rate"]["realised"] > reconciled["churn_rate"]["high"]
    assert perf["concept_shift"] is True
    segments = perf["segments"]["rows"]
    labels = {(s["feature"], s["value"]) for s in segments}
    assert ("internet_service", "Fiber optic") in labels
    allowed = {"Month-to-month", "One year", "Two year", "other"}
    assert {v for f, v in labels if f == "contract_type"} <= allowed
    assert any(s["verdict"] == "under_predicted" for s in segments)
    page = out_html.read_text()
    assert "Estimated performance (no labels needed)" in page
    assert "predicted and observed churn rate per segment" in page
    printed = capsys.readouterr().out
    assert "estimated performance without labels" in printed
    assert "CONCEPT SHIFT" in printed


def _run_with(performance: PerformanceReport | None) -> DriftRun:
    empty = ReferenceProfile.from_frame(pd.DataFrame({"x": [1.0, 2.0]}), ["x"], [], None)
    return DriftRun(
        features=(),
        prediction=None,
        live=None,
        reference=empty,
        reference_label="ref",
        current_label="cur",
        current_rows=5000,
        alpha=0.05,
        correction="bonferroni",
        min_rows=100,
        finished_at=datetime.now(UTC),
        performance=performance,
    )


def _report(auc_quality: float, gate: float) -> PerformanceReport:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"contract_type": ["One year"] * 5000})
    truth = rng.random(5000)
    # a score that only partly follows the truth: its AUC estimated from calibrated truth
    score = auc_quality * truth + (1 - auc_quality) * rng.random(5000)
    return PerformanceReport(
        estimate_performance(score, truth, 0.5),
        analyse_segments(frame, [], score, truth),
        "identity",
        gate_auc=gate,
    )


def test_closed_loop_retrains_when_the_estimated_auc_falls_below_the_gate() -> None:
    low = _report(0.3, gate=0.88)
    assert low.estimated_auc_below_gate
    decision = decide(_run_with(low), labelled=1000, min_labelled=200)
    assert decision.action == "retrain"
    assert ESTIMATED_AUC_TRIGGER in decision.drifted
    high = _report(1.0, gate=0.6)
    assert not high.estimated_auc_below_gate
    assert decide(_run_with(high), labelled=1000, min_labelled=200).action != "retrain"
