"""MLflow registry webhooks: verify a delivery, decide whether it concerns the served model,
and register the webhook in MLflow (``python -m app.webhook register --url URL``).

What MLflow 3.17 sends (``mlflow/webhooks/delivery.py``; SQL backends only, the file store
delivers nothing): a POST with the JSON body ``{"entity", "action", "timestamp", "data"}`` and
the headers ``X-MLflow-Delivery-Id`` (a UUID), ``X-MLflow-Timestamp`` (Unix seconds) and, when
the webhook has a secret, ``X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret,
"<delivery id>.<timestamp>.<body>")>`` (the Standard Webhooks scheme). A delivery that failed
with a 429 or 5xx is retried (3 times by default, backoff 1 s, 2 s, 4 s) with the same id,
timestamp and signature.

The API acts on ``model_version_alias.created`` / ``.deleted`` for its own model and the
aliases it follows (WEBHOOK_ALIASES, default: the served alias and ``challenger``) by
reloading every worker (app.lifecycle.reload_everywhere); anything else is answered
``ignored``. Polling (MODEL_WATCH_INTERVAL) stays the fallback for missed deliveries.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churn.rollout import CHALLENGER, ROLLOUT_TAG

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
ALIAS_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
ALIAS_ENTITY = "model_version_alias"
# A rollout record (churn.rollout, a model-version tag) changed: a stage, a share, a rollback.
TAG_EVENTS = ("model_version_tag.set",)
TAG_ENTITY = "model_version_tag"
EVENTS = (*ALIAS_EVENTS, *TAG_EVENTS)
CHALLENGER_ALIAS = CHALLENGER
DEFAULT_NAME = "churn-api-reload"
HOOK_PATH = "/hooks/mlflow"
MIN_SECRET_BYTES = 16
_MAX_DELIVERY_ID = 128


class WebhookRefused(Exception):
    """A delivery that is not accepted: HTTP status and a stable reason a sender may read."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Delivery:
    """The parts of a verified delivery the API acts on."""

    delivery_id: str
    entity: str
    action: str
    model_name: str | None
    alias: str | None
    version: str | None
    tag_key: str | None = None  # model_version_tag events: the tag's key

    @property
    def event(self) -> str:
        return f"{self.entity}.{self.action}"


def signature(secret: bytes, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for this delivery."""
    signed = b".".join([delivery_id.encode(), timestamp.encode(), body])
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name) or headers.get(name.lower())
    if not value:
        raise WebhookRefused(400, f"missing {name} header")
    return value.strip()


def verify(
    secret: bytes, headers: Mapping[str, str], body: bytes, now: float, tolerance: float
) -> str:
    """Check a delivery's signature and timestamp; its delivery id when both are right.

    Raises WebhookRefused: 400 for a missing or malformed header, 401 for a signature that
    does not match or a timestamp further than `tolerance` seconds from `now` (a replayed
    delivery, or a clock that is off). The signature is compared in constant time.
    """
    delivery_id = _header(headers, DELIVERY_ID_HEADER)
    if len(delivery_id) > _MAX_DELIVERY_ID or not delivery_id.isascii():
        raise WebhookRefused(400, f"{DELIVERY_ID_HEADER} is not a delivery id")
    timestamp = _header(headers, TIMESTAMP_HEADER)
    given = _header(headers, SIGNATURE_HEADER)
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise WebhookRefused(400, f"{TIMESTAMP_HEADER} is not a Unix time in seconds")
    if abs(now - int(timestamp)) > tolerance:
        raise WebhookRefused(
            401,
            f"{TIMESTAMP_HEADER} is more than {tolerance:g} s from this server's clock: "
            "refused as a possible replay",
        )
    expected = signature(secret, delivery_id, timestamp, body).encode()
    # Standard Webhooks allow several space-separated signatures (a secret being rotated).
    candidates = [s.encode() for s in given.split() if s.startswith(f"{SIGNATURE_VERSION},")]
    if not candidates:
        raise WebhookRefused(400, f"{SIGNATURE_HEADER} has no '{SIGNATURE_VERSION},' signature")
    matched = False
    for candidate in candidates:  # every one compared: the time does not tell which matched
        matched |= hmac.compare_digest(candidate, expected)
    if not matched:
        raise WebhookRefused(401, f"{SIGNATURE_HEADER} does not match the webhook secret")
    return delivery_id


def parse_delivery(delivery_id: str, body: bytes) -> Delivery:
    """The event of a verified body (400 when it is not MLflow's webhook JSON)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise WebhookRefused(400, "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise WebhookRefused(400, "the body is not a JSON object")
    entity, action, data = payload.get("entity"), payload.get("action"), payload.get("data")
    if not isinstance(entity, str) or not isinstance(action, str) or not isinstance(data, dict):
        raise WebhookRefused(400, "the body has no 'entity', 'action' and 'data' of an event")

    def text(key: str) -> str | None:
        value = data.get(key)
        return str(value) if isinstance(value, str | int) else None

    return Delivery(
        delivery_id, entity, action, text("name"), text("alias"), text("version"), text("key")
    )


def followed_aliases(served_alias: str, configured: Iterable[str]) -> frozenset[str]:
    """The aliases whose moves reload the API: WEBHOOK_ALIASES, else served + challenger."""
    aliases = frozenset(a for a in configured if a)
    return aliases or frozenset({served_alias, CHALLENGER_ALIAS})


def ignore_reason(delivery: Delivery, model_name: str, aliases: frozenset[str]) -> str | None:
    """Why the API does nothing for this delivery; None when it must reload: an alias move of
    a followed alias, or a change of a rollout record (the ``rollout`` tag of a version)."""
    if delivery.entity not in (ALIAS_ENTITY, TAG_ENTITY):
        return f"event {delivery.event} is neither an alias move nor a rollout record change"
    if delivery.model_name != model_name:
        return f"model {delivery.model_name!r} is not the served model {model_name!r}"
    if delivery.entity == TAG_ENTITY:
        if delivery.tag_key != ROLLOUT_TAG:
            return f"tag {delivery.tag_key!r} is not the rollout record ({ROLLOUT_TAG!r})"
        return None
    if delivery.alias not in aliases:
        return f"alias {delivery.alias!r} is not one of {sorted(aliases)}"
    return None


# ---------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class Registered:
    webhook_id: str
    created: bool
    removed_duplicates: int


def register(
    mlflow_client: Any, name: str, url: str, secret: str, description: str | None = None
) -> Registered:
    """Create the webhook, or update the one of that name (URL, events, secret, ACTIVE).

    Idempotent: running it again changes nothing but the stored secret and URL. Further
    webhooks of the same name (made by hand) are deleted so one move is one delivery.
    """
    same = [w for w in _all_webhooks(mlflow_client) if w.name == name]
    description = description or "churn API: reload every worker when a followed alias moves"
    if not same:
        created = mlflow_client.create_webhook(
            name=name,
            url=url,
            events=list(EVENTS),
            description=description,
            secret=secret,
            status="ACTIVE",
        )
        return Registered(str(created.webhook_id), True, 0)
    keep, *duplicates = sorted(same, key=lambda w: w.creation_timestamp or 0)
    mlflow_client.update_webhook(
        keep.webhook_id,
        url=url,
        events=list(EVENTS),
        description=description,
        secret=secret,
        status="ACTIVE",
    )
    for duplicate in duplicates:
        mlflow_client.delete_webhook(duplicate.webhook_id)
    return Registered(str(keep.webhook_id), False, len(duplicates))


def _all_webhooks(mlflow_client: Any) -> list[Any]:
    found: list[Any] = []
    token = None
    while True:
        page = mlflow_client.list_webhooks(max_results=100, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


# What an MLflow refusal means for the operator (the server's own message is shown too).
_HINTS = (
    (
        "scheme",
        "set MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https on the MLflow server for an http URL",
    ),
    (
        "public",
        "the URL resolves to a private address: set MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true on the "
        "MLflow server (a trusted network only)",
    ),
    ("not support", "the registry's backend store has no webhooks (file store?): keep polling"),
    ("not implemented", "the registry's backend store has no webhooks (file store?): keep polling"),
)


def _hint(message: str) -> str:
    lower = message.lower()
    return next((hint for key, hint in _HINTS if key in lower), "")


def read_secret(secret_file: Path | None, environ: Mapping[str, str]) -> str:
    """The webhook secret: --secret-file, else WEBHOOK_SECRET_FILE, else WEBHOOK_SECRET."""
    named = environ.get("WEBHOOK_SECRET_FILE")
    path = secret_file or (Path(named) if named else None)
    if path is not None:
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the webhook secret ({exc.strerror})") from None
        source = str(path)
    else:
        secret = environ.get("WEBHOOK_SECRET", "")
        source = "WEBHOOK_SECRET"
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{source}: the webhook secret must be at least {MIN_SECRET_BYTES} bytes "
            "(e.g. python3 -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return secret


def _register_command(args: argparse.Namespace) -> int:
    from churn.redact import redact
    from churn.registry import client

    tracking = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking:
        print("webhook: set --tracking-uri or MLFLOW_TRACKING_URI", file=sys.stderr)
        return 2
    try:
        secret = read_secret(args.secret_file, os.environ)
    except ValueError as exc:
        print(f"webhook: {exc}", file=sys.stderr)
        return 2
    try:
        mlflow = client(tracking)
        done = register(mlflow, args.name, args.url, secret)
    except Exception as exc:  # MlflowException, connection errors: reported, never a trace
        message = redact(str(exc))
        hint = _hint(message)
        print(
            f"webhook: registering '{args.name}' at {redact(tracking)} failed: {message}"
            + (f"\nhint: {hint}" if hint else ""),
            file=sys.stderr,
        )
        return 1
    verb = "created" if done.created else "updated"
    extra = f", {done.removed_duplicates} duplicate(s) removed" if done.removed_duplicates else ""
    print(f"webhook '{args.name}' {verb} (id {done.webhook_id}{extra}) -> {args.url}")
    if args.no_check:
        return 0
    # MLflow sends an example alias event (model 'example_model'): a right URL and secret
    # answer 200 "ignored"; a wrong secret 401.
    try:
        result = mlflow.test_webhook(done.webhook_id, event=ALIAS_EVENTS[0])
    except Exception as exc:
        print(f"webhook: test delivery could not be asked: {redact(str(exc))}", file=sys.stderr)
        return 1
    if not result.success:
        why = result.error_message or f"HTTP {result.response_status}: {result.response_body}"
        print(f"webhook: test delivery failed: {redact(str(why))[:500]}", file=sys.stderr)
        hint = _hint(str(why))
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return 1
    print(f"test delivery answered HTTP {result.response_status}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.webhook", description="The churn API's MLflow registry webhook"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    reg = commands.add_parser(
        "register",
        help="create or update the webhook (idempotent), then send MLflow's test delivery",
    )
    reg.add_argument(
        "--url", required=True, help=f"the API's endpoint, e.g. http://api:8000{HOOK_PATH}"
    )
    reg.add_argument("--tracking-uri", help="MLflow server (default: MLFLOW_TRACKING_URI)")
    reg.add_argument("--name", default=DEFAULT_NAME, help=f"webhook name (default {DEFAULT_NAME})")
    reg.add_argument(
        "--secret-file",
        type=Path,
        help="file holding the secret (default: WEBHOOK_SECRET_FILE, else WEBHOOK_SECRET)",
    )
    reg.add_argument("--no-check", action="store_true", help="skip the test delivery")
    return parser


def main(argv: list[str] | None = None) -> int:
    from churn.registry import bounded_http_retries

    args = build_parser().parse_args(argv)
    with bounded_http_retries():  # a registry that answers 5xx fails in seconds, not minutes
        return _register_command(args)


if __name__ == "__main__":
    sys.exit(main())
