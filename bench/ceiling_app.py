"""The ceiling: the service's request schema and response model, and a constant answer.

Everything a FastAPI endpoint costs (HTTP parsing, body validation against the very schema
the service builds, response serialisation) and no model, no logging, no metrics: no
``/predict`` on this stack can be faster. Run: ``uvicorn --factory bench.ceiling_app:create_app``.
"""

# No ``from __future__ import annotations``: FastAPI must see the locally built model class.
from typing import Any

from fastapi import FastAPI

from app.schemas import PredictionResponse, build_customer_model
from bench._bundle import bench_bundle

ANSWER = PredictionResponse(
    churn_probability=0.5,
    churn_prediction=True,
    risk_tier="MEDIUM",
    model_version="constant",
    prediction_id="00000000000000000000000000000000",
)


def create_app() -> FastAPI:
    """A FastAPI app whose /predict validates a customer and returns a constant."""
    bundle = bench_bundle()
    customer_model: Any = build_customer_model(bundle.schema)
    app = FastAPI(title="ceiling: constant answer")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.post("/predict", response_model=PredictionResponse)
    async def predict(customer: customer_model) -> PredictionResponse:
        return ANSWER

    return app
