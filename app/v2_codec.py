"""The Open Inference Protocol (V2, REST) codec: an inference request in, columnar rows or a
request error out; answers in, the inference response out.

The request carries one tensor per feature (``shape [N]``, ``FP64``/``INT64`` numerics,
``BYTES`` categories). Each tensor's values are validated with the same per-feature types
the JSON API validates a customer with (app.schemas: strict numbers, integers for integer
features, the schema's ranges, the allowed categories, ``null`` only where the model imputes,
no NaN or Infinity), in one pydantic-core pass straight from the body's bytes; the columns go
to the model as they are (app.batcher.ColumnRows), never as a dict per row. So a rule about a
value is written once, in app.schemas, for both protocols.

Only a refused body is looked at again, in Python, to say exactly why in one message (the
protocol's ``{"error": "..."}``, 400): the input, the element and the reason; an unknown input
name with the feature it probably meant; a batch over MAX_BATCH_SIZE is 413 and a body that
is not JSON 415, as in the JSON API.

The binary tensor extension is not spoken: binary input is refused with 400 and how to send
JSON instead; a request for binary outputs is answered in JSON, which every client reads.

The response is a list of output tensors, one value per row each (`OutputTensor`); callers
may append more per-row outputs (``extra``), which is where explanations will go.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence
from types import GenericAlias
from typing import Annotated, Any, Literal, NamedTuple, NotRequired, Union

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import to_json
from typing_extensions import TypedDict

from app.batcher import ColumnRows
from app.codec import UNSUPPORTED_MEDIA_TYPE, RequestError, is_json
from app.schemas import feature_type
from churn.schema import FeatureSchema, FeatureSpec

# The protocol's tensor datatypes for each kind of feature.
FP64, INT64, BYTES, BOOL = "FP64", "INT64", "BYTES", "BOOL"

# Per-row outputs, in the order they are answered (``warnings`` only when a row has one or
# when it is asked for by name).
OUTPUTS: tuple[tuple[str, str], ...] = (
    ("churn_probability", FP64),
    ("churn_prediction", BOOL),
    ("risk_tier", BYTES),
    ("prediction_id", BYTES),
)
WARNINGS_OUTPUT = ("warnings", BYTES)

BINARY_NOT_SUPPORTED = (
    "binary tensor data is not supported: send every input as JSON in 'data' "
    "(tritonclient: InferInput.set_data_from_numpy(array, binary_data=False))"
)

_TOP_FIELDS = ["id", "parameters", "inputs", "outputs"]
_INPUT_FIELDS = ["name", "shape", "datatype", "data", "parameters"]
_OUTPUT_FIELDS = ["name", "parameters"]
_MAX_PROBLEMS = 5
_JSON = b"application/json"  # the usual content type, checked before the general rule

_STRICT = ConfigDict(strict=True, extra="forbid")
# The protocol's parameter values: a string, a number or a boolean (finite numbers only).
_ParameterValue = Union[  # noqa: UP007 (a runtime union of annotated types)
    StrictBool, StrictInt, Annotated[float, Field(strict=True, allow_inf_nan=False)], StrictStr
]
Parameters = dict[str, _ParameterValue]
_typed_dict: Any = TypedDict  # the functional form, with fields known only at run time


def datatype_of(spec: FeatureSpec) -> str:
    """The tensor datatype of one feature."""
    if spec.kind == "numeric":
        return INT64 if spec.integer else FP64
    return BYTES


class OutputTensor(NamedTuple):
    """One per-row output of an inference response."""

    name: str
    datatype: str
    data: Sequence[Any]
    # [rows] unless given: a [rows, k] tensor holds its data flattened row by row
    shape: tuple[int, ...] | None = None
    parameters: dict[str, Any] | None = None

    def response(self) -> dict[str, Any]:
        """The output as the response holds it."""
        out: dict[str, Any] = {
            "name": self.name,
            "datatype": self.datatype,
            "shape": list(self.shape) if self.shape is not None else [len(self.data)],
            "data": self.data,
        }
        if self.parameters:
            out["parameters"] = self.parameters
        return out


def explanation_outputs(
    explained: list[dict[str, Any]], features: Sequence[str]
) -> list[OutputTensor]:
    """Explanations as V2 outputs: ``explanation_base_value`` (FP64 [N]),
    ``explanation_contributions`` (FP64 [N, F], row-major, the feature order in its
    ``parameters.features``; base + the row's contributions = its probability) and
    ``explanation_reasons`` (BYTES [N], the plain-word reasons joined by "; ")."""
    n = len(explained)
    flat = [float(e["contributions"][name]) for e in explained for name in features]
    return [
        OutputTensor("explanation_base_value", "FP64", [float(e["base_value"]) for e in explained]),
        OutputTensor(
            "explanation_contributions",
            "FP64",
            flat,
            shape=(n, len(features)),
            parameters={"features": ",".join(features)},
        ),
        OutputTensor("explanation_reasons", "BYTES", ["; ".join(e["reasons"]) for e in explained]),
    ]


class InferRequest(NamedTuple):
    """A validated inference request: its rows as columns and what the answer should hold."""

    rows: ColumnRows
    id: str | None = None
    parameters: dict[str, Any] = {}  # noqa: RUF012 (never mutated: a NamedTuple default)
    # output names asked for, in order; None: every output
    outputs: tuple[str, ...] | None = None

    @property
    def explain(self) -> bool:
        """Whether the request asks for explanations (parameter ``explain``, a boolean)."""
        return self.parameters.get("explain") is True


def _error(message: str, status: int = 400) -> RequestError:
    return RequestError(status, message)


def _hint(name: str, known: Sequence[str]) -> str:
    """The likely intended one of `known` for a name that is none of them."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"expected one of {list(known)}"


def _json_kind(value: Any) -> str:
    names = {list: "an array", dict: "an object", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


class V2Codec:
    """Decoding and encoding of the Open Inference Protocol for one served model (built at
    load, immutable)."""

    def __init__(
        self, schema: FeatureSchema, max_batch_size: int, model_name: str, model_version: str
    ) -> None:
        self.max_batch_size = max_batch_size
        self.model_name = model_name
        self.model_version = model_version
        self.names = list(schema.names)
        self.feature_count = len(self.names)
        self.datatypes = {spec.name: datatype_of(spec) for spec in schema.features}
        self.output_names = [name for name, _ in (*OUTPUTS, WARNINGS_OUTPUT)]
        # One list type per feature, its elements the JSON API's type for that feature.
        element = {spec.name: feature_type(spec) for spec in schema.features}
        self.column_validators: dict[str, TypeAdapter[Any]] = {}
        for name, kind in element.items():
            column: Any = GenericAlias(list, (kind,))
            self.column_validators[name] = TypeAdapter(column, config=ConfigDict(strict=True))
        variants: list[Any] = []
        for spec in schema.features:
            name_type: Any = Literal[spec.name]
            datatype_type: Any = Literal[self.datatypes[spec.name]]
            data_type = GenericAlias(list, (element[spec.name],))
            variant = _typed_dict(
                f"Input_{spec.name}",
                {
                    "name": name_type,
                    "shape": list[int],
                    "datatype": datatype_type,
                    "data": data_type,
                    "parameters": NotRequired[Parameters],
                },
            )
            variant.__pydantic_config__ = _STRICT
            variants.append(variant)
        # each tensor validated as its feature's, chosen by its name
        tensor: Any = (
            variants[0]
            if len(variants) == 1
            else Annotated[Union[tuple(variants)], Field(discriminator="name")]  # noqa: UP007
        )
        output_name: Any = Literal[tuple(self.output_names)]
        requested = _typed_dict(
            "RequestedOutput", {"name": output_name, "parameters": NotRequired[Parameters]}
        )
        requested.__pydantic_config__ = _STRICT
        request = _typed_dict(
            "InferenceRequest",
            {
                "id": NotRequired[str],
                "parameters": NotRequired[Parameters],
                "inputs": list[tensor],
                "outputs": NotRequired[GenericAlias(list, (requested,))],
            },
        )
        request.__pydantic_config__ = _STRICT
        self.request_validator: TypeAdapter[Any] = TypeAdapter(request)
        self._parameters = TypeAdapter(Parameters)

    # ------------------------------------------------------------------ metadata

    def metadata(self, platform: str) -> dict[str, Any]:
        """The model metadata response: one input per feature, the per-row outputs."""
        return {
            "name": self.model_name,
            "versions": [self.model_version],
            "platform": platform,
            "inputs": [
                {"name": name, "datatype": self.datatypes[name], "shape": [-1]}
                for name in self.names
            ],
            "outputs": [
                {"name": name, "datatype": datatype, "shape": [-1]}
                for name, datatype in (*OUTPUTS, WARNINGS_OUTPUT)
            ],
        }

    # ------------------------------------------------------------------ decoding

    def decode(
        self, body: bytes, content_type: str | bytes | None, binary: bool = False
    ) -> InferRequest:
        """The rows and options of an inference request (raises RequestError). No content
        type means JSON (the protocol's clients send none); any other than JSON is 415.
        `binary`: the request said it carries binary tensor data (its
        Inference-Header-Content-Length header)."""
        if binary:
            raise _error(BINARY_NOT_SUPPORTED)
        if content_type and content_type != _JSON and not is_json(content_type):
            raise RequestError(415, UNSUPPORTED_MEDIA_TYPE)
        try:
            payload = self.request_validator.validate_json(body)
        except ValidationError as exc:
            raise self._refusal(body, exc) from None
        # Every name is a feature (the types chose each tensor's by it); as many tensors
        # as features and as many distinct names means each feature once.
        inputs = payload["inputs"]
        columns = {tensor["name"]: tensor["data"] for tensor in inputs}
        count = len(inputs[0]["data"]) if inputs else 0
        if (
            len(columns) != self.feature_count
            or len(inputs) != self.feature_count
            or not 0 < count <= self.max_batch_size
        ):
            raise self._refusal(body, None)
        shape = [count]
        for tensor in inputs:
            if tensor["shape"] != shape or len(tensor["data"]) != count:
                raise self._refusal(body, None)
            if "parameters" in tensor and "binary_data_size" in tensor["parameters"]:
                raise self._refusal(body, None)
        parameters = payload.get("parameters")
        if parameters:
            self._check_parameters(parameters)
        outputs = payload.get("outputs")
        return InferRequest(
            rows=ColumnRows(columns, count),
            id=payload.get("id"),
            parameters=parameters or {},
            outputs=None if outputs is None else tuple(o["name"] for o in outputs),
        )

    @staticmethod
    def _check_parameters(parameters: dict[str, Any]) -> None:
        explain = parameters.get("explain", False)
        if not isinstance(explain, bool):
            raise _error(f"parameter 'explain': expected true or false, got {explain!r}")

    def _refusal(self, body: bytes, refused: ValidationError | None) -> RequestError:
        """Why a body was refused, as one message naming every problem found (up to five):
        the body parsed again with the standard library and checked step by step."""
        try:
            payload = json.loads(body, parse_constant=float)  # NaN: refused by the types
        except (ValueError, RecursionError) as exc:
            if not body.strip():
                return _error("the body is empty; send an inference request (a JSON object)")
            return _error(f"malformed JSON: {exc}")
        problems: list[str] = []
        status = self._diagnose(payload, problems)
        if not problems:  # what only pydantic-core refuses (a lone surrogate, ...)
            problems = [_pydantic_problem(refused)] if refused is not None else ["invalid"]
        shown = problems[:_MAX_PROBLEMS]
        more = len(problems) - len(shown)
        message = "; ".join(shown) + (f"; and {more} more" if more else "")
        return _error(message, status)

    def _diagnose(self, payload: Any, problems: list[str]) -> int:
        """Add each problem of `payload` to `problems`; the status to answer with."""
        if not isinstance(payload, dict):
            problems.append(
                f"expected a JSON object (an inference request), got {_json_kind(payload)}"
            )
            return 400
        for key in payload:
            if key not in _TOP_FIELDS:
                problems.append(f"unknown field '{key}'; {_hint(key, _TOP_FIELDS)}")
        if "id" in payload and not isinstance(payload["id"], str):
            problems.append(f"'id' must be a string, got {_json_kind(payload['id'])}")
        self._diagnose_parameters(payload.get("parameters", {}), "'parameters'", problems)
        if "outputs" in payload:
            self._diagnose_outputs(payload["outputs"], problems)
        inputs = payload.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            got = "nothing" if inputs is None else _json_kind(inputs)
            problems.append(f"'inputs' must be a non-empty array of tensors, got {got}")
            return 400
        tensors = [t for t in inputs if isinstance(t, dict)]
        if len(tensors) != len(inputs):
            problems.append("each of 'inputs' must be an object (name, shape, datatype, data)")
        sent = [t.get("name") for t in tensors]
        missing = [name for name in self.names if name not in sent]
        lengths: dict[str, int] = {}
        seen: set[str] = set()
        for tensor in tensors:
            name = tensor.get("name")
            if not isinstance(name, str):
                problems.append(f"an input has no name (got {_json_kind(name)})")
                continue
            if name not in self.datatypes:
                close = difflib.get_close_matches(name, missing, n=1, cutoff=0.6)
                if close:  # named as the likely typo, not again as missing
                    missing.remove(close[0])
                    problems.append(f"unknown input '{name}'; did you mean '{close[0]}'?")
                else:
                    problems.append(f"unknown input '{name}'; {_hint(name, self.names)}")
                continue
            if name in seen:
                problems.append(f"input '{name}' is sent more than once")
                continue
            seen.add(name)
            data = tensor.get("data")
            if isinstance(data, list):
                lengths[name] = len(data)
            self._diagnose_tensor(name, tensor, problems)
        if lengths and max(lengths.values()) > self.max_batch_size:
            return self._too_many(max(lengths.values()), problems)
        if missing:
            problems.append(
                f"missing input{'s' if len(missing) > 1 else ''} "
                + ", ".join(f"'{name}'" for name in missing)
                + f"; the model takes one tensor per feature: {self.names}"
            )
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{name} {count}" for name, count in lengths.items())
            problems.append(f"inputs differ in length ({sizes}); send one value per row in each")
        elif lengths and not any(lengths.values()):
            problems.append("the inputs hold no rows; send at least one value in each")
        return 400

    def _too_many(self, count: int, problems: list[str]) -> int:
        problems[:] = [
            f"{count} rows in one call; the limit is {self.max_batch_size} "
            "(MAX_BATCH_SIZE): split the batch"
        ]
        return 413

    def _diagnose_tensor(self, name: str, tensor: dict[str, Any], problems: list[str]) -> None:
        where = f"input '{name}'"
        for key in tensor:
            if key not in _INPUT_FIELDS:
                problems.append(f"{where}: unknown field '{key}'; {_hint(key, _INPUT_FIELDS)}")
        parameters = tensor.get("parameters", {})
        if isinstance(parameters, dict) and "binary_data_size" in parameters:
            problems.append(f"{where}: {BINARY_NOT_SUPPORTED}")
            return
        self._diagnose_parameters(parameters, f"{where} 'parameters'", problems)
        expected = self.datatypes[name]
        datatype = tensor.get("datatype")
        if datatype != expected:
            got = datatype if isinstance(datatype, str) else _json_kind(datatype)
            problems.append(f"{where}: datatype {got}; this input is {expected}")
        data = tensor.get("data")
        if not isinstance(data, list):
            got = "nothing" if data is None else _json_kind(data)
            problems.append(f"{where}: 'data' must be a flat array of values, got {got}")
            return
        shape = tensor.get("shape")
        if shape != [len(data)] or not all(type(n) is int for n in shape):
            problems.append(
                f"{where}: shape {json.dumps(shape)} does not fit its {len(data)} values; "
                f"send shape [{len(data)}] (one value per row)"
            )
        if any(isinstance(v, list) for v in data):
            problems.append(f"{where}: 'data' must be flat (shape [N]), not nested arrays")
            return
        try:
            self.column_validators[name].validate_python(data)
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False, include_context=False):
                index = err["loc"][0] if err["loc"] else "?"
                value = data[index] if isinstance(index, int) and index < len(data) else None
                shown = _shown(value)
                problems.append(f"{where}, element {index} ({shown}): {err['msg']}")

    def _diagnose_parameters(self, parameters: Any, where: str, problems: list[str]) -> None:
        if not isinstance(parameters, dict):
            problems.append(f"{where} must be an object, got {_json_kind(parameters)}")
            return
        try:
            self._parameters.validate_python(parameters)
        except ValidationError:
            for key, value in parameters.items():
                if not _is_parameter_value(value):
                    problems.append(
                        f"{where} '{key}': a parameter is a string, a finite number or a "
                        f"boolean, got {_shown(value)}"
                    )
            return
        if where == "'parameters'":
            try:
                self._check_parameters(parameters)
            except RequestError as exc:
                problems.append(str(exc.detail))

    def _diagnose_outputs(self, outputs: Any, problems: list[str]) -> None:
        if not isinstance(outputs, list):
            problems.append(f"'outputs' must be an array, got {_json_kind(outputs)}")
            return
        for k, output in enumerate(outputs):
            if not isinstance(output, dict) or not isinstance(output.get("name"), str):
                problems.append(f"outputs[{k}] must be an object with a 'name'")
                continue
            name = output["name"]
            if name not in self.output_names:
                problems.append(f"unknown output '{name}'; {_hint(name, self.output_names)}")
            for key in output:
                if key not in _OUTPUT_FIELDS:
                    problems.append(
                        f"output '{name}': unknown field '{key}'; {_hint(key, _OUTPUT_FIELDS)}"
                    )
            self._diagnose_parameters(
                output.get("parameters", {}), f"output '{name}' 'parameters'", problems
            )

    # ------------------------------------------------------------------ encoding

    @staticmethod
    def outputs(answers: Any, ids: Sequence[str]) -> list[OutputTensor]:
        """The per-row outputs of `answers` (app.model.Answers) and their prediction ids, in
        the order of `OUTPUTS`."""
        return [
            OutputTensor("churn_probability", FP64, answers.probabilities),
            OutputTensor("churn_prediction", BOOL, answers.decisions),
            OutputTensor("risk_tier", BYTES, answers.tiers),
            # a list for the JSON encoder (a split batch's ids come merged on first read)
            OutputTensor("prediction_id", BYTES, ids if isinstance(ids, list) else list(ids)),
        ]

    @staticmethod
    def warnings(answers: Any) -> OutputTensor:
        """What was reinterpreted in each row (its notes joined; "" where nothing was)."""
        notes = answers.warnings if answers.warned else [None] * len(answers.probabilities)
        texts = ["; ".join(w.text() for w in found) if found else "" for found in notes]
        return OutputTensor(WARNINGS_OUTPUT[0], WARNINGS_OUTPUT[1], texts)

    def encode(
        self,
        request: InferRequest,
        answers: Any,
        ids: Sequence[str],
        extra: Sequence[OutputTensor] = (),
    ) -> bytes:
        """The inference response: the request's id, then each output asked for (all of them
        when none was named; ``warnings`` then only if a row has one), `extra` last."""
        tensors = self.outputs(answers, ids)
        if request.outputs is not None:
            by_name = {t.name: t for t in tensors}
            tensors = [
                by_name[name] if name in by_name else self.warnings(answers)
                for name in request.outputs
            ]
        elif answers.warned:
            tensors.append(self.warnings(answers))
        tensors.extend(extra)
        response: dict[str, Any] = {
            "model_name": self.model_name,
            "model_version": self.model_version,
        }
        if request.id is not None:
            response["id"] = request.id
        response["outputs"] = [tensor.response() for tensor in tensors]
        return to_json(response)  # one call in pydantic-core (Rust), the lists included


def _is_parameter_value(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | bool | int)


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _pydantic_problem(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    where = ".".join(str(part) for part in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])
