"""A served model: a verified bundle, its predictor, its request codec, input checks and thresholds.

Everything a request needs hangs off one immutable ``ServedModel``; a hot reload builds a new
one beside the old and swaps a single reference, so a request in flight keeps the model it
started with and never sees half of each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from app.batcher import Row, columns_of
from app.codec import Reinterpretation, RequestCodec
from app.settings import Settings
from app.v2_codec import V2Codec
from churn.bundle import BundleError, ModelBundle, load_bundle
from churn.explain import Explainer, Explanations, NotExplainable, checked_explainer
from churn.inference import BackendError, Predictor, choose_predictor
from churn.risk import PROBABILITY_DECIMALS, Thresholds, risk_tier_list
from churn.schema import FeatureSchema
from churn.stores import DEFAULT_TRACKING_URI

if TYPE_CHECKING:  # app.rollout imports this module
    from app.rollout import Split

logger = logging.getLogger("app.model")


class ModelLoadError(RuntimeError):
    """A model could not be loaded or failed verification; the message says which and why."""


@dataclass(frozen=True)
class Answers:
    """Answers for consecutive rows as plain lists, computed once per model call (vectorised
    over every request of a micro-batch) and sliced per request."""

    probabilities: list[float]  # rounded to 4 places
    decisions: list[bool]
    tiers: list[str]
    # the features the model saw, by name (for the prediction log: transposed once)
    columns: dict[str, list[Any]] = field(default_factory=dict)
    # per row, what was reinterpreted (None if nothing); empty when no row of the call was
    warnings: list[tuple[Reinterpretation, ...] | None] = field(default_factory=list)
    # per row, the contributions to the probability, when explanations were asked for
    explanations: Explanations | None = None
    # Progressive delivery (app.rollout): who answered. `versions` is None when the model
    # whose codec encodes the answers answered every row; otherwise one version per row.
    role: str = "champion"  # "champion", "challenger" or "mixed" (a batch split by routing)
    versions: list[str] | None = None

    def __len__(self) -> int:
        return len(self.probabilities)

    def __getitem__(self, part: slice) -> Answers:
        return Answers(
            self.probabilities[part],
            self.decisions[part],
            self.tiers[part],
            {name: values[part] for name, values in self.columns.items()},
            self.warnings[part],
            None if self.explanations is None else self.explanations[part],
        )

    def with_role(self, role: str, version: str) -> Answers:
        """These answers as `role`'s, every one by `version` (a canary's challenger); made
        directly, at half the cost of ``dataclasses.replace``."""
        return Answers(
            self.probabilities,
            self.decisions,
            self.tiers,
            self.columns,
            self.warnings,
            self.explanations,
            role,
            [version] * len(self.probabilities),
        )

    @property
    def version(self) -> str | None:
        """The one version that answered every row; None when it is the encoding model's
        (`versions` is None) or when the rows were split between two models."""
        versions = self.versions
        if not versions or self.role == "mixed":
            return None
        return versions[0]

    @property
    def warned(self) -> bool:
        """Whether any answer carries warnings."""
        return any(self.warnings)

    def unknown_categories(self) -> dict[str, int]:
        """Categories not seen in training, counted per feature (after normalisation)."""
        counts: dict[str, int] = {}
        for found in filter(None, self.warnings):
            for w in found:
                if w.kind == "unknown_category":
                    counts[w.feature] = counts.get(w.feature, 0) + 1
        return counts


@dataclass(frozen=True, eq=False)
class SplitAnswers:
    """A canary batch's answers (app.rollout.Split): the champion's rows (`theirs`) and the
    challenger's (`mine`, its ``versions`` set), each as its model computed them, read in
    request order. Each list is put in order the first time it is read (``Split.merge``);
    the JSON encoder reads none of them: it encodes each part as it is and orders the
    encoded answers once (`encode_parts`)."""

    split: Split  # which rows the challenger answered
    theirs: Answers
    their_ids: list[str]
    mine: Answers
    my_ids: list[str]
    champion_version: str
    role: str = "mixed"

    def __post_init__(self) -> None:
        if not (self.theirs and self.mine) or self.mine.version is None:
            raise ValueError("a split batch has rows from both models, the challenger's named")

    def __len__(self) -> int:
        return len(self.split)

    def _merged(self, theirs: Sequence[Any], mine: Sequence[Any]) -> list[Any]:
        return self.split.merge(theirs, mine)

    def encode_parts(self, encode: Callable[[Answers, Sequence[str]], list[str]]) -> list[str]:
        """`encode` (answers and their ids -> one item per row) of each part, in request
        order: every part encoded with its own version, then one merge of the items."""
        return self._merged(encode(self.theirs, self.their_ids), encode(self.mine, self.my_ids))

    @cached_property
    def ids(self) -> list[str]:
        return self._merged(self.their_ids, self.my_ids)

    @property
    def lazy_ids(self) -> MergedIds:
        """`ids`, merged only when an element is read (the JSON encoder only counts them)."""
        return MergedIds(self)

    @cached_property
    def probabilities(self) -> list[float]:
        return self._merged(self.theirs.probabilities, self.mine.probabilities)

    @cached_property
    def decisions(self) -> list[bool]:
        return self._merged(self.theirs.decisions, self.mine.decisions)

    @cached_property
    def tiers(self) -> list[str]:
        return self._merged(self.theirs.tiers, self.mine.tiers)

    @cached_property
    def columns(self) -> dict[str, list[Any]]:
        return {
            name: self._merged(values, self.mine.columns[name])
            for name, values in self.theirs.columns.items()
        }

    @cached_property
    def warnings(self) -> list[tuple[Reinterpretation, ...] | None]:
        if not self.warned:
            return []
        theirs, mine = self.theirs, self.mine
        return self._merged(
            theirs.warnings or [None] * len(theirs), mine.warnings or [None] * len(mine)
        )

    @property
    def warned(self) -> bool:
        return self.theirs.warned or self.mine.warned

    @cached_property
    def explanations(self) -> Explanations | None:
        theirs, mine = self.theirs.explanations, self.mine.explanations
        if theirs is None or mine is None:
            return None
        return Explanations.interleave(self.split.picked, mine, theirs)

    @cached_property
    def versions(self) -> list[str]:
        return self._merged([self.champion_version] * len(self.theirs), self.mine.versions or [])

    @property
    def version(self) -> None:
        """Two models answered (see `Answers.version`)."""
        return None

    def answered_by(self) -> list[str]:
        """The versions that answered, the champion's first."""
        return [self.champion_version, self.mine.versions[0]] if self.mine.versions else []


class MergedIds(Sequence[str]):
    """A split batch's prediction ids in request order (``SplitAnswers.ids``), merged the
    first time one is read: its length needs no merge."""

    __slots__ = ("_answers",)

    def __init__(self, answers: SplitAnswers) -> None:
        self._answers = answers

    def __len__(self) -> int:
        return len(self._answers)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        return self._answers.ids[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._answers.ids)


_SMALL = 16  # rows


@dataclass(frozen=True)
class InputChecks:
    """What counts as reinterpreted input for one model: categories outside those seen in
    training, numbers outside the observed training range (from the feature schema)."""

    known: dict[str, frozenset[str | None]]
    ranges: dict[str, tuple[float, float]]

    @classmethod
    def from_schema(cls, schema: FeatureSchema) -> InputChecks:
        return cls(
            known={  # None (missing) is not unknown: the model imputes it
                s.name: frozenset([*s.categories, None])
                for s in schema.features
                if s.kind == "categorical" and s.categories
            },
            ranges={
                s.name: (s.observed_min, s.observed_max)
                for s in schema.features
                if s.kind == "numeric" and s.observed_min is not None and s.observed_max is not None
            },
        )

    def find(self, columns: dict[str, Any], rows: int) -> list[tuple[Reinterpretation, ...] | None]:
        """Per row, what was reinterpreted; [] if nothing was. The usual case costs a set test
        per categorical feature and a NaN-skipping min and max per numeric one."""
        flagged: dict[str, np.ndarray] = {}
        for name, known in self.known.items():
            values = columns[name]
            if not known.issuperset(values):
                unknown = {v: v not in known for v in set(values)}
                flagged[name] = np.fromiter(map(unknown.__getitem__, values), bool, rows)
        small = rows <= _SMALL
        for name, (low, high) in self.ranges.items():
            values = columns[name]
            if small:  # a numpy call costs more than a few rows of Python
                if all(low <= v <= high for v in values.tolist() if v == v):  # NaN: missing
                    continue
            elif low <= np.fmin.reduce(values) and np.fmax.reduce(values) <= high:
                continue  # (all missing: NaN compares False, so the mask below decides)
            outside = (values < low) | (values > high)
            if outside.any():
                flagged[name] = outside
        if not flagged:
            return []
        found: list[list[Reinterpretation] | None] = [None] * rows
        for name, mask in flagged.items():
            bounds = self.ranges.get(name)
            for row in np.flatnonzero(mask).tolist():
                value = columns[name][row]
                if bounds is None:
                    note = Reinterpretation(name, value, "unknown_category")
                else:
                    note = Reinterpretation(name, float(value), "out_of_range", *bounds)
                entry = found[row]
                if entry is None:
                    found[row] = [note]
                else:
                    entry.append(note)
        order = {name: i for i, name in enumerate(columns)}
        return [
            None if entry is None else tuple(sorted(entry, key=lambda w: order[w.feature]))
            for entry in found
        ]


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    run_id: str
    backend: str
    source: str
    metadata: dict[str, Any]
    schema: FeatureSchema
    predictor: Predictor
    thresholds: Thresholds
    # decodes this model's requests and encodes its answers (both transports use it)
    codec: RequestCodec
    checks: InputChecks
    # the same for the Open Inference Protocol (app.v2)
    v2: V2Codec
    backend_reason: str = ""
    # exact per-feature contributions (churn.explain); None with the reason when unavailable
    explainer: Explainer | None = None
    unexplainable: str | None = None

    @property
    def labels(self) -> tuple[str, str, str, str]:
        return (self.name, self.version, self.run_id, self.backend)

    def explain(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> Explanations:
        """Contributions of each feature to the churn probability of each row of `columns`
        (raw inputs by feature name, prepared as for prediction); NotExplainable with the
        reason when this model cannot be explained."""
        if self.explainer is None:
            raise NotExplainable(self.unexplainable or "no explainer was built for it")
        return self.explainer.explain(self.predictor.prepare(columns))

    def explain_answers(self, answers: Answers) -> Answers:
        """`answers` with their explanations, computed from the columns the model saw (off
        the inference thread: explaining a row costs far more than predicting it, and plain
        requests must not queue behind it). NotExplainable if this model has none (the codec
        refuses such requests first)."""
        if self.explainer is None:
            raise NotExplainable(self.unexplainable or "no explainer was built for it")
        return replace(answers, explanations=self.explainer.explain(answers.columns))

    def predict_rows(self, rows: Sequence[Row]) -> Answers:
        """Answers for rows in feature order (runs on the inference thread). The columns are
        prepared once (churn.data.prepare_columns), scored, checked for reinterpreted values
        and logged as the model saw them (missing values as null). Columnar rows
        (app.batcher.ColumnRows) are taken as the columns they are."""
        prepared = self.predictor.prepare(columns_of(rows, self.schema.names))
        probabilities = self.predictor.predict_prepared(prepared)
        return Answers(
            # np.round's own method: the same numbers without its Python wrapper's two calls
            probabilities=probabilities.round(PROBABILITY_DECIMALS).tolist(),
            decisions=(probabilities >= self.thresholds.decision).tolist(),
            tiers=risk_tier_list(probabilities, self.thresholds.high, self.thresholds.medium),
            columns={
                name: values.tolist() if isinstance(values, np.ndarray) else values
                for name, values in prepared.items()
            },
            warnings=self.checks.find(prepared, len(rows)),
        )

    def public_metadata(self) -> dict[str, Any]:
        """Bundle metadata for GET /model, without the large reference profile; the global
        importances (``explanations.importance``, from training) stay in it."""
        meta = {k: v for k, v in self.metadata.items() if k != "reference_profile"}
        meta.update(
            backend=self.backend,
            backend_reason=self.backend_reason,
            explanations_available=self.explainer is not None,
            explanations_unavailable_reason=self.unexplainable,
            source=self.source,
            thresholds={
                "high": self.thresholds.high,
                "medium": self.thresholds.medium,
                "decision_threshold": self.thresholds.decision,
            },
        )
        return meta


def explainer_for(settings: Settings, bundle: ModelBundle) -> tuple[Explainer | None, str | None]:
    """The bundle's exact explainer, checked against its pipeline on sample rows, or None and
    why (a client may read the reason: it names the model type, never an exception text)."""
    if not settings.explanations_enabled:
        return None, "explanations are disabled on this server (EXPLANATIONS_ENABLED=false)"
    try:
        return checked_explainer(bundle), None
    except NotExplainable as exc:
        logger.warning(
            "explanations unavailable: %s",
            exc,
            extra={"model_version": bundle.version, "reason": str(exc)},
        )
        return None, str(exc)


def thresholds_for(settings: Settings, metadata: dict[str, Any]) -> Thresholds:
    """The bundle's "risk" section with the environment's overrides on top, validated with
    the config's RiskConfig rules (churn.risk.Thresholds.from_metadata, as batch scoring)."""
    try:
        return Thresholds.from_metadata(
            metadata,
            high=settings.risk_high,
            medium=settings.risk_medium,
            decision=settings.decision_threshold,
        )
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None


def fetch_bundle(settings: Settings) -> tuple[ModelBundle, str]:
    """The bundle named by MODEL_URI (registry) or MODEL_PATH (disk): signature, metadata and
    checksums verified with the settings' signing key before anything is unpickled."""
    key = settings.signing_key
    try:
        if settings.model_uri:
            from churn.registry import download_bundle

            tracking = settings.mlflow_tracking_uri or DEFAULT_TRACKING_URI
            return download_bundle(tracking, settings.model_uri, key=key), settings.model_uri
        return load_bundle(Path(settings.model_path), key=key), str(settings.model_path)
    except BundleError as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:  # registry/network failures come in many types
        where = settings.model_uri or settings.model_path
        raise ModelLoadError(
            f"{where}: cannot fetch the model ({type(exc).__name__}: {exc})"
        ) from None


def load_model(settings: Settings) -> ServedModel:
    """Fetch, verify and prepare a model (CPU and I/O: call it off the event loop)."""
    bundle, source = fetch_bundle(settings)
    try:
        schema = bundle.schema
        thresholds = thresholds_for(settings, bundle.metadata)
        predictor, reason = choose_predictor(bundle, settings.inference_backend, thresholds)
        explainer, unexplainable = explainer_for(settings, bundle)
    except ModelLoadError:
        raise
    except BackendError as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:  # a pipeline that cannot predict is a bad bundle, not a crash
        raise ModelLoadError(
            f"{bundle.directory}: the model fails on sample rows ({type(exc).__name__}: {exc})"
        ) from None
    return ServedModel(
        name=bundle.name,
        version=bundle.version,
        run_id=str(bundle.metadata.get("run_id", "")),
        backend=predictor.backend,
        backend_reason=reason,
        source=source,
        metadata=bundle.metadata,
        schema=schema,
        predictor=predictor,
        thresholds=thresholds,
        codec=RequestCodec(
            schema,
            settings.max_batch_size,
            bundle.version,
            unexplainable=unexplainable,
            top_reasons=settings.explain_top_reasons,
        ),
        checks=InputChecks.from_schema(schema),
        explainer=explainer,
        unexplainable=unexplainable,
        v2=V2Codec(schema, settings.max_batch_size, bundle.name, bundle.version),
    )
