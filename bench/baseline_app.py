"""The blog-style baseline: what most "serve your model with FastAPI" tutorials show.

An ``async def`` endpoint that builds a one-row pandas DataFrame per request and calls the
sklearn pipeline's ``predict_proba`` on the event loop. Same request schema and the same
pipeline as the service, so the difference is the serving design, not the model.
Run: ``uvicorn --factory bench.baseline_app:create_app``.
"""

# No ``from __future__ import annotations``: FastAPI must see the locally built model class.
from typing import Any

import pandas as pd
from fastapi import FastAPI

from app.schemas import build_customer_model
from bench._bundle import bench_bundle
from churn.risk import risk_tier


def create_app() -> FastAPI:
    """The tutorial app: model loaded at start, prediction inline in an async handler."""
    bundle = bench_bundle()
    pipeline = bundle.pipeline
    risk = bundle.metadata.get("risk") or {"high": 0.75, "medium": 0.45, "decision_threshold": 0.5}
    customer_model: Any = build_customer_model(bundle.schema)
    app = FastAPI(title="blog-style baseline")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.post("/predict")
    async def predict(customer: customer_model) -> dict[str, Any]:
        frame = pd.DataFrame([customer.model_dump()])
        probability = float(pipeline.predict_proba(frame)[0, 1])
        return {
            "churn_probability": round(probability, 4),
            "churn_prediction": probability >= risk["decision_threshold"],
            "risk_tier": risk_tier(probability, risk["high"], risk["medium"]),
            "model_version": bundle.version,
        }

    return app
