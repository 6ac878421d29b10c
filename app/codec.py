"""The prediction request codec: JSON bytes in, rows or a request error out; answers in, bytes out.

Both transports use it: the pure-ASGI fast path (app.fastpath) and the FastAPI routes
(app.api, which also document the endpoints in OpenAPI). So every rule about a request is
written once, here:

- the content type: JSON (``application/json`` or any ``+json``) or 415;
- the body: a JSON object, never empty or malformed, with no NaN or Infinity anywhere (422);
- the batch size: at most MAX_BATCH_SIZE customers (413);
- the fields: the served model's request types (app.schemas, built from the feature schema),
  strict and closed, every problem named by location (422); an unknown field next to a missing
  one is named as the likely typo.

What is accepted is exactly what the request types accept from the bytes in pydantic-core.

A valid body is validated once, from its bytes, in pydantic-core (Rust): that is the fast
path's speed. Only a refused body is parsed again, with the standard library, to say exactly
why (NaN, malformed JSON, batch size, each field); a body containing NaN or Infinity cannot
pass the request types (every field is typed and extra fields are refused), so the NaN rule
costs nothing on valid requests (tests/test_api_fastpath.py checks that property).

Options come in the query string, parsed here too: ``explain=true`` asks for each
prediction's explanation (churn.explain); a value that is not a boolean, or a model that
cannot be explained, is a 422 naming ``query.explain`` and why.

The answer is formatted directly as the JSON FastAPI's JSONResponse would render for
`app.schemas.PredictionResponse` (compact, UTF-8), one f-string per prediction, with
``warnings`` present only when the input was reinterpreted.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import parse_qsl

from pydantic import BaseModel, TypeAdapter, ValidationError

from app.batcher import Row
from app.schemas import MAX_ROUTING_KEY_LENGTH, ROUTING_FIELD, batch_type, customer_type
from churn.schema import FeatureSchema

JSON_MEDIA_TYPE = "application/json"
UNSUPPORTED_MEDIA_TYPE = (
    "unsupported media type: send the body as JSON with 'Content-Type: application/json'"
)


class RequestError(Exception):
    """A client mistake: the HTTP status and the ``detail`` of the error response."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail

    def body(self) -> bytes:
        """The error response body, as FastAPI renders an HTTPException."""
        return _json({"detail": self.detail}).encode()


def _json(value: Any) -> str:
    """JSON as FastAPI's JSONResponse renders it (compact, UTF-8, no NaN)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


@functools.lru_cache(maxsize=64)
def version_json(version: str) -> str:
    """A model version as JSON, made once per version (a challenger's answers name theirs)."""
    return _json(version)


def is_json(content_type: str | bytes | None) -> bool:
    """The content-type rule: application/json or any +json media type (else 415)."""
    if not content_type:
        return False
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == JSON_MEDIA_TYPE or mime.endswith("+json")


def unprocessable(msg: str, type_: str, loc: tuple[str | int, ...] = ()) -> RequestError:
    return RequestError(422, [{"loc": ["body", *loc], "msg": msg, "type": type_}])


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed; send finite numbers only")


_JSON_NAMES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def parse_json_value(
    body: bytes, content_type: str | bytes | None, expected: str = "a JSON object"
) -> Any:
    """The body as any JSON value: 415 unless the content type is JSON; 422 if it is empty,
    malformed, or holds NaN or Infinity anywhere."""
    if not is_json(content_type):
        raise RequestError(415, UNSUPPORTED_MEDIA_TYPE)
    if not body.strip():
        raise unprocessable(f"the body is empty; send {expected}", "missing")
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise unprocessable(f"malformed JSON: {exc}", "json_invalid") from None


def parse_json(body: bytes, content_type: str | bytes | None) -> dict[str, Any]:
    """The body as a JSON object (see `parse_json_value`; 422 if it is not an object)."""
    payload = parse_json_value(body, content_type)
    if not isinstance(payload, dict):
        got = _JSON_NAMES.get(type(payload), type(payload).__name__)
        raise unprocessable(f"expected a JSON object, got {got}", "model_type")
    return payload


# pydantic's tags for the branches of the routing key's union (str | int)
_ROUTING_BRANCHES = frozenset({"constrained-str", "str", "int"})


def validation_error(
    exc: ValidationError, fields: list[str], top: list[str] | None = None
) -> RequestError:
    """A 422 with one entry per problem (location, reason). An unknown field is named with
    the field it probably meant: a missing one of the same object if one is close, else any
    close one of `fields` (of `top` for the body's own keys when it wraps the objects, as
    the batch request does)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    missing: dict[tuple[Any, ...], list[str]] = {}
    for err in errors:
        if err["type"] == "missing" and err["loc"]:
            missing.setdefault(tuple(err["loc"][:-1]), []).append(str(err["loc"][-1]))
    detail = []
    routing_refused: set[tuple[Any, ...]] = set()
    for err in errors:
        loc = tuple(err["loc"])
        if len(loc) >= 2 and loc[-2] == ROUTING_FIELD and loc[-1] in _ROUTING_BRANCHES:
            # one entry for the optional routing key, not one per branch of its union
            if loc[:-1] not in routing_refused:
                routing_refused.add(loc[:-1])
                detail.append(
                    {
                        "loc": ["body", *loc[:-1]],
                        "msg": f"{ROUTING_FIELD}: the routing key must be a string of 1 to "
                        f"{MAX_ROUTING_KEY_LENGTH} characters or an integer",
                        "type": "routing_key_type",
                    }
                )
            continue
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and err["loc"]:
            name = str(err["loc"][-1])
            known = top if top is not None and len(err["loc"]) == 1 else fields
            candidates = missing.get(tuple(err["loc"][:-1])) or known
            close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"the fields are {known}"
            msg = f"{name}: unknown field; {hint}"
        detail.append({"loc": ["body", *err["loc"]], "msg": msg, "type": err["type"]})
    return RequestError(422, detail)


def routing_header(value: str | bytes | None) -> str | None:
    """The request's ``X-Routing-Key`` (None when absent or empty); a 422 naming the header
    when longer than a routing key may be."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip()
    if len(value) > MAX_ROUTING_KEY_LENGTH:
        raise RequestError(
            422,
            [
                {
                    "loc": ["header", "X-Routing-Key"],
                    "msg": f"X-Routing-Key: at most {MAX_ROUTING_KEY_LENGTH} characters",
                    "type": "routing_key_type",
                }
            ],
        )
    return value or None


def validate_object(model_type: type[BaseModel], body: bytes, content_type: Any) -> BaseModel:
    """A small JSON request (e.g. feedback) as `model_type`, under the same rules."""
    payload = parse_json(body, content_type)
    try:
        return model_type.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc, list(model_type.model_fields)) from None


@dataclass(frozen=True)
class Reinterpretation:
    """One input value the model did not take at face value (an answer's ``warnings``)."""

    feature: str
    value: Any
    kind: str  # "unknown_category" | "out_of_range"
    low: float | None = None
    high: float | None = None

    def text(self) -> str:
        if self.kind == "unknown_category":
            return f"{self.feature}: {self.value!r} was not seen in training; scored as unknown"
        return (
            f"{self.feature}: {self.value:g} is outside the training range "
            f"[{self.low:g}, {self.high:g}]; the model extrapolates"
        )


EXPLAIN = "explain"
# The words a query boolean may be (case-insensitive), as FastAPI/pydantic read them.
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
EXPLANATIONS_UNAVAILABLE = "explanations are not available for this model"
NO_EXPLAINER = "no explainer was built for it"


def explain_requested(query: str | bytes) -> bool:
    """Whether the query string says ``explain=true`` (422 for a value that is no boolean;
    the last one wins if the parameter is repeated, as Starlette reads query parameters)."""
    if not query:
        return False
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    value = None
    for key, given in parse_qsl(query, keep_blank_values=True):
        if key == EXPLAIN:
            value = given
    if value is None:
        return False
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise RequestError(
        422,
        [
            {
                "loc": ["query", EXPLAIN],
                "msg": f"explain must be true or false, got {value!r}",
                "type": "bool_parsing",
            }
        ],
    )


class RequestCodec:
    """Decoding and encoding for one served model (built at load, immutable).

    `unexplainable` is why this model's predictions cannot be explained (None: they can);
    `top_reasons` is how many plain-word reasons an explanation gives."""

    _BOOL = ("false", "true")

    def __init__(
        self,
        schema: FeatureSchema,
        max_batch_size: int,
        model_version: str,
        *,
        unexplainable: str | None = NO_EXPLAINER,
        top_reasons: int = 3,
    ) -> None:
        self.unexplainable = unexplainable
        self.top_reasons = top_reasons
        self.max_batch_size = max_batch_size
        self.fields = schema.names
        # the request types, also what OpenAPI documents (app.openapi)
        self.customer_type = customer_type(schema)
        self.batch_type = batch_type(schema, max_batch_size)
        self.customer_validator: TypeAdapter[Any] = TypeAdapter(self.customer_type)
        self.batch_validator: TypeAdapter[Any] = TypeAdapter(self.batch_type)
        self.version = model_version
        self.version_json = _json(model_version)

    # ------------------------------------------------------------------ decoding

    def decode_explain(self, query: str | bytes) -> bool:
        """Whether the request asks for explanations (`explain_requested`); 422 when it does
        and this model cannot give them, with the reason."""
        if not explain_requested(query):
            return False
        if self.unexplainable is not None:
            raise RequestError(
                422,
                [
                    {
                        "loc": ["query", EXPLAIN],
                        "msg": f"{EXPLANATIONS_UNAVAILABLE}: {self.unexplainable}",
                        "type": "explanation_unavailable",
                    }
                ],
            )
        return True

    def decode_customer(self, body: bytes, content_type: str | bytes | None) -> list[Row]:
        """The one customer of a /predict body, as a row (raises RequestError)."""
        if not is_json(content_type):
            raise RequestError(415, UNSUPPORTED_MEDIA_TYPE)
        try:
            return [self.customer_validator.validate_json(body)]
        except ValidationError as exc:
            raise self._refusal(exc, body, content_type, self.customer_validator) from None

    def decode_batch(self, body: bytes, content_type: str | bytes | None) -> list[Row]:
        """The customers of a /predict/batch body, as rows in order (raises RequestError)."""
        if not is_json(content_type):
            raise RequestError(415, UNSUPPORTED_MEDIA_TYPE)
        try:
            customers: list[Row] = self.batch_validator.validate_json(body)["customers"]
        except ValidationError as exc:
            raise self._refusal(exc, body, content_type, self.batch_validator) from None
        return customers

    def _refusal(
        self,
        refused: ValidationError,
        body: bytes,
        content_type: str | bytes | None,
        validator: TypeAdapter[Any],
    ) -> RequestError:
        """Why pydantic-core refused `body`: the standard library's parser and the same
        validator on the parsed value say it precisely (NaN, malformed JSON, batch size, each
        field). What only pydantic-core's parser refuses (a lone surrogate, which nothing
        downstream could store) is refused with its own reason."""
        payload = parse_json(body, content_type)
        if validator is self.batch_validator:
            customers = payload.get("customers")
            if isinstance(customers, list) and len(customers) > self.max_batch_size:
                return RequestError(
                    413,
                    f"{len(customers)} customers in one call; the limit is "
                    f"{self.max_batch_size} (MAX_BATCH_SIZE): split the batch",
                )
        top = ["customers"] if validator is self.batch_validator else None
        try:
            validator.validate_python(payload)
        except ValidationError as exc:
            return validation_error(exc, self.fields, top)
        return validation_error(refused, self.fields, top)

    # ------------------------------------------------------------------ encoding

    def predictions(self, answers: Any, ids: Sequence[str]) -> list[str]:
        """Each answer's JSON (`app.schemas.PredictionResponse`). Probabilities are finite
        (checked at load) and rounded, so ``float.__repr__`` is their JSON; tiers and ids are
        plain ASCII; ``warnings`` only where the input was reinterpreted. A canary batch
        (app.model.SplitAnswers) is encoded part by part with each part's own ids (`ids` are
        the same, in request order)."""
        encode_parts = getattr(answers, "encode_parts", None)
        if encode_parts is not None:  # app.model.SplitAnswers: each part as it is, then ordered
            items: list[str] = encode_parts(self.predictions)
            return items
        # the answering model's version when it is not this codec's (a challenger's answers)
        single = answers.version
        version, flag = self.version_json if single is None else version_json(single), self._BOOL
        # an f-string per prediction: a third cheaper than %-formatting a template
        items = [
            f'{{"churn_probability":{p!r},"churn_prediction":{flag[d]},"risk_tier":"{t}",'
            f'"model_version":{version},"prediction_id":"{i}"}}'
            for p, d, t, i in zip(
                answers.probabilities, answers.decisions, answers.tiers, ids, strict=True
            )
        ]
        if answers.warned:  # rare: the loop runs only then
            for k, found in enumerate(answers.warnings):
                if found:
                    texts = _json([w.text() for w in found])
                    items[k] = f'{items[k][:-1]},"warnings":{texts}}}'
        explanations = getattr(answers, "explanations", None)
        if explanations is not None:
            for k, explained in enumerate(explanation_objects(answers, self.top_reasons)):
                items[k] = f'{items[k][:-1]},"explanation":{_json(explained)}}}'
        return items

    def encode_customer(self, answers: Any, ids: Sequence[str]) -> bytes:
        return self.predictions(answers, ids)[0].encode()

    def encode_batch(self, answers: Any, ids: Sequence[str]) -> bytes:
        """The batch answer; its top-level ``model_version`` is the one model that answered
        every row, or this (the champion's) codec's version when routing split the batch
        (each prediction names its own)."""
        items = ",".join(self.predictions(answers, ids))
        single = answers.version
        version = self.version_json if single is None else version_json(single)
        head = f'{{"model_version":{version},"count":{len(ids)},"predictions":['
        return f"{head}{items}]}}".encode()

    def headers(self, answers: Any) -> list[tuple[bytes, bytes]]:
        """``X-Model-Version`` (the answering version; both, champion's first, when a batch
        was split) and ``X-Model-Role`` (champion, challenger or mixed)."""
        version = answers.version  # the one version that answered, unless this codec's
        if answers.role == "mixed":
            version = ",".join(dict.fromkeys([self.version, *answers.answered_by()]))
        elif version is None:
            version = self.version
        return [
            (b"x-model-version", version.encode()),
            (b"x-model-role", answers.role.encode()),
        ]


def explanation_objects(answers: Any, top_reasons: int = 3) -> list[dict[str, Any]]:
    """Each answer's explanation as a JSON-ready object (`app.schemas.ExplanationResponse`):
    base value, the probability explained, contribution per original feature, the top
    reasons in plain words and the method. For any encoder of explained answers (the JSON
    API here; a V2 encoder can put the same objects in a BYTES output or parameters)."""
    explanations = answers.explanations
    if explanations is None:
        return []
    rows: list[dict[str, Any]] = explanations.rows(answers.columns, top_reasons)
    return rows
