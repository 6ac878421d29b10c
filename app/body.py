"""Reading and validating JSON bodies: every client mistake becomes a 4xx naming the problem.

The body is parsed with the standard library (NaN and Infinity refused wherever they appear)
and validated against the served model's request model, which is built at load time from the
bundle's feature schema; that is why handlers read the body here rather than declare it.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed; send finite numbers only")


def unprocessable(msg: str, type_: str, loc: tuple[str | int, ...] = ()) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["body", *loc], "msg": msg, "type": type_}])


async def read_json(request: Request) -> Any:
    """The parsed JSON body: 415 unless the content type is JSON, 422 if empty or malformed."""
    if not _is_json(request.headers.get("content-type")):
        raise HTTPException(
            415,
            detail="unsupported media type: send the body as JSON with "
            "'Content-Type: application/json'",
        )
    body = await request.body()
    if not body.strip():
        raise unprocessable("the body is empty; send a JSON object", "missing")
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise unprocessable(f"malformed JSON: {exc}", "json_invalid") from None


def validation_errors(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> HTTPException:
    """FastAPI-style 422: one entry per problem, with the field path and the reason."""
    detail = [
        {"loc": ["body", *prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    return HTTPException(422, detail=detail)


_JSON_NAMES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def validate(model_type: type[BaseModel], payload: Any) -> BaseModel:
    if not isinstance(payload, dict):
        got = _JSON_NAMES.get(type(payload), type(payload).__name__)
        raise unprocessable(f"expected a JSON object, got {got}", "model_type")
    try:
        return model_type.model_validate(payload)
    except ValidationError as exc:
        raise validation_errors(exc) from None
