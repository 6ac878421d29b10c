"""A pure-ASGI transport for ``POST /predict`` and ``POST /predict/batch``.

FastAPI's routing, dependency injection and body handling cost more CPU per request than the
model call does. This layer, inside the request middleware (so the request id, body limit,
metrics and access log apply unchanged) and inside CORS, answers those two endpoints itself
whenever a model is loaded: it reads the body and hands it to the served model's codec
(app.codec), the same decode and encode the FastAPI routes call, so every answer and every
error has the bytes the route would send. The routes stay for OpenAPI and answer when no model
is loaded yet (503).
"""

from __future__ import annotations

from starlette.datastructures import State
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.codec import RequestError, routing_header
from app.service import ModelService

_JSON_HEADER = (b"content-type", b"application/json")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _content_type(scope: Scope) -> bytes | None:
    return _header(scope, b"content-type")


async def read_body(receive: Receive) -> bytes:
    """The whole request body (the middleware's receive enforces the size limit)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_answer(
    send: Send, content: bytes, status: int = 200, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A JSON response with the headers FastAPI's JSONResponse sends (and `extra`)."""
    headers = [(b"content-length", str(len(content)).encode()), _JSON_HEADER]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


class PredictFastPath:
    """Serves /predict and /predict/batch through the model's codec; everything else (and
    any request while no model is loaded) goes to `app`."""

    def __init__(self, app: ASGIApp, state: State, routes: list[BaseRoute]) -> None:
        self.app = app
        self.state = state
        self.routes = routes
        self._batch = {"/predict": False, "/predict/batch": True}
        self._route_of: dict[str, BaseRoute] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self._batch:
            await self.app(scope, receive, send)
            return
        service: ModelService | None = getattr(self.state, "service", None)
        model = service.model if service is not None else None
        if model is None:
            await self.app(scope, receive, send)  # the route answers 503
            return
        assert service is not None
        scope["route"] = self._route(scope["path"])  # the metrics label, as routing sets it
        scope.setdefault("state", {})["model_version"] = model.version
        codec = model.codec
        batch = self._batch[scope["path"]]
        try:
            explain = codec.decode_explain(scope.get("query_string", b""))
            body = await read_body(receive)
            if batch:
                rows = codec.decode_batch(body, _content_type(scope))
            else:
                rows = codec.decode_customer(body, _content_type(scope))
            key = routing_header(_header(scope, b"x-routing-key"))
        except RequestError as exc:
            await send_answer(send, exc.body(), exc.status)
            return
        answers, ids = await service.answer(model, rows, key, explain)
        content = codec.encode_batch(answers, ids) if batch else codec.encode_customer(answers, ids)
        if answers.role != "champion":  # another model answered (some) rows
            scope["state"]["model_version"] = answers.version or model.version
        await send_answer(send, content, extra=codec.headers(answers))

    def _route(self, path: str) -> BaseRoute | None:
        if self._route_of is None:
            self._route_of = {
                route.path: route  # type: ignore[attr-defined]
                for route in self.routes
                if getattr(route, "path", None) in self._batch
                and "POST" in (getattr(route, "methods", None) or ())
            }
        return self._route_of.get(path)
