"""The model bundle: pipeline, optional ONNX export and metadata, verified before use.

Layout of a bundle directory::

    model.pkl       joblib dump of the fitted sklearn Pipeline
    model.onnx      ONNX export (only when it agreed with the pipeline at export time)
    metadata.json   version, run id, metrics, feature schema, reference profile, and the
                    SHA-256 of every file above

Whoever loads a bundle checks the SHA-256 first: nothing is unpickled unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
from sklearn.pipeline import Pipeline

from churn.schema import FeatureSchema

MODEL_FILE = "model.pkl"
ONNX_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


class BundleError(RuntimeError):
    """A bundle cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class ModelBundle:
    directory: Path
    pipeline: Pipeline
    metadata: dict[str, Any]
    onnx_bytes: bytes | None

    @property
    def schema(self) -> FeatureSchema:
        return FeatureSchema.from_dict(self.metadata["feature_schema"])

    @property
    def version(self) -> str:
        return str(self.metadata["model_version"])

    @property
    def name(self) -> str:
        return str(self.metadata["model_name"])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over the target."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a non-root server must read the bundle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pickle_bytes(pipeline: Pipeline) -> bytes:
    with tempfile.TemporaryFile() as fh:
        joblib.dump(pipeline, fh, compress=3)
        fh.seek(0)
        return fh.read()


def save_bundle(
    directory: Path, pipeline: Pipeline, metadata: dict[str, Any], onnx_bytes: bytes | None
) -> Path:
    """Write a bundle; metadata goes last, so a reader never sees checksums of missing files."""
    directory.mkdir(parents=True, exist_ok=True)
    model_bytes = _pickle_bytes(pipeline)
    files = {MODEL_FILE: sha256_bytes(model_bytes)}
    _atomic_write(directory / MODEL_FILE, model_bytes)
    if onnx_bytes is not None:
        files[ONNX_FILE] = sha256_bytes(onnx_bytes)
        _atomic_write(directory / ONNX_FILE, onnx_bytes)
    else:
        (directory / ONNX_FILE).unlink(missing_ok=True)
    full = {"format_version": FORMAT_VERSION, **metadata, "files": files}
    text = json.dumps(full, indent=2, sort_keys=False, allow_nan=False) + "\n"
    _atomic_write(directory / METADATA_FILE, text.encode())
    return directory / METADATA_FILE


def read_metadata(path: Path) -> dict[str, Any]:
    """Metadata of a bundle, given the bundle directory, its model.pkl or its metadata.json."""
    directory = bundle_directory(path)
    meta_path = directory / METADATA_FILE
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{meta_path}: metadata file not found") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{meta_path}: unreadable metadata ({exc})") from None
    if not isinstance(metadata, dict) or "files" not in metadata:
        raise BundleError(f"{meta_path}: not a model bundle metadata file (no 'files' section)")
    return metadata


def bundle_directory(path: Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def _verified_bytes(directory: Path, name: str, expected: str) -> bytes:
    path = directory / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: file listed in metadata is missing") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror})") from None
    actual = sha256_bytes(data)
    if actual != expected:
        raise BundleError(
            f"{path}: SHA-256 mismatch (metadata says {expected[:12]}…, file is {actual[:12]}…); "
            "refusing to load a file that is not the one training wrote"
        )
    return data


def load_bundle(path: Path) -> ModelBundle:
    """Load a bundle after verifying every file's SHA-256 against the metadata."""
    directory = bundle_directory(path)
    metadata = read_metadata(directory)
    files = metadata["files"]
    if MODEL_FILE not in files:
        raise BundleError(f"{directory / METADATA_FILE}: no checksum for {MODEL_FILE}")
    model_bytes = _verified_bytes(directory, MODEL_FILE, files[MODEL_FILE])
    onnx_bytes = (
        _verified_bytes(directory, ONNX_FILE, files[ONNX_FILE]) if ONNX_FILE in files else None
    )
    try:
        import io

        pipeline = joblib.load(io.BytesIO(model_bytes))  # verified above
    except Exception as exc:  # a corrupt pickle raises anything from EOFError to KeyError
        raise BundleError(f"{directory / MODEL_FILE}: cannot be unpickled ({exc!r})") from None
    if not hasattr(pipeline, "predict_proba"):
        raise BundleError(
            f"{directory / MODEL_FILE}: holds {type(pipeline).__name__}, not a classifier"
        )
    try:
        FeatureSchema.from_dict(metadata["feature_schema"])
    except Exception as exc:
        raise BundleError(f"{directory / METADATA_FILE}: invalid feature_schema ({exc})") from None
    return ModelBundle(
        directory=directory, pipeline=pipeline, metadata=metadata, onnx_bytes=onnx_bytes
    )
