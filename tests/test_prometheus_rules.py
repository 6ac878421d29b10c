"""Prometheus config, recording rules and alerts: validated and unit-tested with promtool.

promtool does the real work (monitoring/tests/*.yml hold the rule unit tests); these tests
run it, check that every alert and recording rule is actually covered by those unit tests,
and show that the checks can fail (a broken rule or a changed threshold is caught).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._tools import require_binary

REPO_ROOT = Path(__file__).resolve().parents[1]
MONITORING = REPO_ROOT / "monitoring"
CONFIG = MONITORING / "prometheus.yml"
ALERTS = MONITORING / "alerts.yml"
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
UNIT_TESTS = sorted((MONITORING / "tests").glob("*.yml"))

SEVERITIES = {"critical", "warning"}
REQUIRED_ANNOTATIONS = {"summary", "description", "runbook"}


def promtool(*args: str | Path, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """Run promtool and capture its output (it reports on both stdout and stderr)."""
    binary = require_binary("promtool")
    return subprocess.run(
        [binary, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"{result.stdout}\n{result.stderr}"


def load_rules(path: Path) -> list[dict[str, Any]]:
    """All rules of a rule file, flattened over groups."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in load_rules(ALERTS) if "alert" in rule]


def recording_names() -> list[str]:
    return [rule["record"] for path in RULE_FILES for rule in load_rules(path) if "record" in rule]


def unit_test_cases() -> list[dict[str, Any]]:
    return [case for path in UNIT_TESTS for case in yaml.safe_load(path.read_text())["tests"]]


def test_monitoring_files_exist() -> None:
    assert CONFIG.is_file()
    assert ALERTS.is_file()
    assert RULE_FILES, "no recording rule files in monitoring/rules/"
    assert UNIT_TESTS, "no promtool unit tests in monitoring/tests/"


def test_prometheus_config_is_valid() -> None:
    """promtool also loads the rule_files the config names, so this checks they resolve."""
    result = promtool("check", "config", CONFIG)
    assert result.returncode == 0, output(result)
    assert "SUCCESS" in output(result)
    assert "rule files found" in output(result)


def test_rule_files_are_valid() -> None:
    result = promtool("check", "rules", ALERTS, *RULE_FILES)
    assert result.returncode == 0, output(result)


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", *UNIT_TESTS)
    assert result.returncode == 0, output(result)
    assert "FAILED" not in output(result)


def test_config_scrapes_the_contract_jobs() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"churn-api", "pushgateway", "prometheus"}
    assert jobs["churn-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == ["pushgateway:9091"]
    # Without honor_labels the drift metrics would arrive as job="pushgateway".
    assert jobs["pushgateway"]["honor_labels"] is True
    # Relative rule paths keep the config usable both in compose and from the checkout.
    assert all(not Path(p).is_absolute() for p in config["rule_files"])


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_is_actionable(rule: dict[str, Any]) -> None:
    """Every alert waits (`for`), says how bad it is and where to start."""
    assert rule.get("for"), f"{rule['alert']}: set `for` so one bad scrape does not page"
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    missing = REQUIRED_ANNOTATIONS - set(rule.get("annotations", {}))
    assert not missing, f"{rule['alert']}: missing annotations {sorted(missing)}"


def test_expected_alerts_are_defined() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= {
        "ChurnApiDown",
        "ChurnApiHighErrorRatio",
        "ChurnApiHighP95Latency",
        "FeatureDriftDetected",
        "PredictionDistributionShift",
        "HighRiskRateSpike",
        "DriftCheckStale",
        "LiveAucBelowGate",
        "EstimatedAucBelowGate",
        "SegmentUnderPredicted",
        "ModelAliasMismatch",
        "DriftCheckBlind",
        "ChallengerRolledBack",
        "ChallengerWorse",
    }


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in unit_test_cases():
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a firing unit test"
    assert names - quiet == set(), "alerts without a non-firing unit test"


def test_every_recording_rule_has_an_expected_value_test() -> None:
    exprs = " ".join(
        check["expr"] for case in unit_test_cases() for check in case.get("promql_expr_test", [])
    )
    untested = [name for name in recording_names() if name not in exprs]
    assert untested == [], "recording rules without a promql_expr_test"


def test_broken_rule_file_fails_the_check(tmp_path: Path) -> None:
    """The check is not vacuous: an unbalanced bracket in one alert is reported."""
    broken = tmp_path / "alerts.yml"
    text = ALERTS.read_text()
    assert "churn:predict_latency_seconds:p95_5m > 0.25" in text
    broken.write_text(
        text.replace(
            "churn:predict_latency_seconds:p95_5m > 0.25",
            "rate(churn:predict_latency_seconds:p95_5m > 0.25",
        )
    )
    result = promtool("check", "rules", broken)
    assert result.returncode != 0
    assert "alerts.yml" in output(result)


def test_changed_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests pin thresholds: lowering the AUC gate makes them fail."""
    shutil.copytree(MONITORING / "rules", tmp_path / "rules")
    shutil.copytree(MONITORING / "tests", tmp_path / "tests")
    text = ALERTS.read_text()
    assert 'live_auc{job="drift_monitor"} < 0.88' in text
    (tmp_path / "alerts.yml").write_text(
        text.replace('live_auc{job="drift_monitor"} < 0.88', 'live_auc{job="drift_monitor"} < 0.80')
    )
    result = promtool("test", "rules", tmp_path / "tests" / "alerts_test.yml")
    assert result.returncode != 0
    assert "LiveAucBelowGate" in output(result)
