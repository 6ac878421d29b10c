"""`make score`: a CSV replayed to a real running API (uvicorn), answers written to a CSV."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from churn.datagen import generate_customers
from churn.prediction_log import read_predictions
from tests.conftest import ROOT, TrainedModel
from tests.processes import api_server

sys.path.insert(0, str(ROOT / "scripts"))
import score_csv

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def server(
    trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("score")
    database_url = f"sqlite:///{tmp / 'log.db'}"
    env = {
        **os.environ,
        "MODEL_PATH": str(trained_model.model_path),
        "MODEL_REQUIRED": "true",
        "DATABASE_URL": database_url,
        "PREDICTION_LOG_FLUSH_INTERVAL": "0.05",
        "LOG_LEVEL": "WARNING",
        "ENVIRONMENT": "test",
    }
    with api_server(env, tmp / "uvicorn.log") as url:
        yield url, database_url


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "score_csv.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_csv_is_scored_in_batches_with_feedback(server: tuple[str, str], tmp_path: Path) -> None:
    url, database_url = server
    frame = generate_customers(230, seed=5).dropna()
    frame.insert(0, "customer_id", [f"C{i:04d}" for i in range(len(frame))])
    source = tmp_path / "customers.csv"
    frame.to_csv(source, index=False)

    result = _run(
        str(source), "--url", url, "--batch-size", "100", "--feedback", "churned", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "reports" / "customers_scored.csv"
    assert f"scored {len(frame)} rows from {source} -> reports/customers_scored.csv" in (
        result.stdout
    )
    assert f"{len(frame)} outcomes sent as feedback" in result.stdout
    assert "[score] 100/" in result.stderr  # progress per batch

    scored = pd.read_csv(out)
    assert list(scored["customer_id"]) == list(frame["customer_id"])  # order and ids kept
    assert scored["churn_probability"].between(0, 1).all()
    assert set(scored["risk_tier"]) <= {"HIGH", "MEDIUM", "LOW"}
    assert scored["prediction_id"].str.len().eq(32).all()

    logged = read_predictions(database_url).set_index("prediction_id")
    joined = logged.loc[scored["prediction_id"]]
    assert (joined["outcome"].to_numpy() == scored["churned"].to_numpy()).all()


def test_a_refused_batch_names_the_rows_and_writes_nothing(
    server: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = server
    frame = generate_customers(30, seed=6).dropna()
    frame.loc[frame.index[12], "tenure"] = -5  # outside the feature schema's range
    source = tmp_path / "bad.csv"
    frame.to_csv(source, index=False)
    result = _run(str(source), "--url", url, "--batch-size", "10", cwd=tmp_path)
    assert result.returncode == 1
    assert "rows 12-21 of" in result.stderr and "10 rows scored before it" in result.stderr
    assert "HTTP 422" in result.stderr and "tenure" in result.stderr
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


def test_csv_problems_are_named_before_anything_is_sent(
    server: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = server
    frame = generate_customers(5, seed=7).rename(columns={"tenure": "tenur"})
    source = tmp_path / "typo.csv"
    frame.to_csv(source, index=False)
    result = _run(str(source), "--url", url, cwd=tmp_path)
    assert result.returncode == 2
    assert "no column for feature 'tenure' (did you mean 'tenur'?)" in result.stderr

    unreachable = _run(str(source), "--url", "http://user:secret@127.0.0.1:9", cwd=tmp_path)
    assert unreachable.returncode == 1
    assert "cannot reach the API at http://127.0.0.1:9" in unreachable.stderr
    assert "secret" not in unreachable.stderr


def test_blank_cells_become_null_and_numbers_are_parsed() -> None:
    features = [("tenure", "numeric"), ("monthly_charges", "numeric"), ("plan", "categorical")]
    rows = [
        {"tenure": "3", "monthly_charges": "95.5", "plan": "Two year"},
        {"tenure": "", "monthly_charges": "NaN", "plan": ""},
    ]
    assert score_csv.to_customers(rows, 0, features, "x.csv") == [
        {"tenure": 3, "monthly_charges": 95.5, "plan": "Two year"},
        {"tenure": None, "monthly_charges": None, "plan": None},
    ]
    with pytest.raises(score_csv.InputError, match=r"x.csv row 3, column tenure: 'abc'"):
        score_csv.to_customers([rows[0], {**rows[0], "tenure": "abc"}], 0, features, "x.csv")


def test_outcomes_are_read_like_training_labels() -> None:
    assert [score_csv.parse_outcome(v) for v in ("1", "yes", "True", "0", "no", "", "?")] == [
        True,
        True,
        True,
        False,
        False,
        None,
        None,
    ]
