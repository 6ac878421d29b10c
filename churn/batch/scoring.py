"""What runs on the executors: the verified model, kept once per Python worker, scoring batches.

The driver reads the bundle directory's files as bytes (:func:`bundle_payload`) and Spark
broadcasts them. Each Python worker writes them to a private temp directory and loads them
with :func:`churn.bundle.load_bundle`, so the checksums (and any signature the bundle
carries, with the key from the worker's environment) are verified where the model is
unpickled, not only on the driver. The backend is chosen with
:func:`churn.inference.choose_predictor`, the API's own choice, and must be the one the driver
chose: a worker that could only run another backend fails its task rather than answer
differently. No MLflow environment is restored anywhere: the executors run the project's code.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churn.batch.summary import ScoreSummary
from churn.batch.validation import STATUS_INVALID, STATUS_OK, validate_batch
from churn.bundle import METADATA_FILE, ModelBundle, load_bundle
from churn.inference import Predictor, choose_predictor
from churn.risk import PROBABILITY_DECIMALS, Thresholds, risk_tiers
from churn.schema import FeatureSchema

# A bundle directory holds a few MB; anything far larger is not a bundle.
MAX_BUNDLE_BYTES = 512 * 1024 * 1024
SCORE_COLUMNS = (
    "churn_probability",
    "churn_prediction",
    "risk_tier",
    "model_version",
    "status",
    "error",
    "error_reasons",
)


class ScoringSetupError(RuntimeError):
    """The model cannot be prepared for scoring; the message says which bundle and why."""


@dataclass(frozen=True)
class BundlePayload:
    """A bundle's files as bytes (what is broadcast) and the backend the driver chose."""

    files: dict[str, bytes]
    backend: str
    allow_missing: bool

    @property
    def digest(self) -> str:
        """Identifies this bundle + backend in a worker's cache."""
        sha = hashlib.sha256(self.backend.encode())
        for name in sorted(self.files):
            sha.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        return sha.hexdigest()


def bundle_files(directory: Path) -> dict[str, bytes]:
    """Every regular file at the top of a bundle directory (signatures included, whatever
    their name), refusing a directory too large to be a bundle."""
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(Path(directory).iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        data = path.read_bytes()
        total += len(data)
        if total > MAX_BUNDLE_BYTES:
            raise ScoringSetupError(
                f"{directory}: more than {MAX_BUNDLE_BYTES >> 20} MiB of files; "
                "point --model at the bundle directory itself"
            )
        files[path.name] = data
    if METADATA_FILE not in files:
        raise ScoringSetupError(f"{directory}: no {METADATA_FILE}; not a model bundle")
    return files


def materialise(files: dict[str, bytes]) -> ModelBundle:
    """Write the files to a private temp dir and load them through the verified loader."""
    directory = Path(tempfile.mkdtemp(prefix="churn-bundle-"))
    try:
        for name, data in files.items():
            (directory / Path(name).name).write_bytes(data)
        return load_bundle(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Scorer:
    """A verified model ready to score pandas batches, the API's backend and thresholds."""

    schema: FeatureSchema
    predictor: Predictor
    thresholds: Thresholds
    version: str
    allow_missing: bool

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, backend: str, allow_missing: bool) -> Scorer:
        thresholds = Thresholds.from_metadata(bundle.metadata)
        predictor, reason = choose_predictor(bundle, backend, thresholds)
        if predictor.backend != backend:
            raise ScoringSetupError(
                f"model {bundle.version}: this worker can only run the {predictor.backend} "
                f"backend, the driver chose {backend} ({reason}); refusing to give other answers"
            )
        return cls(bundle.schema, predictor, thresholds, bundle.version, allow_missing)

    def score(
        self, frame: pd.DataFrame, keys: list[str], summary: ScoreSummary | None = None
    ) -> pd.DataFrame:
        """Key columns, then the answers (or status/error) for every row of ``frame``.

        ``summary`` (when given) also takes the batch's counts and the drift statistics of
        its valid rows, features as the model saw them (numbers as floats, categories as
        strings), probabilities as written."""
        checked = validate_batch(frame, self.schema, allow_missing=self.allow_missing)
        n = len(frame)
        probability = np.full(n, np.nan)
        rows = np.flatnonzero(checked.valid)
        tiers = np.full(n, None, dtype=object)
        decided = np.zeros(n, dtype=bool)
        if rows.size:
            raw = self.predictor.predict_proba(checked.columns)
            probability[rows] = np.round(raw, PROBABILITY_DECIMALS)
            tiers[rows] = risk_tiers(raw, self.thresholds.high, self.thresholds.medium)
            decided[rows] = raw >= self.thresholds.decision
        decision = pd.arrays.BooleanArray(decided, ~checked.valid)
        out = frame[keys].reset_index(drop=True).copy() if keys else pd.DataFrame(index=range(n))
        out["churn_probability"] = probability
        out["churn_prediction"] = decision
        out["risk_tier"] = tiers
        out["model_version"] = self.version
        status = np.full(n, STATUS_OK, dtype=object)
        status[~checked.valid] = STATUS_INVALID
        out["status"] = status
        out["error"] = checked.messages
        out["error_reasons"] = checked.reasons
        if summary is not None:
            summary.add(checked, probability[rows], tiers[rows])
        return out


_scorers: dict[str, Scorer] = {}
_lock = threading.Lock()


def scorer_for(payload: BundlePayload) -> Scorer:
    """This Python worker's scorer for the payload: verified, loaded and compiled once."""
    key = payload.digest
    with _lock:
        scorer = _scorers.get(key)
        if scorer is None:
            bundle = materialise(payload.files)
            scorer = Scorer.from_bundle(bundle, payload.backend, payload.allow_missing)
            _scorers.clear()  # one model per worker: a new night's model replaces the old
            _scorers[key] = scorer
        return scorer
