"""The benchmark suite runs end to end (bench/): a tiny smoke configuration, no speed asserted.

Every server (this service, mlflow models serve, the blog-style baseline, the ceiling) is
started for real on the session's small model, loaded with wrk for a second, and stopped;
the JSON must have every section with finite numbers and RESULTS.md must render from it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import run as bench_run
from tests._tools import require_binary
from tests.conftest import TrainedModel

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _numbers(node: Any, path: str = "") -> list[tuple[str, float]]:
    if isinstance(node, bool):
        return []
    if isinstance(node, int | float):
        return [(path, float(node))]
    if isinstance(node, dict):
        return [x for k, v in node.items() for x in _numbers(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [x for i, v in enumerate(node) for x in _numbers(v, f"{path}[{i}]")]
    return []


@pytest.fixture(scope="module")
def smoke(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One --quick run into a temp dir; returns that dir (latest.json, PNG, RESULTS.md)."""
    require_binary("wrk")
    require_binary("valgrind")  # the rollout section's instruction counts (bench.instructions)
    out = tmp_path_factory.mktemp("bench")
    code = bench_run.main(
        [
            "--quick",
            "--bundle",
            str(trained_model.bundle_dir),
            "--tracking-uri",
            trained_model.tracking_uri,
            "--config",
            str(trained_model.config_path),
            "--train-rows",
            "600",
            "--out",
            str(out),
            "--md",
            str(out / "RESULTS.md"),
        ]
    )
    assert code == 0
    return out


def test_every_section_is_measured_with_finite_numbers(smoke: Path) -> None:
    results = json.loads((smoke / "latest.json").read_text())
    servers = results["http"]["servers"]
    assert set(servers) == {"service", "mlflow", "blog", "ceiling"}
    for name, server in servers.items():
        assert server["predict"]["requests"] > 0, name
        assert server["startup_s"] > 0 and server["memory"]["worker_mb"] > 0, name
        assert "health_under_load" in server, name
    assert set(servers["service"]["batch"]) == {"100", "1000"}
    v2 = servers["service"]["v2"]  # the Open Inference Protocol, 1 and 1,000 rows per call
    assert set(v2) == {"1", "1000"}
    assert all(v2[size]["requests"] > 0 and v2[size]["errors"] == 0 for size in v2)
    assert v2["1000"]["rows_per_s"] == v2["1000"]["rps"] * 1000
    assert set(servers["mlflow"]["batch"]) == {"100", "1000"}
    assert set(results["inprocess"]["timings"]) == {"forest", "onnx", "sklearn"}
    parity = results["inprocess"]["parity"]
    assert parity["forest"]["rows"] > 0 and parity["onnx"]["rows"] > 0
    # the compiled forest is the pipeline's own arithmetic; ONNX rounds thresholds
    assert parity["forest"]["max_abs_diff"] <= 1e-9
    assert parity["forest"]["tier_agreement"] == 1.0
    explain = servers["service"]["explain"]
    assert explain["explained"]["requests"] > 0 and explain["explained"]["errors"] == 0
    assert explain["batch_explained"]["rows_per_s"] > 0
    assert results["explain_inprocess"]["max_additivity_error"] <= 1e-6
    assert "explain_1_row_p99_explained_over_plain" in results["ratios"]
    assert results["training"]["rows"] == 600 and results["training"]["train_s"] > 0
    assert set(results["drift"]) == {"5000", "20000"}
    assert set(results["performance"]) == {"5000", "20000"}
    assert all(
        math.isfinite(p["total_s"]) and p["segments"] > 0 for p in results["performance"].values()
    )
    assert {
        "predict_rps_service_over_ceiling",
        "predict_rps_service_over_mlflow",
        "v2_1_rps_over_predict",
        "v2_1000_rows_per_s_over_batch",
    } <= set(results["ratios"])
    # alias moves through a real mlflow server: by webhook (polling at 600 s could not have
    # done it) and by polling alone
    moves = results["webhook"]
    assert (moves["webhook"]["moves"], moves["polling"]["moves"]) == (2, 1)
    assert moves["webhook"]["max_s"] < moves["webhook_poll_interval_s"]
    assert "alias_move_polling_over_webhook_time" in results["ratios"]
    log = servers["service"]["prediction_log"]
    # every load's predictions were counted; none of their log records was dropped
    assert log["predictions"] >= servers["service"]["predict"]["requests"] and log["dropped"] == 0
    assert set(results["rollout_evaluation"]) == {"5000", "20000", "bootstrap"}
    assert results["rollout_evaluation"]["bootstrap"]["resamples"] == 2000
    # progressive delivery: one server switched by the registry between the four phases
    phases = results["rollout"]["phases"]
    assert set(phases) == {"off", "shadow", "canary", "routing"}
    for name, phase in phases.items():
        assert phase["predict_rps"] > 0 and phase["batch_rows_per_s"] > 0, name
        assert phase["predict_errors"] == phase["batch_errors"] == 0, name
    assert phases["off"]["challenger_share"] == 0
    assert phases["canary"]["challenger_share"] > 0 and phases["routing"]["challenger_share"] > 0
    assert phases["canary"]["shadow_scored"] > 0 and phases["routing"]["shadow_scored"] == 0
    assert phases["shadow"]["shadow_scored"] > 0
    assert "predict_cost" in phases["shadow"] and "batch_cost" in phases["canary"]
    # the same phases counted under Callgrind: each phase did the work it should
    counted = results["rollout"]["instructions"]
    for path in ("predict", "batch"):
        for name in ("off", "shadow", "canary", "routing"):
            figures = counted[path][name]
            assert figures["instructions_per_request"] > 0 and figures["ll_misses_per_request"] > 0
    # A 1,000-row batch counts steadily (within a fraction of a per cent from run to run):
    # routing to a second model is never free, and pairs add the champion's scores to it.
    # (/predict moves by a few per cent with how concurrent callers fall into micro-batches.)
    batch = counted["batch"]
    assert 0 < batch["routing"]["extra_instructions"] < batch["canary"]["extra_instructions"]
    assert counted["predict"]["routing"]["challenger_rows"] > 0
    assert len(results["targets"]) == 20
    assert {t["mark"] for t in results["targets"]} <= {"pass", "short", "n/a"}
    numbers = _numbers(results)
    assert numbers, "no figures at all"
    bad = [path for path, value in numbers if not math.isfinite(value)]
    assert not bad, f"non-finite figures: {bad}"


def test_the_service_answers_without_errors(smoke: Path) -> None:
    """A benchmark of a service that answers 4xx/5xx would measure error pages."""
    service = json.loads((smoke / "latest.json").read_text())["http"]["servers"]["service"]
    assert service["predict"]["errors"] == 0
    assert all(b["errors"] == 0 for b in service["batch"].values())


def test_results_md_renders_every_section_and_the_plot(smoke: Path) -> None:
    text = (smoke / "RESULTS.md").read_text()
    for heading in (
        "## Targets",
        "## 1. `/predict`",
        "## 2. `/health`",
        "## 3. Batches",
        "## 3b. Open Inference Protocol (V2)",
        "## 4. In-process inference",
        "## 5. Training, drift check, start-up, memory",
        "## 6. Explanations",
        "## 8. Progressive delivery",
    ):
        assert heading in text
    assert "smoke run" in text
    assert "![throughput and p99 per server](throughput.png)" in text
    assert (smoke / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_rerenders_from_the_json(smoke: Path, tmp_path: Path) -> None:
    from bench import report

    results = json.loads((smoke / "latest.json").read_text())
    md = tmp_path / "RESULTS.md"
    report.main([str(smoke / "latest.json"), "--md", str(md)])
    assert md.read_text().startswith("# Benchmark results")
    assert [t["mark"] for t in report.targets(results)] == [t["mark"] for t in results["targets"]]


def test_unknown_skip_names_are_refused() -> None:
    with pytest.raises(SystemExit, match="unknown"):
        bench_run.main(["--quick", "--skip", "mlfow"])


def spark_result() -> dict[str, Any]:
    """A bench.spark_batch result of the shape run() returns (figures made up)."""
    from bench import spark_batch

    names = list(spark_batch.LABELS)
    return {
        "rows": 10_000_000,
        "subset_rows": 1_000_000,
        "arrow_batch_rows": 100_000,
        "load_average_1_5_15min": {"start": [1.0], "subset_start": [2.0], "end": [1.5]},
        "seconds": dict.fromkeys(names, 2.0),
        "cpu_seconds_per_million_rows": dict.fromkeys(names, 3.0),
        "rows_per_second": dict.fromkeys(names, 500_000.0),
        "ratios": {"score_batch_vs_spark_udf": 4.0},
        "score_batch_phase_seconds": {"score_batch_full": {"count": 0.5}},
        "targets": {"full_run_seconds": {"value": 60.0}, "vs_spark_udf": {"value": 4.0}},
    }


def test_spark_section_is_written_once_with_its_marks(tmp_path: Path) -> None:
    from bench import spark_batch

    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\nother sections\n")
    spark_batch.write_markdown(spark_result(), md)
    spark_batch.write_markdown(spark_result(), md)  # a second run replaces, never adds
    text = md.read_text()
    assert text.startswith("# Benchmark results\n\nother sections\n")
    assert text.count(spark_batch.SPARK_START) == 1 == text.count(spark_batch.SPARK_END)
    assert "| 60.0 s | ✅ pass |" in text and "| 4.00× | ❌ fail |" in text
    assert "at start [1.0]" in text


def test_rerendered_report_keeps_the_spark_section(smoke: Path, tmp_path: Path) -> None:
    from bench import report, spark_batch

    md = tmp_path / "RESULTS.md"
    md.write_text((smoke / "RESULTS.md").read_text())
    spark_batch.write_markdown(spark_result(), md)
    before = report.section(md.read_text(), spark_batch.SPARK_START, spark_batch.SPARK_END)
    report.main([str(smoke / "latest.json"), "--md", str(md)])
    after = md.read_text()
    assert after.startswith("# Benchmark results") and "## 5. Training" in after
    assert before is not None
    assert report.section(after, spark_batch.SPARK_START, spark_batch.SPARK_END) == before


def test_a_window_without_its_count_is_an_error_never_zero() -> None:
    from bench.instructions import InstructionCountError, sequence, summarise, window_label

    order = sequence(("off", "routing"))
    assert order == ["off", "routing", "off"]  # every phase between two off windows
    windows = {
        window_label(index, phase, path): {
            "requests": 2,
            "rows": 2,
            "challenger_rows": 0,
            "rows_per_model_call": 2.0,
        }
        for index, phase in enumerate(order)
        for path in ("predict", "batch")
    }
    events = {"Ir": 100, "ILmr": 1, "DLmr": 2, "DLmw": 3}
    counted = {label: dict(events) for label in windows}
    # off drifts from 100 to 120 instructions: routing (121) is judged against their mean
    counted[window_label(2, "off", "batch")]["Ir"] = 120
    counted[window_label(1, "routing", "batch")]["Ir"] = 121
    summary = summarise(counted, windows, order, 1.0)
    assert summary["batch"]["routing"]["extra_instructions"] == pytest.approx(0.1)
    assert summary["batch"]["off"]["drift"] == pytest.approx(0.2)
    assert summary["predict"]["routing"]["extra_instructions"] == 0
    assert summary["predict"]["off"]["ll_misses_per_request"] == 3
    del counted[window_label(1, "routing", "batch")]  # Callgrind wrote no dump for it
    with pytest.raises(InstructionCountError, match="routing/batch"):
        summarise(counted, windows, order, 1.0)
    with pytest.raises(InstructionCountError, match="between two off windows"):
        summarise(counted, windows, ["off", "routing"], 1.0)
