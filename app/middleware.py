"""One pure ASGI middleware for every request: id, body limit, metrics, one access log line.

Compressed bodies (any Content-Encoding but identity) are refused with 415 here, for both
transports (the fast path and the routes), before anything is read.

Pure ASGI (not BaseHTTPMiddleware) keeps the per-request cost to a few function calls and
never buffers bodies. The body limit refuses a declared Content-Length over the limit before
reading anything, and counts streamed bytes for chunked uploads.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.ids import RandomHex
from app.logging import StructuredLogger, request_id_var
from app.metrics import Metrics

access_log = StructuredLogger(logging.getLogger("app.access"))

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Probes and scrapes: no request metrics, access lines only at DEBUG.
QUIET_PATHS = frozenset({"/health", "/metrics", "/ready", "/v2/health/live", "/v2/health/ready"})
# The Open Inference Protocol's paths, whose errors read {"error": ...} (app.v2)
V2_PREFIX = "/v2"


def _encoded(encoding: bytes) -> dict[str, Any]:
    name = encoding.decode("latin-1")[:40]
    return {
        "detail": f"Content-Encoding {name!r} is not supported: send the body uncompressed "
        "(no Content-Encoding header)"
    }


class BodyTooLargeError(Exception):
    """The request body exceeded MAX_BODY_BYTES while streaming."""


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _protocol(scope: Scope, body: dict[str, Any]) -> dict[str, Any]:
    """An error body in the protocol of the path: {"error": ...} under /v2, else as is."""
    path = scope.get("path", "")
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        rest = {key: value for key, value in body.items() if key != "detail"}
        detail = body.get("detail")
        return {"error": detail if isinstance(detail, str) else json.dumps(detail), **rest}
    return body


async def _send_json(send: Send, status: int, body: dict[str, Any], request_id: str) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", request_id.encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class RequestMiddleware:
    """Request id (X-Request-ID in, echoed out, in every log line), size limit, metrics, log."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body_bytes: int,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        # To label requests answered before routing (413, 415, a client gone mid-body).
        self.routes = routes
        self._ids = RandomHex()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = _header(scope, b"x-request-id")
        text = incoming.decode("latin-1") if incoming else ""
        request_id = text if _VALID_REQUEST_ID.match(text) else self._ids.take(16)
        token = request_id_var.set(request_id)
        state: dict[str, Any] = {"status": 500, "started": False}
        scope.setdefault("state", {})["request_id"] = request_id
        try:
            if self._declared_too_large(scope):
                state["status"] = 413
                await _send_json(send, 413, _protocol(scope, self._too_large()), request_id)
                return
            encoding = _header(scope, b"content-encoding")
            if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
                state["status"] = 415
                await _send_json(send, 415, _protocol(scope, _encoded(encoding)), request_id)
                return
            await self._call(scope, receive, send, state, request_id)
        finally:
            self._finish(scope, state, started)
            request_id_var.reset(token)

    def _declared_too_large(self, scope: Scope) -> bool:
        length = _header(scope, b"content-length")
        try:
            return length is not None and int(length) > self.max_body_bytes
        except ValueError:
            return False

    def _too_large(self) -> dict[str, Any]:
        return {
            "detail": f"request body is larger than the limit of {self.max_body_bytes} "
            "bytes (MAX_BODY_BYTES)"
        }

    async def _call(
        self, scope: Scope, receive: Receive, send: Send, state: dict[str, Any], request_id: str
    ) -> None:
        received = 0
        header = (b"x-request-id", request_id.encode())

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLargeError
            return message

        async def tagged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, counted_receive, tagged_send)
        except BodyTooLargeError:
            if state["started"]:
                raise
            state["status"] = 413
            await _send_json(send, 413, _protocol(scope, self._too_large()), request_id)
        except ClientDisconnect:
            state["status"] = 499  # the client went away mid-request: nothing to answer
        except Exception:
            # A bug, not a client mistake: log it with the request id and answer JSON.
            access_log.logger.exception("unhandled error", extra={"path": scope.get("path")})
            if state["started"]:
                raise
            state["status"] = 500
            body = {"detail": "internal error", "request_id": request_id}
            await _send_json(send, 500, _protocol(scope, body), request_id)

    def _finish(self, scope: Scope, state: dict[str, Any], started: float) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        # Route templates only (never raw paths), so label cardinality stays bounded.
        path = getattr(route, "path", None)
        if path is None:
            path = scope["path"] if "endpoint" in scope else self._template(scope)
        status = state["status"]
        quiet = path in QUIET_PATHS
        if not quiet:
            self.metrics.observe_request(scope["method"], path, status, elapsed)
        level = logging.DEBUG if quiet and status < 400 else logging.INFO
        if access_log.enabled(level):
            access_log.log(
                level,
                "request",
                {
                    "method": scope["method"],
                    "route": path,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 3),
                    "model_version": scope["state"].get("model_version"),
                },
            )

    def _template(self, scope: Scope) -> str:
        """The route template a request was for when it was answered before routing (413,
        415, a client gone while the body was read); "unmatched" for no route."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return str(getattr(route, "path", "unmatched"))
        return "unmatched"
