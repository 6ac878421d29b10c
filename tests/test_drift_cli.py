"""The drift CLI end to end: reference from a bundle's metadata, current from files or the log."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.ids import RandomHex
from churn.config import RiskConfig
from churn.datagen import generate_customers, generate_drifted
from churn.prediction_log import (
    PredictionBatch,
    create_tables,
    make_engine,
    record_feedback,
    write_batches,
)
from churn.profile import build_reference_profile
from churn.schema import FeatureSchema, FeatureSpec
from monitoring.drift.results import EXIT_CODES, EXIT_INSUFFICIENT
from monitoring.drift_detector import main, parse_duration
from monitoring.quality.live import compute_live_quality
from tests._tools import free_port
from tests.conftest import TrainedModel
from tests.metric_contract import DRIFT_METRICS

ROOT = Path(__file__).resolve().parents[1]
NUMERIC = ["tenure", "monthly_charges", "total_charges", "num_products"]
CATEGORICAL = ["contract_type", "payment_method", "internet_service"]
FEATURES = NUMERIC + CATEGORICAL


def fake_probability(frame: pd.DataFrame) -> np.ndarray:
    """A stand-in score that moves with the features (the model is not under test here)."""
    logit = 1.2 * (frame["contract_type"] == "Month-to-month") - 0.04 * frame["tenure"]
    return (1 / (1 + np.exp(-(logit + 0.01 * (frame["monthly_charges"] - 65))))).to_numpy()


@pytest.fixture(scope="module")
def bundle_metadata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A metadata.json shaped like the training pipeline's: schema plus reference profile."""
    data = generate_customers(20_000, seed=42)
    schema = FeatureSchema(
        target="churned",
        features=[FeatureSpec(name=n, kind="numeric") for n in NUMERIC]
        + [FeatureSpec(name=n, kind="categorical") for n in CATEGORICAL],
    )
    metadata = {
        "model_version": "7",
        "feature_schema": schema.to_dict(),
        "reference_profile": build_reference_profile(
            data[FEATURES], NUMERIC, CATEGORICAL, fake_probability(data)
        ),
    }
    path = tmp_path_factory.mktemp("bundle") / "metadata.json"
    path.write_text(json.dumps(metadata))
    return path


def write_batch(tmp_path: Path, scenario: str, n_rows: int = 3000, seed: int = 5) -> Path:
    path = tmp_path / f"{scenario}.csv"
    generate_drifted(scenario, n_rows, seed).to_csv(path, index=False)
    return path


def run_cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def test_no_drift_exits_0_and_writes_reports(
    bundle_metadata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = write_batch(tmp_path, "none")
    out_json, out_html = tmp_path / "r" / "drift.json", tmp_path / "r" / "drift.html"
    code = run_cli(
        "--reference", bundle_metadata, "--current", current, "--json", out_json, "--html", out_html
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "no feature drift in 7 features" in printed
    assert all(name in printed for name in FEATURES)
    report = json.loads(out_json.read_text())
    assert report["drift_detected"] is False
    assert [f["feature"] for f in report["features"]] == FEATURES
    assert report["prediction"] is None  # a raw batch has no probabilities
    page = out_html.read_text()
    assert page.count("<img ") == 7
    assert 'class="verdict ok"' in page


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("price_increase", "monthly_charges"),
        ("new_payment_method", "payment_method"),
        ("month_to_month_shift", "contract_type"),
    ],
)
def test_drift_scenarios_exit_1_and_name_the_feature(
    bundle_metadata: Path, tmp_path: Path, scenario: str, expected: str
) -> None:
    current = write_batch(tmp_path, scenario)
    out_json, out_html = tmp_path / "drift.json", tmp_path / "drift.html"
    code = run_cli(
        "--reference", bundle_metadata, "--current", current, "--json", out_json, "--html", out_html
    )
    assert code == 1
    report = json.loads(out_json.read_text())
    assert expected in report["drifted_features"]
    page = out_html.read_text()
    assert 'class="verdict drift"' in page
    assert f'<tr class="drift"><td>{expected}</td>' in page
    if scenario == "new_payment_method":
        entry = next(f for f in report["features"] if f["feature"] == "payment_method")
        assert entry["unseen_categories"]["Digital wallet"] == pytest.approx(0.25, abs=0.03)


def test_parquet_current_and_csv_reference(tmp_path: Path) -> None:
    reference = tmp_path / "reference.csv"
    generate_customers(5000, seed=1).to_csv(reference, index=False)
    current = tmp_path / "current.parquet"
    generate_drifted("price_increase", 2000, seed=2).to_parquet(current)
    out_json = tmp_path / "drift.json"
    config = ROOT / "config.yaml"
    args = ["--reference", reference, "--config", config, "--current", current]
    assert run_cli(*args, "--json", out_json) == 1
    report = json.loads(out_json.read_text())
    # The feature lists come from the config: the target column is not a feature.
    assert [f["feature"] for f in report["features"]] == FEATURES
    assert "monthly_charges" in report["drifted_features"]


def test_missing_feature_column_exits_2_with_one_line(
    bundle_metadata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = tmp_path / "current.csv"
    generate_customers(500, seed=3).drop(columns="tenure").to_csv(current, index=False)
    assert run_cli("--reference", bundle_metadata, "--current", current) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "tenure" in err
    assert str(current) in err


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d / "absent.csv", "not found"),
        (lambda d: _write(d / "garbage.parquet", "not parquet"), "cannot be read"),
    ],
)
def test_unreadable_current_exits_2(
    bundle_metadata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], make, fragment: str
) -> None:
    path = make(tmp_path)
    assert run_cli("--reference", bundle_metadata, "--current", path) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert str(path) in err
    assert "Traceback" not in err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_metadata_without_profile_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metadata = _write(tmp_path / "metadata.json", json.dumps({"feature_schema": {}}))
    current = write_batch(tmp_path, "none", 200)
    assert run_cli("--reference", metadata, "--current", current) == 2
    assert "reference_profile" in capsys.readouterr().err
    broken = _write(tmp_path / "broken.json", "{not json")
    assert run_cli("--reference", broken, "--current", current) == 2
    assert "not readable as JSON" in capsys.readouterr().err


def test_python_dash_m_exit_codes_and_no_traceback(bundle_metadata: Path, tmp_path: Path) -> None:
    current = write_batch(tmp_path, "price_increase", 1500)
    base = [sys.executable, "-m", "monitoring.drift_detector", "--reference", str(bundle_metadata)]
    drift = subprocess.run(
        [*base, "--current", str(current)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert drift.returncode == 1, drift.stderr
    assert "DRIFT in" in drift.stdout
    error = subprocess.run(
        [*base, "--current", str(tmp_path / "nope.csv")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert error.returncode == 2
    assert "Traceback" not in error.stderr
    assert "nope.csv" in error.stderr


# --------------------------------------------------------------------------- prediction log


def fill_log(url: str, frame: pd.DataFrame, labelled: int, age: timedelta = timedelta(0)) -> None:
    """Log `frame` as requests of 100 customers spread over the ten hours before now - age;
    the first `labelled` predictions get their outcome."""
    engine = make_engine(url)
    create_tables(engine)
    now = (datetime.now(UTC) - age).timestamp()
    probability = fake_probability(frame)
    values = frame[FEATURES].astype(object).where(frame[FEATURES].notna(), None)
    ids = RandomHex()
    batches = [
        PredictionBatch(
            batch_id=ids.batch_id(),
            created_at=now - 60 * (start // 100 % 600),
            model_version="7",
            columns={k: values[k].iloc[start : start + 100].tolist() for k in FEATURES},
            probabilities=probability[start : start + 100].tolist(),
            tiers=["high" if p > 0.5 else "low" for p in probability[start : start + 100]],
        )
        for start in range(0, len(frame), 100)
    ]
    write_batches(engine, batches)
    predictions = [pid for batch in batches for pid in batch.ids]
    for i in range(labelled):
        record_feedback(engine, predictions[i], bool(frame["churned"].iloc[i]))
    engine.dispose()


def test_since_reads_the_prediction_log(bundle_metadata: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    fill_log(url, generate_drifted("price_increase", 1500, seed=9), labelled=400)
    fill_log(url, generate_customers(3000, seed=8), labelled=0, age=timedelta(days=3))
    out_json = tmp_path / "drift.json"
    code = run_cli(
        "--reference", bundle_metadata, "--since", "24h", "--database-url", url, "--json", out_json
    )
    report = json.loads(out_json.read_text())
    assert code == 1
    assert report["current_rows"] == 1500  # the old rows are outside the window
    assert "monthly_charges" in report["drifted_features"]
    assert report["prediction"]["drifted"] is True
    live = report["live_quality"]
    assert live["labelled_samples"] == 400
    assert 0.5 < live["auc"] <= 1.0
    assert live["precision"] is not None
    assert live["recall"] is not None


def test_an_empty_window_is_insufficient_data_never_no_drift(
    bundle_metadata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing log with no row in the window: nothing was judged, and it says so."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    fill_log(url, generate_customers(300, seed=8), labelled=0, age=timedelta(days=3))
    out_json, out_html = tmp_path / "drift.json", tmp_path / "drift.html"
    code = run_cli(
        "--reference", bundle_metadata, "--since", "1h", "--database-url", url,
        "--json", out_json, "--html", out_html,
    )  # fmt: skip
    assert code == EXIT_INSUFFICIENT == 3
    printed = capsys.readouterr().out
    assert "insufficient data: nothing judged" in printed
    assert "no feature drift" not in printed
    report = json.loads(out_json.read_text())
    assert report["verdict"] == "insufficient_data"
    assert report["summary"].startswith("insufficient data: nothing judged")
    assert {f["status"] for f in report["features"]} == {"insufficient_data"}
    assert 'class="verdict insufficient_data"' in out_html.read_text()


def test_a_few_judged_features_are_not_insufficient_data(
    bundle_metadata: Path, tmp_path: Path
) -> None:
    """One feature with enough values is a verdict; the others are listed as unjudged."""
    current = generate_customers(300, seed=4)
    current.loc[:, ["tenure", "monthly_charges", "total_charges"]] = np.nan
    path = tmp_path / "current.csv"
    current.to_csv(path, index=False)
    out_json = tmp_path / "drift.json"
    code = run_cli(
        "--reference", bundle_metadata, "--current", path, "--min-rows", "250",
        "--json", out_json,
    )  # fmt: skip
    report = json.loads(out_json.read_text())
    assert code == 1  # three numeric columns went entirely missing: the missing rate drifted
    assert report["verdict"] == "drift"
    assert "insufficient" not in report["summary"].split(";")[0]


def test_a_missing_sqlite_log_is_an_error_and_creates_nothing(
    bundle_metadata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo" / "predicton_log.db"
    code = run_cli(
        "--reference", bundle_metadata, "--since", "1h", "--database-url", f"sqlite:///{missing}"
    )
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "not found" in err
    assert err.count("\n") == 1
    assert not missing.exists()
    assert not missing.parent.exists()


def test_help_documents_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for code, meaning in EXIT_CODES.items():
        assert f"{code}  " in text
        assert f"{code}  {meaning}" in text


def test_live_quality_uses_the_bundles_decision_threshold(
    bundle_metadata: Path, tmp_path: Path
) -> None:
    """Precision and recall are taken at the threshold the served model decided with."""
    metadata = json.loads(bundle_metadata.read_text())
    url = f"sqlite:///{tmp_path / 'log.db'}"
    fill_log(url, generate_customers(800, seed=12), labelled=800)
    recalls = {}
    for threshold in (0.2, 0.8):
        path = tmp_path / f"metadata-{threshold}.json"
        path.write_text(json.dumps({**metadata, "risk": {"decision_threshold": threshold}}))
        out_json = tmp_path / f"drift-{threshold}.json"
        run_cli("--reference", path, "--since", "1d", "--database-url", url, "--json", out_json)
        live = json.loads(out_json.read_text())["live_quality"]
        assert live["threshold"] == threshold
        recalls[threshold] = live["recall"]
    assert recalls[0.2] > recalls[0.8]
    default = tmp_path / "default.json"
    run_cli(
        "--reference", bundle_metadata, "--since", "1d", "--database-url", url, "--json", default
    )
    assert json.loads(default.read_text())["live_quality"]["threshold"] == (
        RiskConfig().decision_threshold
    )


def test_an_invalid_risk_section_is_refused(
    bundle_metadata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metadata = json.loads(bundle_metadata.read_text())
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps({**metadata, "risk": {"decision_threshold": 7}}))
    current = write_batch(tmp_path, "none", 200)
    assert run_cli("--reference", path, "--current", current) == 2
    err = capsys.readouterr().err
    assert "decision_threshold" in err
    assert str(path) in err


# --------------------------------------------------------------------------- Pushgateway


class _Recorder(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, str]]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.received.append(("PUT", self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def pushgateway() -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    """A stand-in Pushgateway that records what is pushed (the wire format is what matters)."""
    port = free_port()
    received: ClassVar[list[tuple[str, str, str]]] = []
    handler = type("Handler", (_Recorder,), {"received": received})
    server = HTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{port}", received
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_pushes_the_contracted_metric_names(
    bundle_metadata: Path, tmp_path: Path, pushgateway: tuple[str, list]
) -> None:
    address, received = pushgateway
    url = f"sqlite:///{tmp_path / 'log.db'}"
    fill_log(url, generate_drifted("new_payment_method", 1200, seed=4), labelled=300)
    code = run_cli(
        "--reference",
        bundle_metadata,
        "--since",
        "2d",
        "--database-url",
        url,
        "--pushgateway",
        address,
    )
    assert code == 1
    (method, path, body) = received[0]
    assert (method, path) == ("PUT", "/metrics/job/drift_monitor")
    samples = {
        (s.name, s.labels.get("feature", "")): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    names = {name for name, _ in samples}
    assert names >= DRIFT_METRICS
    assert samples[("drift_feature_drifted", "payment_method")] == 1
    assert samples[("drift_feature_drifted", "tenure")] == 0
    assert samples[("drift_detected", "")] == 1
    assert samples[("drift_insufficient_data", "")] == 0
    assert samples[("live_labelled_samples", "")] == 300
    assert all(v == v for v in samples.values())  # no NaN


def test_live_metrics_are_not_pushed_without_enough_labels(
    bundle_metadata: Path, tmp_path: Path, pushgateway: tuple[str, list]
) -> None:
    address, received = pushgateway
    url = f"sqlite:///{tmp_path / 'log.db'}"
    fill_log(url, generate_customers(600, seed=13), labelled=10)
    assert (
        run_cli(
            "--reference",
            bundle_metadata,
            "--since",
            "1d",
            "--database-url",
            url,
            "--pushgateway",
            address,
        )
        == 0
    )
    body = received[0][2]
    assert "live_labelled_samples 10.0" in body
    assert "live_auc" not in body
    assert "live_recall" not in body
    assert "drift_detected 0.0" in body


def test_a_blind_window_is_pushed_as_insufficient_data(
    bundle_metadata: Path, tmp_path: Path, pushgateway: tuple[str, list]
) -> None:
    """Nothing judged: no drift is claimed and drift_insufficient_data says why."""
    address, received = pushgateway
    url = f"sqlite:///{tmp_path / 'log.db'}"
    fill_log(url, generate_customers(50, seed=14), labelled=0)
    args = ["--reference", bundle_metadata, "--since", "1d", "--database-url", url]
    assert run_cli(*args, "--pushgateway", address) == EXIT_INSUFFICIENT
    body = received[0][2]
    assert "drift_insufficient_data 1.0" in body
    assert "drift_detected 0.0" in body


def test_unreachable_pushgateway_exits_2(
    bundle_metadata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = write_batch(tmp_path, "none", 300)
    port = free_port()
    assert (
        run_cli(
            "--reference",
            bundle_metadata,
            "--current",
            current,
            "--pushgateway",
            f"127.0.0.1:{port}",
        )
        == 2
    )
    assert "pushgateway" in capsys.readouterr().err


# --------------------------------------------------------------------------- small parts


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["24", "h", "-1h", "0m", "3w"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        parse_duration(text)


def test_live_quality_skips_what_is_undefined() -> None:
    rng = np.random.default_rng(0)
    score = rng.random(500)
    outcome = (rng.random(500) < score).astype(float)
    frame = pd.DataFrame({"probability": score, "outcome": outcome})
    full = compute_live_quality(frame, threshold=0.5)
    assert full.labelled_samples == 500
    assert full.auc is not None
    assert full.auc > 0.7
    few = compute_live_quality(frame.head(20), threshold=0.5)
    assert few.auc is None
    assert few.precision is None
    assert few.labelled_samples == 20
    one_class = compute_live_quality(frame.assign(outcome=0.0), threshold=0.5)
    assert one_class.auc is None
    assert one_class.recall is None
    assert one_class.precision == 0.0
    unlabelled = compute_live_quality(frame.assign(outcome=np.nan), threshold=0.5)
    assert unlabelled.labelled_samples == 0
    assert unlabelled.auc is None


def test_reads_the_metadata_the_training_pipeline_writes(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    """The real bundle, not a stand-in: schema and profile as train() stores them."""
    metadata = trained_model.bundle_dir / "metadata.json"
    out_json = tmp_path / "drift.json"
    current = write_batch(tmp_path, "month_to_month_shift", 2000)
    assert run_cli("--reference", metadata, "--current", current, "--json", out_json) == 1
    report = json.loads(out_json.read_text())
    assert "contract_type" in report["drifted_features"]
    assert len(report["features"]) == len(FEATURES)
