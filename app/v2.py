"""The Open Inference Protocol (V2, REST), beside the JSON API, for KServe, Seldon MLServer
and Triton clients.

Endpoints: ``GET /v2`` (server metadata), ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}[/versions/{version}]`` (model metadata: one input per feature),
``.../ready`` and ``POST .../infer``. The model name is the registered model's name, the
version the one served; any other is 404.

An inference request is decoded by the served model's V2 codec (app.v2_codec: the JSON API's
per-feature rules, applied to whole columns) and answered by the same service call as
``/predict/batch`` (ModelService.answer: the micro-batcher, the backend, metrics, the
prediction log and its ids), so everything that applies to the JSON API applies here too.
``POST .../infer`` is served by a pure-ASGI transport (`V2InferFastPath`, like
app.fastpath) whenever a model is loaded; the routes document the endpoints in OpenAPI and
answer while none is (503). Errors are the protocol's ``{"error": "..."}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json
from starlette.datastructures import State
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.codec import EXPLANATIONS_UNAVAILABLE, RequestError, explanation_objects
from app.fastpath import read_body, send_answer
from app.model import ServedModel
from app.service import ModelService
from app.source import STILL_LOADING
from app.v2_codec import explanation_outputs

PREFIX = "/v2"
INFER_SUFFIX = "/infer"
BINARY_HEADER = b"inference-header-content-length"
INFER_PATHS = (
    f"{PREFIX}/models/{{model_name}}{INFER_SUFFIX}",
    f"{PREFIX}/models/{{model_name}}/versions/{{model_version}}{INFER_SUFFIX}",
)


# ---------------------------------------------------------------------------- shared steps


def error_body(exc: RequestError) -> bytes:
    """The protocol's error response body."""
    return to_json({"error": str(exc.detail)})


def _error(exc: RequestError) -> Response:
    return Response(error_body(exc), status_code=exc.status, media_type="application/json")


def _answer(content: Any) -> Response:
    return Response(to_json(content), media_type="application/json")


def served_model(service: ModelService, name: str, version: str | None) -> ServedModel:
    """The served model if it is the one named (raises RequestError: 503 while none is
    loaded, 404 for another name or version)."""
    model = service.model
    if model is None:
        raise RequestError(503, f"model not ready: {service.last_error or STILL_LOADING}")
    if name != model.name:
        raise RequestError(404, f"unknown model '{name}'; this server serves '{model.name}'")
    if version is not None and version != model.version:
        raise RequestError(
            404,
            f"model '{name}' has no version '{version}' here; version {model.version} is served",
        )
    return model


async def infer(service: ModelService, model: ServedModel, body: bytes, headers: Any) -> bytes:
    """Decode, answer (as /predict/batch does) and encode one inference request; `headers`
    are the request's (name, value) byte pairs (raises RequestError)."""
    content_type = binary = None
    for key, value in headers:
        if key == b"content-type":
            content_type = value
        elif key == BINARY_HEADER:
            binary = True
    request = model.v2.decode(body, content_type, binary=bool(binary))
    explain = request.explain
    if explain and model.codec.unexplainable is not None:
        raise RequestError(400, f"{EXPLANATIONS_UNAVAILABLE}: {model.codec.unexplainable}")
    answers, ids = await service.answer(model, request.rows, explain=explain)
    extra = []
    if explain:
        explained = explanation_objects(answers, model.codec.top_reasons)
        extra = explanation_outputs(explained, model.schema.names)
    return model.v2.encode(request, answers, ids, extra=extra)


def platform(model: ServedModel) -> str:
    """The model metadata's platform: this API and the backend serving the model."""
    return f"churn-api_{model.backend}"


# ---------------------------------------------------------------------------- documentation


class V2Error(BaseModel):
    error: str = Field(description="What was wrong, in one line")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class MetadataTensor(BaseModel):
    name: str
    datatype: str = Field(description="FP64, INT64 or BYTES (inputs); FP64, BOOL, BYTES")
    shape: list[int] = Field(description="[-1]: one value per row")


class ModelMetadata(BaseModel):
    name: str = Field(description="The registered model's name")
    versions: list[str] = Field(description="The version served")
    platform: str
    inputs: list[MetadataTensor] = Field(description="One per feature of the served model")
    outputs: list[MetadataTensor]


class ModelReady(BaseModel):
    name: str
    ready: bool


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool


class RequestInput(BaseModel):
    name: str = Field(description="A feature name (see the model metadata)")
    shape: list[int] = Field(description="[N], N the number of rows")
    datatype: str = Field(description="The input's datatype in the model metadata")
    data: list[float | int | str | None] = Field(
        description="N values, flat; null only where the model imputes the feature"
    )
    parameters: dict[str, str | float | bool] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, str | float | bool] | None = None


class InferenceRequest(BaseModel):
    """One tensor per feature (documentation; the served model's codec validates)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, description="Echoed in the response")
    parameters: dict[str, str | float | bool] | None = Field(
        default=None,
        description="Accepted; `explain: true` adds the outputs explanation_base_value, "
        "explanation_contributions ([N, F]; the features in its parameters) and "
        "explanation_reasons (400 when the model cannot be explained)",
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(
        default=None, description="Outputs to answer, in order (default: all)"
    )


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float | bool | str]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput] = Field(
        description="churn_probability (FP64), churn_prediction (BOOL), risk_tier (BYTES), "
        "prediction_id (BYTES: send it to POST /feedback with the outcome); warnings (BYTES) "
        "only when an input was reinterpreted"
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": V2Error, "description": "Invalid request: the input, element and reason"},
    404: {"model": V2Error, "description": "Not the served model or version"},
    413: {"model": V2Error, "description": "More rows than MAX_BATCH_SIZE (or a larger body)"},
    415: {"model": V2Error, "description": "A Content-Type other than JSON"},
    503: {"model": V2Error, "description": "No verified model loaded yet"},
}
_MODEL_ERRORS: dict[int | str, dict[str, Any]] = {k: _ERRORS[k] for k in (404, 503)}


def document_example(model: ServedModel | None) -> dict[str, Any] | None:
    """A worked inference request for /docs: one row, the schema's example customer."""
    if model is None:
        return None
    from app.schemas import example_customer

    customer = example_customer(model.schema)
    return {
        "id": "example-1",
        "inputs": [
            {"name": name, "shape": [1], "datatype": model.v2.datatypes[name], "data": [value]}
            for name, value in customer.items()
        ],
    }


# ---------------------------------------------------------------------------- routes

router = APIRouter(prefix=PREFIX, tags=["v2 (Open Inference Protocol)"])


def _service(request: Request) -> ModelService:
    service: ModelService = request.app.state.service
    return service


@router.get("", response_model=ServerMetadata)
async def server_metadata(request: Request) -> dict[str, Any]:
    """Server metadata: name, version and the protocol extensions spoken (none)."""
    return {"name": request.app.title, "version": request.app.version, "extensions": []}


@router.get("/health/live", response_model=Liveness)
async def server_live() -> dict[str, Any]:
    """Liveness: 200 whenever the process is up."""
    return {"live": True}


@router.get("/health/ready", response_model=Readiness, responses={503: _ERRORS[503]})
async def server_ready(request: Request) -> Response:
    """Readiness: 200 once a verified model is loaded, 503 with the reason until then."""
    service = _service(request)
    if service.model is None:
        reason = service.last_error or STILL_LOADING
        return _error(RequestError(503, f"not ready: {reason}"))
    return _answer({"ready": True})


async def _metadata(request: Request, model_name: str, model_version: str | None) -> Response:
    try:
        model = served_model(_service(request), model_name, model_version)
    except RequestError as exc:
        return _error(exc)
    request.state.model_version = model.version
    return _answer(model.v2.metadata(platform(model)))


async def _ready(request: Request, model_name: str, model_version: str | None) -> Response:
    try:
        model = served_model(_service(request), model_name, model_version)
    except RequestError as exc:
        return _error(exc)
    return _answer({"name": model.name, "ready": True})


async def _infer(request: Request, model_name: str, model_version: str | None) -> Response:
    service = _service(request)
    try:
        model = served_model(service, model_name, model_version)
        request.state.model_version = model.version
        content = await infer(service, model, await request.body(), request.scope["headers"])
    except RequestError as exc:
        return _error(exc)
    return Response(content, media_type="application/json")


@router.get("/models/{model_name}", response_model=ModelMetadata, responses=_MODEL_ERRORS)
async def model_metadata(request: Request, model_name: str) -> Response:
    """The served model's metadata: one input per feature (FP64/INT64 numbers, BYTES
    categories, shape [-1]) and the per-row outputs."""
    return await _metadata(request, model_name, None)


@router.get(
    "/models/{model_name}/versions/{model_version}",
    response_model=ModelMetadata,
    responses=_MODEL_ERRORS,
)
async def model_version_metadata(request: Request, model_name: str, model_version: str) -> Response:
    """As `/v2/models/{model_name}`, for the served version only (404 for another)."""
    return await _metadata(request, model_name, model_version)


@router.get("/models/{model_name}/ready", response_model=ModelReady, responses=_MODEL_ERRORS)
async def model_ready(request: Request, model_name: str) -> Response:
    """200 when this model is loaded and serving."""
    return await _ready(request, model_name, None)


@router.get(
    "/models/{model_name}/versions/{model_version}/ready",
    response_model=ModelReady,
    responses=_MODEL_ERRORS,
)
async def model_version_ready(request: Request, model_name: str, model_version: str) -> Response:
    """200 when this version of the model is the one serving."""
    return await _ready(request, model_name, model_version)


@router.post(
    INFER_PATHS[0].removeprefix(PREFIX), response_model=InferenceResponse, responses=_ERRORS
)
async def model_infer(request: Request, model_name: str) -> Response:
    """Predictions for N rows sent as one tensor per feature (shape [N]); up to
    MAX_BATCH_SIZE rows, all or nothing, with the JSON API's validation."""
    return await _infer(request, model_name, None)


@router.post(
    INFER_PATHS[1].removeprefix(PREFIX),
    response_model=InferenceResponse,
    responses=_ERRORS,
)
async def model_version_infer(request: Request, model_name: str, model_version: str) -> Response:
    """As `/v2/models/{model_name}/infer`, for the served version only (404 for another)."""
    return await _infer(request, model_name, model_version)


# ---------------------------------------------------------------------------- fast path

MODELS = f"{PREFIX}/models/"


def _infer_target(path: str) -> tuple[str, str | None] | None:
    """(model name, version or None) of an infer path, as its route templates read it (each
    part non-empty, no slash); None for any other path."""
    parts = path[len(MODELS) :].split("/")
    if len(parts) == 2 and parts[0]:
        return parts[0], None
    if len(parts) == 4 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


class V2InferFastPath:
    """Serves ``POST /v2/models/.../infer`` through the model's V2 codec, as app.fastpath
    serves /predict: inside the request middleware (request id, body limit, metrics, access
    log unchanged); everything else, and any request while no model is loaded, goes to
    `app`."""

    def __init__(self, app: ASGIApp, state: State, routes: list[BaseRoute]) -> None:
        self.app = app
        self.state = state
        # the infer routes by path template (the metrics label, as routing would set it)
        self._route_of = {
            getattr(r, "path", None): r
            for r in routes
            if "POST" in (getattr(r, "methods", None) or ())
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not path.endswith(INFER_SUFFIX)
            or not path.startswith(MODELS)
        ):
            await self.app(scope, receive, send)
            return
        service: ModelService | None = getattr(self.state, "service", None)
        target = _infer_target(path)
        if service is None or service.model is None or target is None:
            await self.app(scope, receive, send)  # the route answers (503), or routing (404)
            return
        name, version = target
        route = self._route_of.get(INFER_PATHS[0] if version is None else INFER_PATHS[1])
        scope["route"] = route
        try:
            model = served_model(service, name, version)
            scope.setdefault("state", {})["model_version"] = model.version
            body = await read_body(receive)
            content = await infer(service, model, body, scope["headers"])
        except RequestError as exc:
            await send_answer(send, error_body(exc), exc.status)
            return
        await send_answer(send, content)
