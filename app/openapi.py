"""OpenAPI document whose request bodies are the served model's request models.

Handlers read bodies themselves (the request model is only known once a bundle is loaded),
so the document is patched here with the current model's schemas and rebuilt after a reload
that changes them. /docs shows a worked example built from the feature schema.

The documentation pages (Swagger UI at /docs, ReDoc at /redoc) load their scripts and styles
from the API itself: the files ship in the pinned `fastapi-offline` package, so the docs work
on a machine with no internet access (FastAPI's defaults fetch them from a CDN). DOCS_ENABLED
turns the pages and /openapi.json off.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, TypeAdapter

from app.schemas import FeedbackRequest
from app.v2 import INFER_PATHS, InferenceRequest, document_example

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


def _set_body(
    document: dict[str, Any], path: str, schema: dict[str, Any], example: Any = None
) -> None:
    operation = document["paths"].get(path, {}).get("post")
    if operation is not None:
        media: dict[str, Any] = {"schema": schema}
        if example is not None:
            media["example"] = example
        operation["requestBody"] = {"required": True, "content": {"application/json": media}}


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
        v2_body = _reference(InferenceRequest, components)
        example = document_example(model)
        for path in INFER_PATHS:
            _set_body(document, path, v2_body, example)
        feedback = _reference(FeedbackRequest, components)
        _set_body(document, "/feedback", feedback)
        _set_body(document, "/feedback/batch", {"type": "array", "items": feedback})
        cache.update(key=codec, document=document)
        return dict(document)

    return openapi


OPENAPI_URL = "/openapi.json"
DOCS_ASSETS_URL = "/docs-assets"


def docs_assets_dir() -> Path:
    """Swagger UI and ReDoc bundles as shipped by the `fastapi-offline` package."""
    return Path(str(files("fastapi_offline") / "static"))


def add_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc with assets from this API, and redirect / to /docs."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=docs_assets_dir()), name="docs-assets")
    docs = APIRouter(include_in_schema=False)

    @docs.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @docs.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            oauth2_redirect_url=None,
        )

    @docs.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=OPENAPI_URL,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    app.include_router(docs)
