"""Request and response types. The request types are built from the bundle's FeatureSchema.

Numeric features become floats (ints when the rule says integer) with the schema's min/max,
categorical features with an ``allowed`` list become a Literal of those values, others free
strings; ``null`` is accepted where the pipeline imputes the feature. A model retrained on
another feature list is therefore served with no code change. app.codec validates requests
with these types and formats the answers that `PredictionResponse` documents.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, create_model
from typing_extensions import TypedDict

from churn.schema import FeatureSchema, FeatureSpec

MAX_CATEGORY_LENGTH = 1000
# The optional routing key of a customer (app.rollout): not a feature.
ROUTING_FIELD = "customer_id"
MAX_ROUTING_KEY_LENGTH = 200
# ONNX Runtime computes in float32: larger numbers would overflow to infinity.
FLOAT32_MAX = 3.4e38


def _numeric_example(spec: FeatureSpec) -> float | int:
    low = spec.observed_min if spec.observed_min is not None else spec.min or 0.0
    high = spec.observed_max if spec.observed_max is not None else low + 10.0
    value = low + (high - low) / 3
    return round(value) if spec.integer else round(value, 2)


def example_customer(schema: FeatureSchema) -> dict[str, Any]:
    """A plausible customer for the docs: a value inside each feature's observed range."""
    example: dict[str, Any] = {}
    for spec in schema.features:
        if spec.kind == "numeric":
            example[spec.name] = _numeric_example(spec)
        else:
            choices = spec.allowed or spec.categories or ["unknown"]
            example[spec.name] = choices[0]
    return example


def _field(spec: FeatureSpec) -> tuple[Any, Any]:
    """One feature's type and constraints: the single definition both the validator and the
    OpenAPI document use. Strict types (the request model's config): a number is a JSON
    number (never a string or a boolean), an integer feature a JSON integer. ``null`` is
    accepted where the model imputes the feature (``spec.imputed``)."""
    kind: Any
    if spec.kind == "numeric":
        if spec.integer:
            # An int is never NaN or infinite; allow_inf_nan on one would add a Python
            # validator call per value (pydantic applies it outside pydantic-core).
            kind, info = (
                int,
                Field(
                    ge=spec.min,
                    le=spec.max if spec.max is not None else FLOAT32_MAX,
                    description=_describe_numeric(spec),
                ),
            )
        else:
            kind, info = (
                float,
                Field(
                    ge=spec.min,
                    le=spec.max if spec.max is not None else FLOAT32_MAX,
                    allow_inf_nan=False,
                    description=_describe_numeric(spec),
                ),
            )
    elif spec.allowed:
        kind, info = Literal[tuple(spec.allowed)], Field(description=f"One of {spec.allowed}")
    else:
        seen = ", ".join(spec.categories or [])
        kind, info = (
            str,
            Field(
                max_length=MAX_CATEGORY_LENGTH,
                description=f"Free text; values seen in training: {seen}. Others are accepted, "
                "scored as unknown, counted in unknown_category_total and named in the answer's "
                "warnings.",
            ),
        )
    if spec.imputed:
        kind = kind | None
        info.description = f"{info.description}; null if unknown (the model imputes it)"
    return kind, info


def feature_type(spec: FeatureSpec) -> Any:
    """One feature's value type with its constraints (what a customer's field is validated
    with; the Open Inference Protocol validates each tensor element with it too)."""
    kind, info = _field(spec)
    return Annotated[kind, info]


def _describe_numeric(spec: FeatureSpec) -> str:
    bounds = []
    if spec.min is not None:
        bounds.append(f">= {spec.min:g}")
    if spec.max is not None:
        bounds.append(f"<= {spec.max:g}")
    kind = "integer" if spec.integer else "number"
    return f"{kind} {' and '.join(bounds)}".strip()


# Strict (no "2" or true as numbers, no "off" as a boolean) and closed: an unknown field is a
# 422 naming it (with the likely intended field when one is missing), never silently dropped.
REQUEST_CONFIG = ConfigDict(strict=True, extra="forbid")

# TypedDict's functional form, called with fields known only at run time (not a static type)
_typed_dict: Any = TypedDict


def customer_type(schema: FeatureSchema) -> Any:
    """One customer as a TypedDict, fields in the schema's feature order: validated in
    pydantic-core (Rust) straight from the JSON bytes into a plain dict, and documented in
    OpenAPI as the ``Customer`` schema."""
    fields: dict[str, Any] = {spec.name: feature_type(spec) for spec in schema.features}
    if ROUTING_FIELD not in fields:
        fields[ROUTING_FIELD] = NotRequired[
            Annotated[
                Annotated[str, Field(min_length=1, max_length=MAX_ROUTING_KEY_LENGTH)] | int,
                Field(
                    description="optional: who the customer is, a string or an integer. It "
                    "routes the customer to the same model every time during a canary "
                    "rollout; not a feature (the model never sees it)"
                ),
            ]
        ]
    customer = _typed_dict("Customer", fields)
    customer.__pydantic_config__ = ConfigDict(
        **REQUEST_CONFIG, json_schema_extra={"examples": [example_customer(schema)]}
    )
    return customer


def batch_type(schema: FeatureSchema, max_batch_size: int) -> Any:
    """The batch request (``{"customers": [...]}``) as a TypedDict; see `customer_type`."""
    customer = customer_type(schema)
    customers = Annotated[
        list[customer],  # type: ignore[valid-type]
        Field(
            min_length=1,
            max_length=max_batch_size,
            description=f"1 to {max_batch_size} customers (MAX_BATCH_SIZE). All or nothing: "
            "if any customer is invalid, nothing is scored and the 422 lists every invalid "
            "customer by index, field and reason.",
        ),
    ]
    batch = _typed_dict("BatchRequest", {"customers": customers})
    batch.__pydantic_config__ = ConfigDict(
        **REQUEST_CONFIG,
        json_schema_extra={"examples": [{"customers": [example_customer(schema)]}]},
    )
    return batch


def build_customer_model(schema: FeatureSchema) -> type[BaseModel]:
    """The same customer as a BaseModel, for the benchmark baselines (bench/) that declare
    a FastAPI body the usual way; serving uses `customer_type`."""
    fields: dict[str, Any] = {spec.name: _field(spec) for spec in schema.features}
    model: type[BaseModel] = create_model("Customer", __config__=REQUEST_CONFIG, **fields)
    return model


RiskTier = Literal["HIGH", "MEDIUM", "LOW"]


class ExplanationResponse(BaseModel):
    """Why one prediction is what it is (churn.explain; present with `?explain=true`)."""

    base_value: float = Field(
        description="The model's expected probability before any feature is known"
    )
    probability: float = Field(
        description="The probability explained, unrounded: base_value + sum(contributions). "
        "Equal to the served churn_probability before rounding with the forest and sklearn "
        "backends; within the ONNX export's checked tolerance with the ONNX backend"
    )
    contributions: dict[str, float] = Field(
        description="Per original feature (one-hot columns summed back), how much it moved "
        "the probability: positive raises the churn risk"
    )
    reasons: list[str] = Field(
        description="The largest contributions in plain words, e.g. "
        "'Contract type: Month-to-month +0.21' (EXPLAIN_TOP_REASONS of them)"
    )
    method: str = Field(
        description="tree_shap_probability (forest), tree_shap_margin_secant (boosting), "
        "linear_margin_secant (logistic regression)"
    )


class PredictionResponse(BaseModel):
    """The answer for one customer (formatted by app.codec; this model documents it)."""

    churn_probability: float = Field(description="Probability of churn, rounded to 4 places")
    churn_prediction: bool = Field(description="probability >= the decision threshold")
    risk_tier: RiskTier
    model_version: str = Field(description="Registered version of the model that answered")
    prediction_id: str = Field(description="Send it back to POST /feedback with the outcome")
    warnings: list[str] | None = Field(
        default=None,
        description="Present only when the input was reinterpreted: a category not seen in "
        "training (scored as unknown) or a value outside the training range.",
    )
    explanation: ExplanationResponse | None = Field(
        default=None, description="Present only with `?explain=true`"
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "churn_probability": 0.8123,
                    "churn_prediction": True,
                    "risk_tier": "HIGH",
                    "model_version": "3",
                    "prediction_id": "5f0c1e2a9b3d4c6e8f7a1b2c3d4e5f60",
                }
            ]
        }
    )


class BatchResponse(BaseModel):
    model_version: str
    count: int
    predictions: list[PredictionResponse]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [{"prediction_id": "5f0c1e2a9b3d4c6e8f7a1b2c3d4e5f60", "outcome": True}]
        },
    )

    prediction_id: str = Field(min_length=1, max_length=64)
    outcome: bool = Field(description="Did the customer actually churn? JSON true or false")


class FeedbackResponse(BaseModel):
    prediction_id: str
    outcome: bool
    status: Literal["recorded"] = "recorded"


class FeedbackItemResult(BaseModel):
    prediction_id: str
    outcome: bool
    status: Literal["recorded", "unknown_prediction"]


class FeedbackBatchResponse(BaseModel):
    recorded: int = Field(description="Items whose outcome was stored")
    unknown: int = Field(description="Items naming a prediction id that was never logged")
    results: list[FeedbackItemResult] = Field(description="One per item, in the order sent")


class HealthResponse(BaseModel):
    status: Literal["healthy"] = "healthy"
    model_loaded: bool
    model_version: str | None
    model_alias: str | None = Field(
        default=None, description="Registry alias the served version stands for, when known"
    )


class ReadyResponse(BaseModel):
    status: Literal["ready", "not ready"]
    model_version: str | None = None
    reason: str | None = None


class WorkerStatus(BaseModel):
    pid: int
    status: str
    generation: int = Field(description="Newest reload generation this worker applied")
    heartbeat: float
    model_version: str | None = None
    model_alias: str | None = None
    run_id: str | None = None
    loaded_at: float | None = Field(default=None, description="Unix time of the swap")
    reason: str | None = None


class ReloadResponse(BaseModel):
    status: Literal["reloaded", "unchanged"]
    model_version: str
    previous_version: str | None
    backend: str
    generation: int = Field(description="The reload generation every worker follows")
    all_workers_swapped: bool
    workers: list[WorkerStatus]
    not_swapped: list[dict[str, Any]] = Field(
        description="Workers that did not swap within RELOAD_WAIT_TIMEOUT, with the reason"
    )


class ErrorResponse(BaseModel):
    detail: Any


class WebhookResponse(BaseModel):
    """The answer to an MLflow webhook delivery."""

    status: Literal["reloaded", "unchanged", "ignored"]
    event: str
    delivery_id: str
    reason: str | None = Field(default=None, description="Why an event was ignored")
    model_version: str | None = None
    previous_version: str | None = None
    generation: int | None = Field(default=None, description="The reload generation asked")
    all_workers_swapped: bool | None = None
