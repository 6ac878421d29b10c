"""HTTP routes: thin, each delegates to the ModelService on app.state."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError

from app.codec import (
    RequestError,
    parse_json_value,
    routing_header,
    unprocessable,
    validate_object,
    validation_error,
)
from app.lifecycle import ModelLifecycle
from app.schemas import (
    BatchResponse,
    ErrorResponse,
    FeedbackBatchResponse,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    PredictionResponse,
    ReadyResponse,
    ReloadResponse,
    WebhookResponse,
)
from app.service import (
    FeedbackUnavailableError,
    ModelNotReadyError,
    ModelService,
    ReloadError,
    UnknownPredictionError,
)
from app.source import REGISTRY_UNREACHABLE, STILL_LOADING
from app.webhook import (
    HOOK_PATH,
    WebhookRefused,
    followed_aliases,
    ignore_reason,
    parse_delivery,
    verify,
)
from churn.registry import parse_models_uri

logger = logging.getLogger("app.api")


async def get_service(request: Request) -> ModelService:
    service: ModelService = request.app.state.service
    return service


async def get_lifecycle(request: Request) -> ModelLifecycle:
    lifecycle: ModelLifecycle = request.app.state.lifecycle
    return lifecycle


ServiceDep = Annotated[ModelService, Depends(get_service)]
LifecycleDep = Annotated[ModelLifecycle, Depends(get_lifecycle)]

_CLIENT_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Body (or batch) larger than the limit"},
    415: {"model": ErrorResponse, "description": "Content-Type is not application/json"},
    422: {"model": ErrorResponse, "description": "Invalid input: field and reason in detail"},
    503: {"model": ErrorResponse, "description": "No verified model loaded yet"},
}

router = APIRouter()


def _model_or_503(service: ModelService, request: Request) -> Any:
    try:
        model = service.require_model()
    except ModelNotReadyError as exc:
        raise HTTPException(503, detail=f"model not ready: {exc}") from None
    request.state.model_version = model.version
    return model


@router.get("/health", response_model=HealthResponse, tags=["probes"])
async def health(service: ServiceDep) -> dict[str, Any]:
    """Liveness: 200 whenever the process is up (never touches the model, store or registry).

    Also says which version (and registry alias, when known) this worker serves.
    """
    model = service.model
    release = service.release
    return {
        "status": "healthy",
        "model_loaded": model is not None,
        "model_version": model.version if model else None,
        "model_alias": release.alias if model and release else None,
    }


# HEAD for probes and load balancers that only ask whether the process is up (undocumented:
# one operation per route in OpenAPI).
router.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)


@router.get(
    "/ready",
    response_model=ReadyResponse,
    tags=["probes"],
    responses={503: {"model": ReadyResponse}},
)
async def ready(service: ServiceDep) -> Any:
    """Readiness: 503 with a stable reason until a model is loaded and verified."""
    model = service.model
    if model is None:
        reason = service.last_error or STILL_LOADING
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
    return {"status": "ready", "model_version": model.version}


@router.get("/model", tags=["model"], responses={503: _CLIENT_ERRORS[503]})
async def model_metadata(
    service: ServiceDep, lifecycle: LifecycleDep, request: Request
) -> dict[str, Any]:
    """The served bundle's metadata (version, run id, metrics, schema), no reference profile;
    the registry alias it stands for and whether that alias still points at it; and what
    every live worker serves (pid, version, reload generation, loaded_at)."""
    model = _model_or_503(service, request)
    release = service.release
    check = lifecycle.alias_check
    return {
        **model.public_metadata(),
        "model_alias": release.alias if release else None,
        "alias_check": {"status": check.status, "alias_target": check.alias_target}
        | ({"reason": check.reason} if check.reason else {}),
        "rollout": service.rollout.report(),
        "worker": lifecycle.record().public(),
        "workers": [w.public() for w in await lifecycle.workers()],
    }


@router.get("/metrics", tags=["probes"], response_class=Response)
def metrics(service: ServiceDep) -> Response:
    """Prometheus exposition, summed across workers in multiprocess mode."""
    body, content_type = service.metrics.render()
    return Response(body, media_type=content_type)


def _client_error(exc: RequestError) -> HTTPException:
    return HTTPException(exc.status, detail=exc.detail)


def _json_answer(content: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    response = Response(content, media_type="application/json")
    for name, value in headers or ():
        response.headers[name.decode()] = value.decode("latin-1")
    return response


def _answered(model: Any, request: Request, answers: Any) -> list[tuple[bytes, bytes]]:
    """Who answered: the response headers, and the access log's model_version."""
    if answers.role != "champion":  # another model answered (some) rows
        request.state.model_version = answers.version or model.version
    headers: list[tuple[bytes, bytes]] = model.codec.headers(answers)
    return headers


# Read by the codec (both transports), documented here.
_EXPLAIN_PARAMETER = {
    "parameters": [
        {
            "name": "explain",
            "in": "query",
            "required": False,
            "schema": {"type": "boolean", "default": False},
            "description": "Add `explanation` to each prediction: the contribution of each "
            "feature to the churn probability (base_value + contributions = probability), "
            "and the top reasons in plain words. 422 if the model cannot be explained.",
        }
    ]
}


@router.post(
    "/predict",
    response_model=PredictionResponse,
    tags=["predict"],
    responses=_CLIENT_ERRORS,
    openapi_extra=_EXPLAIN_PARAMETER,
)
async def predict(service: ServiceDep, request: Request) -> Response:
    """Churn probability, decision and risk tier for one customer.

    Strict input: numbers as JSON numbers (integers for integer features), `null` where the
    model imputes the feature, unknown fields refused (422 naming the likely intended field).
    `warnings` appears only when a value was reinterpreted (a category not seen in training,
    a number outside the training range). With `?explain=true`, `explanation` says how much
    each feature moved this customer's probability from the base value."""
    model = _model_or_503(service, request)
    try:
        explain = model.codec.decode_explain(request.url.query)
        rows = model.codec.decode_customer(
            await request.body(), request.headers.get("content-type")
        )
        key = routing_header(request.headers.get("x-routing-key"))
    except RequestError as exc:
        raise _client_error(exc) from None
    answers, ids = await service.answer(model, rows, key, explain)
    headers = _answered(model, request, answers)
    return _json_answer(model.codec.encode_customer(answers, ids), headers)


@router.post(
    "/predict/batch",
    response_model=BatchResponse,
    tags=["predict"],
    responses=_CLIENT_ERRORS,
    openapi_extra=_EXPLAIN_PARAMETER,
)
async def predict_batch(service: ServiceDep, request: Request) -> Response:
    """Predictions for up to MAX_BATCH_SIZE customers, answered in the order sent.

    All or nothing: if any customer is invalid, nothing is scored and the 422 names every
    invalid customer (`loc` = body, customers, index, field) with the reason."""
    model = _model_or_503(service, request)
    try:
        explain = model.codec.decode_explain(request.url.query)
        content_type = request.headers.get("content-type")
        rows = model.codec.decode_batch(await request.body(), content_type)
        key = routing_header(request.headers.get("x-routing-key"))
    except RequestError as exc:
        raise _client_error(exc) from None
    answers, ids = await service.answer(model, rows, key, explain)
    headers = _answered(model, request, answers)
    return _json_answer(model.codec.encode_batch(answers, ids), headers)


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    tags=["feedback"],
    responses={404: {"model": ErrorResponse}, **_CLIENT_ERRORS},
)
async def feedback(service: ServiceDep, request: Request) -> dict[str, Any]:
    """Record the true outcome (JSON true or false) of an earlier prediction, for live
    accuracy."""
    try:
        item = validate_object(
            FeedbackRequest, await request.body(), request.headers.get("content-type")
        )
    except RequestError as exc:
        raise _client_error(exc) from None
    assert isinstance(item, FeedbackRequest)
    try:
        await service.record_feedback(item.prediction_id, item.outcome)
    except UnknownPredictionError as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except FeedbackUnavailableError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    return {"prediction_id": item.prediction_id, "outcome": item.outcome}


admin_router = APIRouter(prefix="/admin", tags=["admin"])


def _reload_refused(status: int, serving: Any, exc: ReloadError) -> HTTPException:
    """A refused reload: what keeps serving and the stable reason (never exception text)."""
    keeps = f"version {serving.version} keeps serving" if serving else "no model is serving"
    return HTTPException(
        status, detail={"message": f"reload refused; {keeps}", "reason": exc.reason}
    )


async def _check_token(service: ServiceDep, request: Request) -> None:
    token = service.settings.admin_token
    expected = token.get_secret_value().encode() if token else b""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if (
        not expected
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(given.strip().encode(), expected)
    ):
        raise HTTPException(
            401,
            detail="a valid admin bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


@admin_router.post(
    "/reload",
    response_model=ReloadResponse,
    dependencies=[Depends(_check_token)],
    responses={401: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)
async def reload_model(
    service: ServiceDep, lifecycle: LifecycleDep, request: Request
) -> dict[str, Any]:
    """Load and verify the configured model beside the current one and swap atomically, then
    have every worker do the same; answers once all live workers have swapped (or after
    RELOAD_WAIT_TIMEOUT, naming those that have not).

    A bad bundle is refused with 409 and a stable reason (detail in the log); the current
    model keeps serving and no other worker is asked to reload.
    """
    serving = service.model
    try:
        report = await lifecycle.reload_everywhere()
    except ReloadError as exc:
        raise _reload_refused(409, serving, exc) from None
    result = report.result
    request.state.model_version = result.model.version
    return {
        "status": "reloaded" if result.changed else "unchanged",
        "model_version": result.model.version,
        "previous_version": result.previous_version,
        "backend": result.model.backend,
        "generation": report.generation,
        "all_workers_swapped": not report.not_swapped,
        "workers": [w.public() for w in report.workers],
        "not_swapped": report.not_swapped,
    }


# ---------------------------------------------------------------------------- registry webhook

hooks_router = APIRouter(tags=["admin"])


@hooks_router.post(
    HOOK_PATH,
    response_model=WebhookResponse,
    response_model_exclude_none=True,
    responses={
        400: {"model": ErrorResponse, "description": "Missing or malformed header or body"},
        401: {"model": ErrorResponse, "description": "Bad signature, or a replayed delivery"},
        409: {"model": ErrorResponse, "description": "Reload refused; the old model serves"},
        503: {"model": ErrorResponse, "description": "Registry unreachable (MLflow retries)"},
    },
)
async def mlflow_webhook(
    service: ServiceDep, lifecycle: LifecycleDep, request: Request
) -> dict[str, Any]:
    """MLflow registry webhook (WEBHOOK_ENABLED): a signed alias move of the served model
    (or another followed alias) reloads every worker, as `POST /admin/reload` does, and
    answers once they have swapped; other events are answered `ignored`.

    The `X-MLflow-Signature` HMAC is checked against WEBHOOK_SECRET, and a delivery whose
    `X-MLflow-Timestamp` is more than WEBHOOK_TOLERANCE seconds away is refused (401). A
    registry outage answers 503, which MLflow retries; a version that cannot be served 409.
    """
    settings = service.settings
    secret = settings.webhook_secret_bytes
    # mounted only when both are set (Settings checks at start)
    assert secret is not None
    assert settings.model_uri is not None
    body = await request.body()
    try:
        delivery_id = verify(secret, request.headers, body, time.time(), settings.webhook_tolerance)
        delivery = parse_delivery(delivery_id, body)
    except WebhookRefused as exc:
        logger.warning("webhook delivery refused: %s", exc.reason)
        raise HTTPException(exc.status, detail=exc.reason) from None
    name, alias, _ = parse_models_uri(settings.model_uri)
    answer: dict[str, Any] = {"event": delivery.event, "delivery_id": delivery.delivery_id}
    ignored = ignore_reason(delivery, name, followed_aliases(alias or "", settings.webhook_aliases))
    if ignored is not None:
        logger.info("webhook: %s ignored: %s", delivery.event, ignored)
        return answer | {"status": "ignored", "reason": ignored}
    logger.info(
        "webhook: %s of %s@%s; reloading every worker",
        delivery.event,
        delivery.model_name,
        delivery.alias,
        extra={"delivery_id": delivery.delivery_id, "version": delivery.version},
    )
    serving = service.model
    try:
        report = await lifecycle.reload_everywhere()
    except ReloadError as exc:
        # an outage is worth MLflow's retry (it retries 5xx); a bad version is not
        status = 503 if exc.reason == REGISTRY_UNREACHABLE else 409
        raise _reload_refused(status, serving, exc) from None
    result = report.result
    request.state.model_version = result.model.version
    return answer | {
        "status": "reloaded" if result.changed else "unchanged",
        "model_version": result.model.version,
        "previous_version": result.previous_version,
        "generation": report.generation,
        "all_workers_swapped": not report.not_swapped,
    }


# ---------------------------------------------------------------------------- batch feedback

_FEEDBACK_LIST = TypeAdapter(list[FeedbackRequest])
# Feedback items recorded at once: overlaps the store round-trips without flooding it.
_FEEDBACK_CONCURRENCY = 8


@router.post(
    "/feedback/batch",
    response_model=FeedbackBatchResponse,
    tags=["feedback"],
    responses=_CLIENT_ERRORS,
)
async def feedback_batch(service: ServiceDep, request: Request) -> dict[str, Any]:
    """Record many outcomes at once: a JSON array of {prediction_id, outcome}.

    The array is validated whole first (422 names the item index and field; nothing is
    recorded). Then each item is recorded on its own with the same code as POST /feedback:
    the answer gives each item's status, `recorded` or `unknown_prediction` (an id never
    logged). Recording an outcome replaces any earlier one, so after a 503 (store down) the
    whole array can be sent again safely.
    """
    try:
        payload = parse_json_value(
            await request.body(), request.headers.get("content-type"), "a JSON array"
        )
        if not isinstance(payload, list):
            raise unprocessable(
                "expected a JSON array of {prediction_id, outcome} objects", "list_type"
            )
    except RequestError as exc:
        raise _client_error(exc) from None
    limit = service.settings.max_batch_size
    if len(payload) > limit:
        raise HTTPException(
            413,
            detail=f"{len(payload)} feedback items in one call; the limit is "
            f"{limit} (MAX_BATCH_SIZE): split the array",
        )
    try:
        items = _FEEDBACK_LIST.validate_python(payload)
    except ValidationError as exc:
        raise _client_error(validation_error(exc, list(FeedbackRequest.model_fields))) from None
    gate = asyncio.Semaphore(_FEEDBACK_CONCURRENCY)

    async def record(item: FeedbackRequest) -> str:
        async with gate:
            try:
                await service.record_feedback(item.prediction_id, item.outcome)
            except UnknownPredictionError:
                return "unknown_prediction"
        return "recorded"

    # An id sent twice: the later outcome wins, as if the items were sent one by one; each id
    # is recorded once, so no two writes for the same prediction race each other.
    last = {item.prediction_id: item for item in items}
    try:
        outcomes = await asyncio.gather(*(record(item) for item in last.values()))
    except FeedbackUnavailableError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    status_of = dict(zip(last, outcomes, strict=True))
    statuses = [status_of[item.prediction_id] for item in items]
    results = [
        {"prediction_id": item.prediction_id, "outcome": item.outcome, "status": status}
        for item, status in zip(items, statuses, strict=True)
    ]
    return {
        "recorded": sum(s == "recorded" for s in statuses),
        "unknown": sum(s == "unknown_prediction" for s in statuses),
        "results": results,
    }
