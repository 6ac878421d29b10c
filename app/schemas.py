"""Request and response models. The request model is built from the bundle's FeatureSchema.

Numeric features become floats (ints when the rule says integer) with the schema's min/max,
categorical features with an ``allowed`` list become a Literal of those values, others free
strings. A model retrained on another feature list is therefore served with no code change.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model
from typing_extensions import TypedDict

from churn.schema import FeatureSchema, FeatureSpec

MAX_CATEGORY_LENGTH = 1000
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
    if spec.kind == "numeric":
        if spec.integer:
            # An int is never NaN or infinite; allow_inf_nan on one would add a Python
            # validator call per value (pydantic applies it outside pydantic-core).
            return int, Field(
                ge=spec.min,
                le=spec.max if spec.max is not None else FLOAT32_MAX,
                description=_describe_numeric(spec),
            )
        return float, Field(
            ge=spec.min,
            le=spec.max if spec.max is not None else FLOAT32_MAX,
            allow_inf_nan=False,
            description=_describe_numeric(spec),
        )
    if spec.allowed:
        return Literal[tuple(spec.allowed)], Field(description=f"One of {spec.allowed}")
    seen = ", ".join(spec.categories or [])
    return str, Field(
        max_length=MAX_CATEGORY_LENGTH,
        description=f"Free text; values seen in training: {seen}. Others are accepted "
        "(the model treats them as unknown) and counted in unknown_category_total.",
    )


def _describe_numeric(spec: FeatureSpec) -> str:
    bounds = []
    if spec.min is not None:
        bounds.append(f">= {spec.min:g}")
    if spec.max is not None:
        bounds.append(f"<= {spec.max:g}")
    kind = "integer" if spec.integer else "number"
    return f"{kind} {' and '.join(bounds)}".strip()


def build_customer_model(schema: FeatureSchema) -> type[BaseModel]:
    """The request model of one customer, fields in the schema's feature order."""
    fields: dict[str, Any] = {spec.name: _field(spec) for spec in schema.features}
    config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [example_customer(schema)]},
    )
    model: type[BaseModel] = create_model("Customer", __config__=config, **fields)
    return model


# TypedDict's functional form, called with fields known only at run time (not a static type)
_typed_dict: Any = TypedDict


def _customer_fields(schema: FeatureSchema) -> Any:
    """A TypedDict with the very fields of `build_customer_model`."""
    fields = {}
    for spec in schema.features:
        kind, info = _field(spec)
        fields[spec.name] = Annotated[kind, info]
    customer = _typed_dict("CustomerFields", fields)
    customer.__pydantic_config__ = ConfigDict(extra="ignore")
    return customer


def build_customer_validator(schema: FeatureSchema) -> TypeAdapter[Any]:
    """One customer as a TypedDict validator: the JSON `build_customer_model` accepts or
    refuses, but the customer comes out as a plain dict (fields in schema order) rather than
    a model instance, at half the cost. The serving fast path uses it; the route and the
    docs use the model."""
    return TypeAdapter(_customer_fields(schema))


def build_batch_validator(schema: FeatureSchema, max_batch_size: int) -> TypeAdapter[Any]:
    """The batch request as a TypedDict validator (see `build_customer_validator`)."""
    customer = _customer_fields(schema)
    customers = Annotated[list[customer], Field(min_length=1, max_length=max_batch_size)]  # type: ignore[valid-type]
    batch = _typed_dict("BatchFields", {"customers": customers})
    batch.__pydantic_config__ = ConfigDict(extra="ignore")
    return TypeAdapter(batch)


def build_batch_model(
    customer: type[BaseModel], max_batch_size: int, schema: FeatureSchema
) -> type[BaseModel]:
    config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"customers": [example_customer(schema)]}]},
    )
    model: type[BaseModel] = create_model(
        "BatchRequest",
        __config__=config,
        customers=(list[customer], Field(min_length=1, max_length=max_batch_size)),  # type: ignore[valid-type]
    )
    return model


RiskTier = Literal["HIGH", "MEDIUM", "LOW"]


class PredictionResponse(BaseModel):
    churn_probability: float = Field(description="Probability of churn, rounded to 4 places")
    churn_prediction: bool = Field(description="probability >= the decision threshold")
    risk_tier: RiskTier
    model_version: str = Field(description="Registered version of the model that answered")
    prediction_id: str = Field(description="Send it back to POST /feedback with the outcome")

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
        extra="ignore",
        json_schema_extra={
            "examples": [{"prediction_id": "5f0c1e2a9b3d4c6e8f7a1b2c3d4e5f60", "outcome": True}]
        },
    )

    prediction_id: str = Field(min_length=1, max_length=64)
    outcome: bool = Field(description="Did the customer actually churn?")


class FeedbackResponse(BaseModel):
    prediction_id: str
    outcome: bool
    status: Literal["recorded"] = "recorded"


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
