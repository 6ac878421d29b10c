"""Where nightly scoring runs: the Spark operator manifest, its RBAC and the scorer image.

A CRD has no schema in kubernetes-validate, so the ScheduledSparkApplication is checked
against deploy/spark/scheduledsparkapplication.schema.json (the operator's v1beta2 fields
this project uses, unknown keys refused); the built-in kinds go through kubernetes-validate
like deploy/k8s. Each check also gets a broken copy, so a validator that accepts everything
fails here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.test_delivery_configs import run, tool, validate_k8s

ROOT = Path(__file__).resolve().parents[1]
SPARK_DIR = ROOT / "deploy/spark"
MANIFEST = SPARK_DIR / "scheduledsparkapplication.yaml"
SCHEMA = json.loads((SPARK_DIR / "scheduledsparkapplication.schema.json").read_text())


def application() -> dict[str, Any]:
    return dict(yaml.safe_load(MANIFEST.read_text()))


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)]


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_spark_application_matches_the_operator_fields() -> None:
    assert schema_errors(application()) == []


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        (("spec", "template"), "mode", "clustr"),
        (("spec", "template", "executor"), "instancse", 4),  # typo'd key
        (("spec", "template", "driver"), "memory", "two gigs"),
        (("spec",), "schedule", "nightly"),
        (("spec", "template"), "mainApplicationFile", "/app/score_batch.py"),
    ],
)
def test_schema_rejects_a_broken_copy(where: tuple[str, ...], key: str, value: Any) -> None:
    doc = copy.deepcopy(application())
    node = doc
    for part in where:
        node = node[part]
    node[key] = value
    assert schema_errors(doc), f"{'.'.join(where)}.{key}={value!r} was accepted"


def test_spark_application_runs_the_scorer_with_valid_flags() -> None:
    import score_batch

    template = application()["spec"]["template"]
    assert template["mainApplicationFile"] == "local:///app/score_batch.py"
    args = score_batch.build_parser().parse_args(template["arguments"])
    assert args.model == "models:/churn-classifier@production"
    assert application()["spec"]["concurrencyPolicy"] == "Forbid"  # never two nights at once
    from churn.batch.job import REDACTION_REGEX

    assert template["sparkConf"]["spark.redaction.regex"] == REDACTION_REGEX


def test_signing_key_comes_from_a_secret_never_from_spark_conf() -> None:
    template = application()["spec"]["template"]
    assert not any("SIGNING" in k.upper() for k in template["sparkConf"])
    for role in ("driver", "executor"):
        refs = [e["secretRef"]["name"] for e in template[role].get("envFrom", [])]
        assert refs == ["churn-batch-secrets"], role
        assert template[role]["securityContext"]["runAsNonRoot"] is True


def test_rbac_matches_the_kubernetes_schemas_and_the_driver_account() -> None:
    docs = list(yaml.safe_load_all((SPARK_DIR / "rbac.yaml").read_text()))
    for doc in docs:
        validate_k8s(doc)
    account = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    assert application()["spec"]["template"]["driver"]["serviceAccount"] == account
    broken = copy.deepcopy(next(d for d in docs if d["kind"] == "Role"))
    broken["rules"][0]["verbz"] = broken["rules"][0].pop("verbs")
    with pytest.raises(Exception, match="verb"):
        validate_k8s(broken)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((SPARK_DIR / "kustomization.yaml").read_text())
    on_disk = {p.name for p in SPARK_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_scorer_dockerfile_passes_hadolint() -> None:
    result = run([tool("hadolint"), str(SPARK_DIR / "Dockerfile")])
    assert result.returncode == 0, result.stdout + result.stderr
    text = (SPARK_DIR / "Dockerfile").read_text()
    assert "USER 185" in text and "PYSPARK_PYTHON=/opt/venv/bin/python" in text


def test_pyspark_pin_matches_the_manifest_spark_version() -> None:
    pins = dict(
        line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )  # fmt: skip
    assert application()["spec"]["template"]["sparkVersion"] == pins["pyspark"]
    assert f"apache/spark:{pins['pyspark']}-" in (SPARK_DIR / "Dockerfile").read_text()
