"""MLflow registry webhooks (issue 16.3): an alias move reaches every worker at once.

The signature check is tested against MLflow's own signer (``mlflow.webhooks.delivery``),
so a change in how the pinned MLflow signs fails here. The integration tests run a real
``mlflow server`` (SQLite backend, the only kind that delivers) and the real API with 2
workers whose polling interval is 600 s: a swap within seconds can only be the webhook's.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from app.settings import Settings
from app.webhook import (
    DEFAULT_NAME,
    EVENTS,
    HOOK_PATH,
    Delivery,
    WebhookRefused,
    followed_aliases,
    ignore_reason,
    main,
    parse_delivery,
    verify,
)
from bench.webhook import publish_version, webhook_server_env
from churn.registry import client
from tests.api_support import wait_until
from tests.conftest import TrainedModel
from tests.mlflow_server import mlflow_server
from tests.processes import ApiProcess, api_process

SECRET = "webhook-test-secret-0123456789abcdef"
TOLERANCE = 300.0


def mlflow_delivery(
    payload: dict[str, Any], secret: str = SECRET, timestamp: int | None = None
) -> tuple[dict[str, str], bytes]:
    """Headers and body exactly as MLflow 3.17 sends them (its own signer)."""
    body = json.dumps(payload)
    delivery_id = str(uuid.uuid4())
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, stamp, body),
    }
    return headers, body.encode()


def alias_event(name: str, alias: str, version: str = "1") -> dict[str, Any]:
    return {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2026-01-01T00:00:00+00:00",
        "data": {"name": name, "alias": alias, "version": version},
    }


# ---------------------------------------------------------------------------- unit


def test_a_delivery_signed_by_mlflow_verifies() -> None:
    headers, body = mlflow_delivery(alias_event("churn", "production"))
    delivery_id = verify(SECRET.encode(), headers, body, time.time(), TOLERANCE)
    assert delivery_id == headers["X-MLflow-Delivery-Id"]
    delivery = parse_delivery(delivery_id, body)
    assert (delivery.event, delivery.model_name, delivery.alias) == (
        "model_version_alias.created",
        "churn",
        "production",
    )


def _refusal(headers: dict[str, str], body: bytes, now: float | None = None) -> WebhookRefused:
    with pytest.raises(WebhookRefused) as caught:
        verify(SECRET.encode(), headers, body, time.time() if now is None else now, TOLERANCE)
    return caught.value


def test_a_wrong_secret_or_a_changed_body_is_refused() -> None:
    headers, body = mlflow_delivery(alias_event("churn", "production"), secret="x" * 32)
    assert _refusal(headers, body).status == 401
    headers, body = mlflow_delivery(alias_event("churn", "production"))
    tampered = body.replace(b"production", b"challenger")
    refused = _refusal(headers, tampered)
    assert (refused.status, refused.reason) == (
        401,
        "X-MLflow-Signature does not match the webhook secret",
    )


def test_old_and_future_timestamps_are_refused_as_replays() -> None:
    old = int(time.time()) - 3600
    headers, body = mlflow_delivery(alias_event("churn", "production"), timestamp=old)
    refused = _refusal(headers, body)
    assert refused.status == 401 and "replay" in refused.reason
    # the same delivery was fine when it was fresh
    assert verify(SECRET.encode(), headers, body, old + 10, TOLERANCE)
    future = int(time.time()) + 3600
    headers, body = mlflow_delivery(alias_event("churn", "production"), timestamp=future)
    assert _refusal(headers, body).status == 401


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        ("X-MLflow-Signature", None, "missing X-MLflow-Signature header"),
        ("X-MLflow-Timestamp", None, "missing X-MLflow-Timestamp header"),
        ("X-MLflow-Delivery-Id", None, "missing X-MLflow-Delivery-Id header"),
        ("X-MLflow-Timestamp", "yesterday", "X-MLflow-Timestamp is not a Unix time in seconds"),
        ("X-MLflow-Signature", "v0,abc", "X-MLflow-Signature has no 'v1,' signature"),
    ],
)
def test_missing_or_malformed_headers_are_400(header: str, value: str | None, reason: str) -> None:
    headers, body = mlflow_delivery(alias_event("churn", "production"))
    if value is None:
        del headers[header]
    else:
        headers[header] = value
    refused = _refusal(headers, body)
    assert (refused.status, refused.reason) == (400, reason)


def test_one_matching_signature_among_several_is_enough() -> None:
    """Standard Webhooks: space-separated signatures while a secret is rotated."""
    headers, body = mlflow_delivery(alias_event("churn", "production"))
    headers["X-MLflow-Signature"] = f"v1,AAAA {headers['X-MLflow-Signature']}"
    assert verify(SECRET.encode(), headers, body, time.time(), TOLERANCE)


def test_which_events_reload() -> None:
    aliases = followed_aliases("production", [])
    assert aliases == {"production", "challenger"}
    assert followed_aliases("production", ["staging"]) == {"staging"}

    def event(entity: str, name: str, alias: str | None) -> Delivery:
        return Delivery("id", entity, "created", name, alias, "3")

    assert (
        ignore_reason(event("model_version_alias", "churn", "production"), "churn", aliases) is None
    )
    assert (
        ignore_reason(event("model_version_alias", "churn", "challenger"), "churn", aliases) is None
    )
    assert "not the served model" in str(
        ignore_reason(event("model_version_alias", "other", "production"), "churn", aliases)
    )
    assert "is not one of" in str(
        ignore_reason(event("model_version_alias", "churn", "staging"), "churn", aliases)
    )
    # a rollout record change (the `rollout` tag of a version) reaches every worker at once;
    # any other tag, or another entity, does not
    record = Delivery("id", "model_version_tag", "set", "churn", None, "3", "rollout")
    assert ignore_reason(record, "churn", aliases) is None
    other_tag = Delivery("id", "model_version_tag", "set", "churn", None, "3", "gate.verdict")
    assert "is not the rollout record" in str(ignore_reason(other_tag, "churn", aliases))
    assert "neither an alias move" in str(
        ignore_reason(event("registered_model", "churn", None), "churn", aliases)
    )


def test_a_body_that_is_not_an_event_is_400() -> None:
    for body in (b"not json", b"[1, 2]", b'{"entity": "model_version_alias"}'):
        with pytest.raises(WebhookRefused) as caught:
            parse_delivery("id", body)
        assert caught.value.status == 400


def test_settings_refuse_a_webhook_that_cannot_work(tmp_path: Path) -> None:
    base = {"environment": "test", "model_uri": "models:/churn@production"}
    with pytest.raises(ValueError, match="needs WEBHOOK_SECRET or WEBHOOK_SECRET_FILE"):
        Settings(webhook_enabled=True, **base)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Settings(webhook_enabled=True, webhook_secret="short", **base)
    with pytest.raises(ValueError, match="needs MODEL_URI"):
        Settings(webhook_enabled=True, webhook_secret=SECRET, environment="test")
    with pytest.raises(ValueError, match=r"WEBHOOK_SECRET_FILE=.*cannot read it"):
        Settings(webhook_enabled=True, webhook_secret_file=tmp_path / "absent", **base)
    (tmp_path / "secret").write_text(SECRET + "\n")
    settings = Settings(webhook_enabled=True, webhook_secret_file=tmp_path / "secret", **base)
    assert settings.webhook_secret_bytes == SECRET.encode()
    assert SECRET not in repr(Settings(webhook_enabled=True, webhook_secret=SECRET, **base))
    # off: nothing read, nothing required
    assert Settings(**base).webhook_secret_bytes is None


# ---------------------------------------------------------------------------- integration


@dataclass
class Stack:
    tracking: str
    name: str
    old: str
    new: str
    api: ApiProcess
    secret_file: Path

    def workers(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.api.url}/model", timeout=10)
        return list(answer.json()["workers"]) if answer.status_code == 200 else []

    def every_worker_on(self, version: str) -> bool:
        workers = self.workers()
        return len(workers) == 2 and all(w["model_version"] == version for w in workers)

    def post(self, headers: dict[str, str], body: bytes) -> httpx.Response:
        return httpx.post(f"{self.api.url}{HOOK_PATH}", headers=headers, content=body, timeout=30)


@pytest.fixture(scope="module")
def stack(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real `mlflow server` on a copy of the session's store, @production on the trained
    version, a second version published through it, and the API (2 workers) following
    @production with the webhook on and polling every 600 s."""
    import os

    tmp = tmp_path_factory.mktemp("webhook")
    name, old = trained_model.result.model_name, trained_model.result.model_version
    store = Path(trained_model.tracking_uri.removeprefix("sqlite:///"))
    backend = f"sqlite:///{shutil.copy(store, tmp / 'mlflow.db')}"
    # Into the store before the server runs: an alias move through the server before the
    # webhook exists would cache "no webhook" for MLFLOW_WEBHOOK_CACHE_TTL (60 s).
    client(backend).set_registered_model_alias(name, "production", old)
    secret_file = tmp / "webhook.secret"
    secret_file.write_text(SECRET)
    with mlflow_server(backend, tmp, env=webhook_server_env()) as tracking:
        new = publish_version(tracking, trained_model.bundle_dir, name, tmp)
        metrics = tmp / "prometheus"
        metrics.mkdir()
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            "DATABASE_URL": f"sqlite:///{tmp / 'log.db'}",
            "MODEL_URI": f"models:/{name}@production",
            "MLFLOW_TRACKING_URI": tracking,
            "MODEL_WATCH_INTERVAL": "600",
            "WEBHOOK_ENABLED": "true",
            "WEBHOOK_SECRET_FILE": str(secret_file),
            "ENVIRONMENT": "test",
            "LOG_LEVEL": "INFO",
        }
        with api_process(env, tmp / "uvicorn.log", workers=2) as api:
            up = Stack(tracking, name, old, new, api, secret_file)
            assert wait_until(lambda: up.every_worker_on(old), timeout=60), api.log()[-3000:]
            yield up


@pytest.mark.integration
@pytest.mark.slow
def test_register_creates_once_then_updates(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI creates the webhook, then updates the same one; MLflow's test delivery
    (an example alias event) reaches the API, is verified, and is answered `ignored`."""
    url = f"{stack.api.url}{HOOK_PATH}"
    args = ["register", "--url", url, "--tracking-uri", stack.tracking]
    args += ["--secret-file", str(stack.secret_file)]
    assert main(args) == 0, capsys.readouterr().err
    first = capsys.readouterr().out
    assert "created" in first and "test delivery answered HTTP 200" in first
    assert main(args) == 0, capsys.readouterr().err
    assert "updated" in capsys.readouterr().out
    hooks = [w for w in client(stack.tracking).list_webhooks() if w.name == DEFAULT_NAME]
    assert len(hooks) == 1
    assert {str(e) for e in hooks[0].events} == set(EVENTS)
    assert hooks[0].url == url
    assert "model_version_alias.created" in stack.api.log()  # the test delivery arrived


@pytest.mark.integration
@pytest.mark.slow
def test_a_wrong_secret_fails_the_registration_check(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("another-secret-0123456789abcdef")
    url = f"{stack.api.url}{HOOK_PATH}"
    args = ["register", "--url", url, "--tracking-uri", stack.tracking, "--name", "wrong"]
    assert main([*args, "--secret-file", str(wrong)]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    hook = next(w for w in client(stack.tracking).list_webhooks() if w.name == "wrong")
    client(stack.tracking).delete_webhook(hook.webhook_id)  # one delivery per move after this


@pytest.mark.integration
@pytest.mark.slow
def test_an_alias_move_reaches_every_worker_without_polling(stack: Stack) -> None:
    """Registered webhook, alias moved with MlflowClient: both workers serve the new
    version within seconds although they poll every 600 s; then back again."""
    _ensure_registered(stack)
    mlflow = client(stack.tracking)
    for version in (stack.new, stack.old):
        began = time.monotonic()
        mlflow.set_registered_model_alias(stack.name, "production", version)
        assert wait_until(lambda v=version: stack.every_worker_on(v), timeout=60), stack.api.log()[
            -3000:
        ]
        assert time.monotonic() - began < 60  # far below the 600 s polling interval
    assert stack.api.log().count("reloading every worker") >= 2


def _ensure_registered(stack: Stack) -> None:
    if not any(w.name == DEFAULT_NAME for w in client(stack.tracking).list_webhooks()):
        registered = main(
            [
                "register",
                "--url",
                f"{stack.api.url}{HOOK_PATH}",
                "--tracking-uri",
                stack.tracking,
                "--secret-file",
                str(stack.secret_file),
            ]
        )
        assert registered == 0


def _rollout_by_worker(stack: Stack) -> dict[str, tuple[str | None, float]]:
    """Per worker pid: the rollout stage it applies (None: no challenger) and its share."""
    from prometheus_client.parser import text_string_to_metric_families

    stages: dict[str, str | None] = {}
    shares: dict[str, float] = {}
    text = httpx.get(f"{stack.api.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            pid = sample.labels.get("pid")
            if pid is None:
                continue
            if sample.name == "rollout_stage":
                stages.setdefault(pid, None)
                if sample.value == 1:
                    stages[pid] = sample.labels["stage"]
            elif sample.name == "rollout_canary_share":
                shares[pid] = sample.value
    return {pid: (stages.get(pid), share) for pid, share in shares.items()}


@pytest.mark.integration
@pytest.mark.slow
def test_a_rollout_record_change_reaches_every_worker_without_polling(stack: Stack) -> None:
    """@challenger set, then its record moved shadow -> canary 20 % with MlflowClient: the
    webhook's alias and tag deliveries put both workers on the new rollout state within
    seconds, although they poll every 600 s; deleting @challenger ends it the same way."""
    from churn.rollout import CANARY, RolloutRecord, write_record

    _ensure_registered(stack)
    mlflow = client(stack.tracking)
    mlflow.set_registered_model_alias(stack.name, "production", stack.old)
    assert wait_until(lambda: stack.every_worker_on(stack.old), timeout=60)
    record = RolloutRecord.start(stack.new, stack.old, "webhook test", by="test")
    began = time.monotonic()
    write_record(mlflow, stack.name, record)
    mlflow.set_registered_model_alias(stack.name, "challenger", stack.new)

    def every_worker(state: tuple[str | None, float]) -> bool:
        seen = _rollout_by_worker(stack)
        return len(seen) == 2 and set(seen.values()) == {state}

    try:
        assert wait_until(lambda: every_worker(("shadow", 0.0)), timeout=60), (
            _rollout_by_worker(stack),
            stack.api.log()[-3000:],
        )
        write_record(mlflow, stack.name, record.moved(CANARY, "test", by="test", share=0.2))
        assert wait_until(lambda: every_worker((CANARY, 0.2)), timeout=60), (
            _rollout_by_worker(stack),
            stack.api.log()[-3000:],
        )
        assert time.monotonic() - began < 120  # far below the 600 s polling interval
    finally:
        mlflow.delete_registered_model_alias(stack.name, "challenger")
    assert wait_until(lambda: every_worker((None, 0.0)), timeout=60), _rollout_by_worker(stack)


def _generations(stack: Stack) -> list[tuple[int, str]]:
    return sorted((w["generation"], w["model_version"]) for w in stack.workers())


@pytest.mark.integration
@pytest.mark.slow
def test_a_bad_signature_is_401_and_nothing_reloads(stack: Stack) -> None:
    before = _generations(stack)
    headers, body = mlflow_delivery(
        alias_event(stack.name, "production", stack.new), secret="not-the-secret-0123456789"
    )
    answer = stack.post(headers, body)
    assert answer.status_code == 401
    assert answer.json() == {"detail": "X-MLflow-Signature does not match the webhook secret"}
    del headers["X-MLflow-Signature"]
    answer = stack.post(headers, body)
    assert answer.status_code == 400
    assert answer.json() == {"detail": "missing X-MLflow-Signature header"}
    assert _generations(stack) == before


@pytest.mark.integration
@pytest.mark.slow
def test_a_replayed_delivery_is_refused(stack: Stack) -> None:
    before = _generations(stack)
    headers, body = mlflow_delivery(
        alias_event(stack.name, "production"), timestamp=int(time.time()) - 3600
    )
    answer = stack.post(headers, body)
    assert answer.status_code == 401
    assert "replay" in answer.json()["detail"]
    assert _generations(stack) == before


@pytest.mark.integration
@pytest.mark.slow
def test_events_for_other_models_and_aliases_are_ignored(stack: Stack) -> None:
    before = _generations(stack)
    for event in (
        alias_event("another-model", "production"),
        alias_event(stack.name, "staging"),
        {**alias_event(stack.name, "production"), "entity": "model_version_tag"},
    ):
        answer = stack.post(*mlflow_delivery(event))
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "ignored"
    assert _generations(stack) == before


@pytest.mark.integration
@pytest.mark.slow
def test_a_signed_move_of_the_served_alias_reloads_on_the_spot(stack: Stack) -> None:
    """A delivery for the served alias (sent here as MLflow would) reloads every worker
    and answers once they have: a new generation on both, the alias's version kept."""
    before = max(g for g, _ in _generations(stack))
    answer = stack.post(*mlflow_delivery(alias_event(stack.name, "challenger")))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] in {"reloaded", "unchanged"}
    assert body["all_workers_swapped"] is True and body["generation"] > before
    assert {g for g, _ in _generations(stack)} == {body["generation"]}


@pytest.mark.integration
@pytest.mark.slow
def test_deleting_the_served_alias_keeps_the_model_serving(stack: Stack) -> None:
    """Fail closed: the alias deleted (a real delivery from MLflow) makes the reload fail with
    its reason (409 to MLflow); both workers keep serving; the alias set again is followed."""
    mlflow = client(stack.tracking)
    serving = stack.workers()[0]["model_version"]
    mlflow.delete_registered_model_alias(stack.name, "production")
    refused = '"route":"/hooks/mlflow","status":409'  # the access line of MLflow's delivery
    assert wait_until(lambda: refused in stack.api.log(), timeout=60), stack.api.log()[-3000:]
    assert stack.every_worker_on(serving)
    assert httpx.get(f"{stack.api.url}/ready", timeout=10).status_code == 200
    other = stack.new if serving == stack.old else stack.old
    mlflow.set_registered_model_alias(stack.name, "production", other)
    assert wait_until(lambda: stack.every_worker_on(other), timeout=60), stack.api.log()[-3000:]


def test_a_file_store_has_no_webhooks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evidence for the README: MLflow's file store cannot hold webhooks (polling only)."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    args = ["register", "--url", "https://churn.example.com/hooks/mlflow"]
    args += ["--tracking-uri", f"file://{tmp_path / 'mlruns'}", "--secret-file", str(secret)]
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert main(args) == 1  # MLflow 3.17 refuses a file store unless opted in
    assert "filesystem tracking backend" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "FileStore does not support list_webhooks" in err and "keep polling" in err


@pytest.mark.integration
@pytest.mark.slow
def test_a_default_mlflow_server_refuses_http_and_loopback_urls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Evidence for the README: as shipped, MLflow 3.17 creates webhooks only for https URLs
    on public addresses; the CLI names the server setting that allows the API's URL."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    as_shipped = {
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "false",
    }
    with mlflow_server(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path, env=as_shipped) as url:
        common = ["--tracking-uri", url, "--secret-file", str(secret), "--no-check"]
        assert main(["register", "--url", "http://127.0.0.1:9/hooks/mlflow", *common]) == 1
        err = capsys.readouterr().err
        assert "Invalid webhook URL scheme" in err
        assert "MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https" in err
        assert main(["register", "--url", "https://127.0.0.1:9/hooks/mlflow", *common]) == 1
        err = capsys.readouterr().err
        assert "non-public IP address" in err and "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true" in err
        assert list(client(url).list_webhooks()) == []
