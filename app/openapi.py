"""OpenAPI document whose request bodies are the served model's request models.

Handlers read bodies themselves (the request model is only known once a bundle is loaded),
so the document is patched here with the current model's schemas and rebuilt after a reload
that changes them. /docs shows a worked example built from the feature schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, TypeAdapter

from app.schemas import FeedbackRequest

REF = "#/components/schemas/{model}"


def _reference(model_type: Any, components: dict[str, Any]) -> dict[str, Any]:
    """`model_type` (a BaseModel or the codec's request TypedDict) as a component."""
    if isinstance(model_type, type) and issubclass(model_type, BaseModel):
        schema = model_type.model_json_schema(ref_template=REF)
    else:
        schema = TypeAdapter(model_type).json_schema(ref_template=REF)
    components.update(schema.pop("$defs", {}))
    components[model_type.__name__] = schema
    return {"$ref": REF.format(model=model_type.__name__)}


def _set_body(document: dict[str, Any], path: str, schema: dict[str, Any]) -> None:
    operation = document["paths"].get(path, {}).get("post")
    if operation is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }


def custom_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        service = getattr(app.state, "service", None)
        model = getattr(service, "model", None)
        codec = model.codec if model is not None else None
        if cache.get("key") is codec and "document" in cache:
            return dict(cache["document"])
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = document.setdefault("components", {}).setdefault("schemas", {})
        if codec is not None:
            _set_body(document, "/predict", _reference(codec.customer_type, components))
            _set_body(document, "/predict/batch", _reference(codec.batch_type, components))
        else:
            loose = {"type": "object", "description": "available once a model is loaded"}
            _set_body(document, "/predict", loose)
            _set_body(document, "/predict/batch", loose)
        _set_body(document, "/feedback", _reference(FeedbackRequest, components))
        cache.update(key=codec, document=document)
        return dict(document)

    return openapi
