"""Nightly scoring on real Spark (local[2]) with the session's real trained model.

One SparkSession for the module and one 50,000-row night scored once (module fixture); the
tests read what that night wrote. Reruns and failures use small tables of their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from churn.batch.job import (
    EXIT_TOO_MANY_INVALID,
    BatchInputError,
    BatchJob,
    BatchResult,
    run_batch,
    spark_session,
)
from churn.batch.output import OutputError
from churn.batch.validation import REASONS, validate_batch
from churn.bundle import load_bundle
from churn.datagen import generate_customers, generate_drifted
from churn.schema import FeatureSchema
from tests._tools import require_binary

pytestmark = pytest.mark.slow

NIGHT = date(2026, 11, 29)
ROWS = 50_000
# Bad rows planted in the night's table: row index -> (column, value, expected reason code).
BAD: dict[int, tuple[str, Any, str]] = {
    10: ("tenure", -3.0, "tenure:below_min"),
    20: ("num_products", 2.5, "num_products:not_integer"),
    30: ("num_products", 40.0, "num_products:above_max"),
    40: ("monthly_charges", float("inf"), "monthly_charges:not_finite"),
    50: ("contract_type", "Weekly", "contract_type:not_allowed"),
    60: ("contract_type", "Fortnightly", "contract_type:not_allowed"),
}


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    require_binary("java")
    session = spark_session("local[2]", {"spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()


def customers(rows: int, seed: int, drifted: bool = False) -> pd.DataFrame:
    """Generated customers with an id; half of them price-increased when ``drifted``."""
    frame = generate_customers(rows, seed=seed).drop(columns=["churned"])
    if drifted:
        shifted = generate_drifted("price_increase", rows // 2, seed=seed + 1)
        frame = pd.concat([frame.iloc[: rows - rows // 2], shifted.drop(columns=["churned"])])
    frame = frame.reset_index(drop=True)
    frame.insert(0, "customer_id", [f"c{seed}-{i}" for i in range(len(frame))])
    frame["num_products"] = frame["num_products"].astype(float)
    return frame


def write_parquet(frame: pd.DataFrame, directory: Path, files: int = 4) -> str:
    """Several files, so Spark reads several partitions and both cores score."""
    directory.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(frame)), files)):
        frame.iloc[part].to_parquet(directory / f"part-{i}.parquet", index=False)
    return str(directory)


@pytest.fixture(scope="module")
def night(spark: Any, trained_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The night's table (50,000 customers, half price-increased, planted bad rows) scored."""
    tmp = tmp_path_factory.mktemp("night")
    frame = customers(ROWS, seed=5, drifted=True)
    for row, (column, value, _) in BAD.items():
        frame.loc[row, column] = value
    job = BatchJob(
        input=write_parquet(frame, tmp / "customers"),
        output=str(tmp / "scores"),
        model=str(trained_model.bundle_dir),
        scoring_date=NIGHT,
        drift_sample_size=100_000,  # >= rows: the sample is every row
    )
    result = run_batch(spark, job)
    scores = pd.read_parquet(Path(job.output) / f"scoring_date={NIGHT.isoformat()}")
    return frame, job, result, scores.set_index("customer_id").loc[frame["customer_id"]]


# --------------------------------------------------------------------------- validation


def test_validation_reasons_follow_the_schema_rules(trained_model: Any) -> None:
    schema = load_bundle(trained_model.bundle_dir).schema
    frame = customers(8, seed=1)
    frame["tenure"] = frame["tenure"].astype(object)
    frame.loc[0, "tenure"] = "twelve"  # text in a numeric column (CSV)
    frame.loc[1, "tenure"] = -1
    frame.loc[2, "num_products"] = 1.5
    frame.loc[3, "contract_type"] = "Weekly"
    frame.loc[4, "monthly_charges"] = float("-inf")
    frame.loc[5, "total_charges"] = np.nan  # missing: imputed by the model
    checked = validate_batch(frame, schema)
    assert checked.reasons[:6].tolist() == [
        ["tenure:wrong_type"],
        ["tenure:below_min"],
        ["num_products:not_integer"],
        ["contract_type:not_allowed"],
        ["monthly_charges:not_finite"],
        None,
    ]
    assert checked.valid.tolist() == [False] * 5 + [True] * 3
    assert checked.messages[1] == "tenure: -1 is below the minimum 0"
    assert "'Weekly' is not one of" in str(checked.messages[3])
    assert len(checked.columns["tenure"]) == 3  # valid rows only, ready for the predictor
    strict = validate_batch(frame.iloc[5:6], schema, allow_missing=False)
    assert strict.reasons.tolist() == [["total_charges:missing"]]
    assert {r.split(":")[1] for row in checked.reasons for r in row or []} <= set(REASONS)


def test_validation_reads_the_rules_from_the_schema_not_the_code() -> None:
    schema = FeatureSchema.from_dict(
        {
            "target": "y",
            "features": [
                {"name": "age", "kind": "numeric", "min": 18, "max": 99, "integer": True},
                {"name": "plan", "kind": "categorical", "allowed": ["a", "b"]},
            ],
        }
    )
    frame = pd.DataFrame({"age": [17, 30, 100, 40.5], "plan": ["a", "c", "b", None]})
    checked = validate_batch(frame, schema)
    assert checked.reasons.tolist() == [
        ["age:below_min"],
        ["plan:not_allowed"],
        ["age:above_max"],
        ["age:not_integer"],
    ]


# --------------------------------------------------------------------------- the night


def test_probabilities_and_tiers_identical_to_the_api(night: Any, trained_model: Any) -> None:
    from app.model import load_model
    from app.settings import Settings

    frame, _, result, scores = night
    served = load_model(Settings(model_path=trained_model.model_path))
    assert result.backend == served.backend == "forest"
    valid = scores["status"].to_numpy() == "ok"
    rows = frame.loc[valid].replace({np.nan: None}).to_dict("records")
    answers = served.predict_rows(rows)
    got = scores.loc[valid, "churn_probability"].to_numpy()
    assert len(got) == ROWS - len(BAD)
    assert np.max(np.abs(got - np.asarray(answers.probabilities))) == 0.0
    assert scores.loc[valid, "risk_tier"].tolist() == answers.tiers
    assert scores.loc[valid, "churn_prediction"].astype(bool).tolist() == answers.decisions
    assert set(scores["model_version"]) == {served.version}
    assert scores["scored_at"].nunique() == 1


def test_bad_rows_get_a_status_and_reasons_instead_of_a_score(night: Any) -> None:
    _, job, result, scores = night
    expected: dict[str, int] = {}
    for _, _, reason in BAD.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert result.reasons == expected
    assert (result.rows, result.invalid, result.published) == (ROWS, len(BAD), True)
    bad = scores.iloc[list(BAD)]
    assert (bad["status"] == "invalid").all()
    assert bad["churn_probability"].isna().all() and bad["risk_tier"].isna().all()
    assert [list(r) for r in bad["error_reasons"]] == [[r] for _, _, r in BAD.values()]
    assert bad["error"].iloc[0] == "tenure: -3.0 is below the minimum 0"
    summary = json.loads(
        (Path(job.output) / f"scoring_date={NIGHT.isoformat()}" / "_summary.json").read_text()
    )
    assert summary["reasons"] == expected and summary["invalid"] == len(BAD)
    assert sum(summary["tiers"].values()) == ROWS - len(BAD)


def test_drift_verdicts_match_the_in_process_detector(night: Any, trained_model: Any) -> None:
    from monitoring.drift_detector import load_reference, run_drift_check

    frame, job, result, scores = night
    valid = (scores["status"] == "ok").to_numpy()
    current = frame.loc[valid].assign(probability=scores.loc[valid, "churn_probability"].values)
    reference = load_reference(trained_model.bundle_dir / "metadata.json")
    expected = run_drift_check(reference, current, "in process")
    partition = Path(job.output) / f"scoring_date={NIGHT.isoformat()}"
    report = json.loads((partition / "_drift.json").read_text())
    assert report["drifted_features"] == expected.drifted_features
    assert "monthly_charges" in expected.drifted_features  # the planted price increase
    for got, want in zip(report["features"], expected.features, strict=True):
        assert (got["feature"], got["status"], got["drifted"]) == (
            want.feature,
            want.status,
            want.drifted,
        )
        assert got["n_current"] == want.n_current
        assert got["p_value"] == pytest.approx(want.p_value, rel=1e-6, abs=1e-12)
    assert report["prediction"]["drifted"] == expected.prediction.drifted
    assert result.drift_detected == expected.drift_detected
    assert "<html" in (partition / "_drift.html").read_text()[:200]


def night_summary(frame: pd.DataFrame, scorer: Any, sample_size: int, parts: int) -> Any:
    """The night's table scored in ``parts`` partitions of 5,000-row batches, as the tasks do,
    their summaries merged on the way through the job's accumulator."""
    from churn.batch.job import PartitionSummaries
    from churn.batch.summary import ScoreSummary, merge_partitions, sample_fraction

    schema = scorer.schema
    template = ScoreSummary(
        tuple(schema.numeric), tuple(schema.categorical), sample_size,
        sample_fraction(len(frame), sample_size), seed=(0,),
    )  # fmt: skip
    accumulated: dict[int, Any] = PartitionSummaries().zero({})
    for part, rows in enumerate(np.array_split(np.arange(len(frame)), parts)):
        summary = template.fresh(seed=(0, part))
        for start in range(0, len(rows), 5_000):
            batch = frame.iloc[rows[start : start + 5_000]].reset_index(drop=True)
            scorer.score(batch, ["customer_id"], summary)
        accumulated = PartitionSummaries().addInPlace(accumulated, {part: summary})
        if part == 0:  # a task run twice (retry, speculation) is counted once
            accumulated = PartitionSummaries().addInPlace(accumulated, {part: summary})
    return merge_partitions(accumulated, template.fresh())


def test_bounded_sample_keeps_exact_counts(night: Any, trained_model: Any) -> None:
    from churn.batch.drift import population
    from churn.batch.scoring import BundlePayload, bundle_files, scorer_for

    frame, _, _, scores = night
    payload = BundlePayload(bundle_files(trained_model.bundle_dir), "forest", allow_missing=True)
    summary = night_summary(frame, scorer_for(payload), sample_size=2_000, parts=3)
    valid = (scores["status"] == "ok").to_numpy()
    table = frame.loc[valid]
    assert (summary.rows, summary.invalid) == (ROWS, len(BAD))
    profile = population(summary).profile
    tenure = profile.numeric["tenure"]
    assert tenure.values.size == 2_000 and tenure.sampled
    assert tenure.n == int(table["tenure"].notna().sum())
    assert tenure.mean == pytest.approx(table["tenure"].mean(), rel=1e-12)
    assert tenure.std == pytest.approx(table["tenure"].std(), rel=1e-9)
    # a uniform sample: its mean is within 5 standard errors of the population's
    assert abs(np.mean(tenure.values) - tenure.mean) < 5 * tenure.std / np.sqrt(2_000)
    charges = profile.numeric["total_charges"]
    assert charges.n_missing == int(table["total_charges"].isna().sum()) > 0
    payment = profile.categorical["payment_method"]
    assert payment.counts == table["payment_method"].value_counts().to_dict()
    assert payment.n_missing == int(table["payment_method"].isna().sum())
    probability = profile.predictions
    assert probability is not None and probability.values.size == 2_000
    assert probability.mean == pytest.approx(scores.loc[valid, "churn_probability"].mean())


def test_summaries_that_miss_rows_publish_nothing(
    spark: Any, trained_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: if a task's summary never reaches the driver, the counts and the drift
    would describe part of the night; the job refuses to publish."""
    from churn.batch import job as batch_job

    output = tmp_path / "scores"
    job = small_job(tmp_path, output, trained_model.bundle_dir, 400, seed=91)
    merge = batch_job.merge_partitions

    def lose_the_largest(parts: dict[int, Any], empty: Any) -> Any:
        lost = max(parts, key=lambda index: parts[index].rows)
        return merge({k: v for k, v in parts.items() if k != lost}, empty)

    monkeypatch.setattr(batch_job, "merge_partitions", lose_the_largest)
    with pytest.raises(OutputError, match=r"summarised [\d,]+ rows, the table has 400"):
        run_batch(spark, job)
    assert not (output / f"scoring_date={NIGHT.isoformat()}").exists()
    assert not any((output / "_staging").iterdir())


# --------------------------------------------------------------------------- reruns, failures


def small_job(tmp: Path, output: Path, model: Path, rows: int, seed: int, **kw: Any) -> BatchJob:
    return BatchJob(
        input=write_parquet(customers(rows, seed=seed), tmp / f"in-{seed}", files=2),
        output=str(output),
        model=str(model),
        scoring_date=NIGHT,
        **kw,
    )


def partition_ids(output: Path) -> set[str]:
    return set(pd.read_parquet(output / f"scoring_date={NIGHT.isoformat()}")["customer_id"])


def test_rerun_replaces_the_partition(spark: Any, trained_model: Any, tmp_path: Path) -> None:
    output = tmp_path / "scores"
    bundle = trained_model.bundle_dir
    run_batch(spark, small_job(tmp_path, output, bundle, 600, seed=21))
    other = small_job(tmp_path, output, bundle, 300, seed=22)
    run_batch(spark, BatchJob(**{**other.__dict__, "scoring_date": date(2026, 11, 28)}))
    rerun = run_batch(spark, small_job(tmp_path, output, bundle, 400, seed=23))
    assert rerun.published
    assert partition_ids(output) == {f"c23-{i}" for i in range(400)}
    table = pd.read_parquet(output)  # the whole table: both dates, nothing hidden leaks in
    assert sorted(table["scoring_date"].astype(str).unique()) == ["2026-11-28", "2026-11-29"]
    assert len(table) == 700
    assert not any((output / "_staging").iterdir()) and not any((output / "_replaced").iterdir())


def corrupt_data_pages(path: Path) -> None:
    """Flip bytes inside the first column's data page: the footer (row counts) still reads,
    the values do not, so the job fails while scoring and writing."""
    import pyarrow.parquet as pq

    start = pq.read_metadata(path).row_group(0).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    for i in range(start + 20, start + 60):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_failed_job_leaves_no_partial_partition(
    spark: Any, trained_model: Any, tmp_path: Path
) -> None:
    output = tmp_path / "scores"
    bundle = trained_model.bundle_dir
    run_batch(spark, small_job(tmp_path, output, bundle, 500, seed=31))
    before = sorted(p.name for p in (output / f"scoring_date={NIGHT.isoformat()}").iterdir())
    broken = small_job(tmp_path, output, bundle, 500, seed=32)
    corrupt_data_pages(Path(broken.input) / "part-1.parquet")
    with pytest.raises(OutputError, match="failed"):  # mid-write: the staging dir is dropped
        run_batch(spark, broken)
    after = sorted(p.name for p in (output / f"scoring_date={NIGHT.isoformat()}").iterdir())
    assert after == before and partition_ids(output) == {f"c31-{i}" for i in range(500)}
    with pytest.raises(OutputError):
        run_batch(spark, BatchJob(**{**broken.__dict__, "scoring_date": date(2026, 11, 30)}))
    assert not (output / "scoring_date=2026-11-30").exists()
    assert not any((output / "_staging").iterdir())
    # a file that is not Parquet at all is refused before anything is written
    (Path(broken.input) / "part-1.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    with pytest.raises(BatchInputError, match="cannot read the table"):
        run_batch(spark, broken)
    assert sorted(p.name for p in (output / f"scoring_date={NIGHT.isoformat()}").iterdir()) == (
        before
    )


def test_too_many_invalid_rows_keep_the_previous_partition(
    spark: Any, trained_model: Any, tmp_path: Path
) -> None:
    output = tmp_path / "scores"
    bundle = trained_model.bundle_dir
    run_batch(spark, small_job(tmp_path, output, bundle, 300, seed=41))
    frame = customers(300, seed=42)
    frame.loc[:9, "tenure"] = -1.0  # 10 of 300 rows: 3.3 % > 1 %
    job = BatchJob(
        input=write_parquet(frame, tmp_path / "bad"),
        output=str(output),
        model=str(bundle),
        scoring_date=NIGHT,
    )
    result: BatchResult = run_batch(spark, job)
    assert (result.published, result.exit_code) == (False, EXIT_TOO_MANY_INVALID)
    assert result.reasons == {"tenure:below_min": 10}
    assert partition_ids(output) == {f"c41-{i}" for i in range(300)}
    rejected = output / "_rejected" / f"scoring_date={NIGHT.isoformat()}"
    assert json.loads((rejected / "_summary.json").read_text())["invalid"] == 10


def test_csv_input_and_clear_errors(spark: Any, trained_model: Any, tmp_path: Path) -> None:
    frame = customers(200, seed=51)
    frame["tenure"] = frame["tenure"].astype(object)
    frame.loc[3, "tenure"] = "n/a"
    path = tmp_path / "customers.csv"
    frame.to_csv(path, index=False)
    model = str(trained_model.bundle_dir)
    job = BatchJob(input=str(path), output=str(tmp_path / "out"), model=model, scoring_date=NIGHT)
    result = run_batch(spark, job)
    assert result.reasons == {"tenure:wrong_type": 1} and result.scored == 199
    renamed = tmp_path / "renamed.csv"
    frame.rename(columns={"tenure": "tenur"}).to_csv(renamed, index=False)
    with pytest.raises(BatchInputError, match="no feature column 'tenure'; did you mean 'tenur'"):
        run_batch(spark, BatchJob(**{**job.__dict__, "input": str(renamed)}))
    with pytest.raises(BatchInputError, match="cannot read"):
        run_batch(spark, BatchJob(**{**job.__dict__, "input": str(tmp_path / "nope.parquet")}))
    with pytest.raises(BatchInputError, match="model bundle not found"):
        run_batch(spark, BatchJob(**{**job.__dict__, "model": str(tmp_path / "no-model")}))


def test_tampered_bundle_is_refused(spark: Any, trained_model: Any, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(trained_model.bundle_dir, copy)
    (copy / "model.pkl").write_bytes((copy / "model.pkl").read_bytes() + b"x")
    job = small_job(tmp_path, tmp_path / "scores", copy, 50, seed=61)
    with pytest.raises(BatchInputError, match="SHA-256 mismatch"):
        run_batch(spark, job)
    assert not (tmp_path / "scores").exists()


def test_cli_reports_and_exits(
    spark: Any, trained_model: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import score_batch

    job = small_job(tmp_path, tmp_path / "scores", trained_model.bundle_dir, 200, seed=71)
    argv = ["--input", job.input, "--output", job.output, "--model", job.model,
            "--date", "2026-11-29", "--config", str(trained_model.config_path)]  # fmt: skip
    assert score_batch.main(argv) == 0
    assert "200 rows, 200 scored, 0 invalid" in capsys.readouterr().out
    assert score_batch.main([*argv, "--key-columns", "customer_idd"]) == 2
    assert "no key column 'customer_idd'; did you mean 'customer_id'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        score_batch.main([*argv, "--max-invalid-share", "2"])


def test_scorer_in_process_matches_its_spark_columns(trained_model: Any) -> None:
    """The executor's scorer called directly: answers for valid rows, nulls for bad ones, and
    the summary the task sends: counts, and the features as the model saw them."""
    from churn.batch.scoring import SCORE_COLUMNS, BundlePayload, bundle_files, scorer_for
    from churn.batch.summary import ScoreSummary

    payload = BundlePayload(bundle_files(trained_model.bundle_dir), "forest", allow_missing=True)
    scorer = scorer_for(payload)
    assert scorer_for(payload) is scorer  # once per worker
    frame = customers(50, seed=81)
    frame.loc[0, "tenure"] = -2.0
    summary = ScoreSummary(
        tuple(scorer.schema.numeric), tuple(scorer.schema.categorical), 100, fraction=1.0
    )
    out = scorer.score(frame, ["customer_id"], summary)
    assert list(out.columns) == ["customer_id", *SCORE_COLUMNS]
    assert out.loc[0, "status"] == "invalid" and np.isnan(out.loc[0, "churn_probability"])
    assert out.loc[1:, "churn_probability"].between(0, 1).all()
    assert set(out.loc[1:, "risk_tier"]) <= {"HIGH", "MEDIUM", "LOW"}
    assert (summary.rows, summary.invalid, summary.reasons) == (50, 1, {"tenure:below_min": 1})
    assert summary.tiers == out.loc[1:, "risk_tier"].value_counts().to_dict()
    seen = summary.values()  # every valid row (fraction 1), in a random order
    assert sorted(seen["tenure"]) == sorted(frame.loc[1:, "tenure"])
    assert sorted(seen["churn_probability"]) == sorted(out.loc[1:, "churn_probability"])
    assert (
        summary.categories["contract_type"]
        == frame.loc[1:, "contract_type"].value_counts().to_dict()
    )


def test_thresholds_from_metadata_and_job_errors_read_well() -> None:
    from churn.batch.job import cause
    from churn.risk import Thresholds

    assert Thresholds.from_metadata({}) == Thresholds(0.75, 0.45, 0.5)
    assert Thresholds.from_metadata({"risk": {"high": 0.9}}, medium=0.2).medium == 0.2
    with pytest.raises(ValueError, match="must not exceed high"):
        Thresholds.from_metadata({"risk": {"high": 0.3, "medium": 0.4}})
    worker = RuntimeError(
        "An exception was thrown from the Python worker:\nTraceback (most recent call last):\n"
        '  File "x.py", line 1\nValueError: bad bundle\n\tat org.apache.spark.Foo(Foo.scala:1)'
    )
    assert cause(worker) == "ValueError: bad bundle"
    assert cause(RuntimeError("Path does not exist: /x\nmore")) == "Path does not exist: /x"


def test_model_from_the_registry_is_verified_like_a_bundle(trained_model: Any) -> None:
    from churn.batch.job import prepare_model

    job = BatchJob(
        input="unused",
        output="unused",
        model=f"models:/{trained_model.config.mlflow.model_name}/1",
        tracking_uri=trained_model.tracking_uri,
    )
    model = prepare_model(job)
    local = load_bundle(trained_model.bundle_dir)
    assert model.bundle.version == local.version
    assert model.payload.files["model.pkl"] == (trained_model.bundle_dir / "model.pkl").read_bytes()
    assert model.payload.backend == "forest"


def test_registry_errors_never_print_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from churn.batch.job import prepare_model
    from tests._tools import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    job = BatchJob(
        input="unused",
        output="unused",
        model="models:/churn-classifier@production",
        tracking_uri=f"http://batch:hunter2@127.0.0.1:{free_port()}",
    )
    with pytest.raises(BatchInputError, match="cannot fetch the model") as caught:
        prepare_model(job)
    assert "hunter2" not in str(caught.value)
