"""The model bundle: pipeline, optional ONNX export and metadata, signed and verified before use.

Layout of a bundle directory::

    model.pkl       joblib dump of the fitted sklearn Pipeline
    model.onnx      ONNX export (only when it agreed with the pipeline at export time)
    metadata.json   version, run id, metrics, feature schema, reference profile, and the
                    SHA-256 of every file above
    signature.json  HMAC-SHA256 over the exact bytes of metadata.json, with the key's id

Trust flows one way: the signature vouches for metadata.json, metadata.json vouches for every
other file (their SHA-256), and only then is anything unpickled. A checksum alone proves
nothing against someone who can write the bundle (they write a matching checksum too); the
signature needs the key, which lives in the environment (``BUNDLE_SIGNING_KEY`` or
``BUNDLE_SIGNING_KEY_FILE``), never in the bundle or the repository.

When a key is configured, an unsigned or wrongly signed bundle is refused after reading only
signature.json and metadata.json. Without a key (development), bundles load unverified, with a
warning; the API refuses to start that way in production (app/settings.py).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import joblib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sklearn.pipeline import Pipeline

from churn.config import Config, RiskConfig
from churn.schema import FeatureSchema

logger = logging.getLogger("churn.bundle")

MODEL_FILE = "model.pkl"
ONNX_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
SIGNATURE_FILE = "signature.json"
FORMAT_VERSION = 1

SIGNATURE_ALGORITHM = "HMAC-SHA256"
KEY_VARIABLE = "BUNDLE_SIGNING_KEY"
KEY_FILE_VARIABLE = "BUNDLE_SIGNING_KEY_FILE"
MIN_KEY_BYTES = 32
# Only these names may appear in metadata's "files": a signed bundle still cannot make the
# loader read outside its directory ("../../etc/passwd").
BUNDLE_FILES = (MODEL_FILE, ONNX_FILE)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class BundleError(RuntimeError):
    """A bundle cannot be used; the message names the file and why."""


class SigningKeyError(BundleError):
    """The signing key is missing, unreadable or too short; the message names the variable."""


# ---------------------------------------------------------------------------- signing key


@dataclass(frozen=True)
class SigningKey:
    """The bundle signing key (secret bytes) and where it came from. Its repr hides the key."""

    secret: bytes = field(repr=False)
    source: str

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise SigningKeyError(
                f"{self.source}: the bundle signing key is {len(self.secret)} bytes; use at "
                f"least {MIN_KEY_BYTES} random bytes, e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_hex(32))'`"
            )

    @classmethod
    def from_text(cls, text: str, source: str = KEY_VARIABLE) -> SigningKey:
        """A key given as text: its UTF-8 bytes, surrounding whitespace (a newline) removed."""
        return cls(text.strip().encode("utf-8"), source)

    @classmethod
    def from_file(cls, path: Path | str) -> SigningKey:
        """A key kept in a file (the same text a variable would hold)."""
        source = f"{KEY_FILE_VARIABLE}={path}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SigningKeyError(f"{source}: the key file does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise SigningKeyError(f"{source}: cannot read the key file ({reason})") from None
        return cls.from_text(text, source)

    @property
    def key_id(self) -> str:
        """A short public fingerprint: tells which key signed a bundle, reveals nothing of it."""
        return hashlib.sha256(b"churn-bundle-key-id\0" + self.secret).hexdigest()[:16]

    def sign(self, data: bytes) -> str:
        return hmac.new(self.secret, data, hashlib.sha256).hexdigest()


def signing_key_from_env(environ: Mapping[str, str] | None = None) -> SigningKey | None:
    """The key from BUNDLE_SIGNING_KEY or BUNDLE_SIGNING_KEY_FILE (an empty value is unset).

    Setting both is refused: two sources of one secret invite signing with one and
    verifying with the other.
    """
    env = os.environ if environ is None else environ
    text = env.get(KEY_VARIABLE) or None
    path = env.get(KEY_FILE_VARIABLE) or None
    if text is not None and path is not None:
        raise SigningKeyError(f"set {KEY_VARIABLE} or {KEY_FILE_VARIABLE}, not both")
    if text is not None:
        return SigningKey.from_text(text, KEY_VARIABLE)
    if path is not None:
        return SigningKey.from_file(path)
    return None


class _KeyFromEnvironment(enum.Enum):
    DEFAULT = "read the key from the environment"


# Default of every `key=` parameter: read the key from the environment at call time.
FROM_ENVIRONMENT: Final = _KeyFromEnvironment.DEFAULT
KeyChoice = SigningKey | None | Literal[_KeyFromEnvironment.DEFAULT]


def _resolve(key: KeyChoice) -> SigningKey | None:
    return signing_key_from_env() if key is FROM_ENVIRONMENT else key


# ---------------------------------------------------------------------------- metadata


class BundleMetadata(BaseModel):
    """What serving relies on in metadata.json, checked with the training config's own rules.

    ``risk`` is the config's RiskConfig and the feature schema must pass the config's feature
    rules, so a value training would refuse in config.yaml is refused in a bundle too. Other
    keys (metrics, profile, versions) are documentation and pass through.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    format_version: Literal[1]
    model_name: str = Field(min_length=1, max_length=200)
    # A registered version: used as a metric label and in every answer.
    model_version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    run_id: str = ""
    risk: RiskConfig
    feature_schema: FeatureSchema
    files: dict[str, str]

    @field_validator("files")
    @classmethod
    def _known_files_with_hashes(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            if name not in BUNDLE_FILES:
                raise ValueError(f"'{name}' is not a bundle file ({', '.join(BUNDLE_FILES)})")
            if not _SHA256_HEX.fullmatch(digest):
                raise ValueError(f"the SHA-256 of {name} is not 64 lower-case hex digits")
        if MODEL_FILE not in files:
            raise ValueError(f"no checksum for {MODEL_FILE}")
        return files

    @field_validator("feature_schema")
    @classmethod
    def _schema_follows_config_rules(cls, schema: FeatureSchema) -> FeatureSchema:
        """The config's feature rules (no duplicates, min <= max, allowed only for categoricals,
        the target not a feature), applied by validating the config this schema implies."""
        rules: dict[str, dict[str, Any]] = {}
        for spec in schema.features:
            rule: dict[str, Any] = {
                "min": spec.min,
                "max": spec.max,
                "integer": spec.integer or None,
                "allowed": spec.allowed,
            }
            present = {k: v for k, v in rule.items() if v is not None}
            if present:
                rules[spec.name] = present
        implied = {
            "data": {"target_column": schema.target},
            "features": {
                "numeric": schema.numeric,
                "categorical": schema.categorical,
                "rules": rules,
            },
        }
        try:
            Config.model_validate(implied)
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc).removeprefix("(top level): ")) from None
        return schema


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """The first problem as 'dotted.key: reason (got value)', plus how many more; `prefix`
    is the key of the section that was validated."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join([prefix] * bool(prefix) + [str(part) for part in first["loc"]])
    where = where or "(top level)"
    reason = str(first["msg"]).removeprefix("Value error, ")
    value = first.get("input")
    scalar = isinstance(value, str | int | float | bool) and first["type"] != "missing"
    got = f" (got {value!r})" if scalar else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {reason}{got}{more}"


def validate_metadata(metadata: Any, where: Path | str) -> BundleMetadata:
    """Metadata checked as serving needs it; BundleError naming the file and the key if not."""
    try:
        return BundleMetadata.model_validate(metadata)
    except ValidationError as exc:
        raise BundleError(f"{where}: invalid metadata: {describe_validation_error(exc)}") from None


# ---------------------------------------------------------------------------- the bundle


@dataclass(frozen=True)
class ModelBundle:
    """A verified bundle, fully in memory.

    ``directory`` is where it was read from (for messages); a registry download is read
    from a temporary directory that no longer exists afterwards.
    """

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


def _signature_document(key: SigningKey, metadata_bytes: bytes) -> bytes:
    document = {
        "algorithm": SIGNATURE_ALGORITHM,
        "signed_file": METADATA_FILE,
        "key_id": key.key_id,
        "signature": key.sign(metadata_bytes),
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def save_bundle(
    directory: Path,
    pipeline: Pipeline,
    metadata: dict[str, Any],
    onnx_bytes: bytes | None,
    *,
    key: KeyChoice = FROM_ENVIRONMENT,
) -> Path:
    """Write a bundle and sign it; returns the path of metadata.json.

    Order matters to a concurrent reader: model files first, then metadata.json (it names
    their checksums), then signature.json (it vouches for the metadata). Metadata serving
    would refuse is refused here, before anything is written. Without a key the bundle is
    written unsigned, with a warning (a server with a key will refuse it).
    """
    key = _resolve(key)
    directory.mkdir(parents=True, exist_ok=True)
    model_bytes = _pickle_bytes(pipeline)
    files = {MODEL_FILE: sha256_bytes(model_bytes)}
    if onnx_bytes is not None:
        files[ONNX_FILE] = sha256_bytes(onnx_bytes)
    full = {"format_version": FORMAT_VERSION, **metadata, "files": files}
    text = json.dumps(full, indent=2, sort_keys=False, allow_nan=False) + "\n"
    metadata_bytes = text.encode()
    validate_metadata(json.loads(metadata_bytes), directory / METADATA_FILE)

    _atomic_write(directory / MODEL_FILE, model_bytes)
    if onnx_bytes is not None:
        _atomic_write(directory / ONNX_FILE, onnx_bytes)
    else:
        (directory / ONNX_FILE).unlink(missing_ok=True)
    # A stale signature would vouch for nothing now; never leave it beside new metadata.
    (directory / SIGNATURE_FILE).unlink(missing_ok=True)
    _atomic_write(directory / METADATA_FILE, metadata_bytes)
    if key is not None:
        _atomic_write(directory / SIGNATURE_FILE, _signature_document(key, metadata_bytes))
    else:
        logger.warning(
            "%s: bundle written UNSIGNED (%s is not set); a server with a key refuses it",
            directory,
            KEY_VARIABLE,
        )
    return directory / METADATA_FILE


def sign_bundle(path: Path, *, key: KeyChoice = FROM_ENVIRONMENT) -> Path:
    """(Re-)sign an existing bundle after checking its metadata and every file's checksum.

    For bundles written before signing existed, or whose metadata a key holder changed on
    purpose. Returns the path of signature.json.
    """
    key = _resolve(key)
    if key is None:
        raise SigningKeyError(f"no signing key: set {KEY_VARIABLE} or {KEY_FILE_VARIABLE}")
    directory = bundle_directory(path)
    metadata_bytes = _read_file(directory / METADATA_FILE, "metadata file")
    _verified_files(directory, metadata_bytes)
    _atomic_write(directory / SIGNATURE_FILE, _signature_document(key, metadata_bytes))
    return directory / SIGNATURE_FILE


def read_metadata(path: Path) -> dict[str, Any]:
    """Metadata of a bundle, given the bundle directory, its model.pkl or its metadata.json.

    Unverified: for fingerprints and reports. Whatever decides what is served uses
    load_bundle (or verify_bundle), which checks the signature first.
    """
    directory = bundle_directory(path)
    meta_path = directory / METADATA_FILE
    metadata = _parse_metadata(_read_file(meta_path, "metadata file"), meta_path)
    if "files" not in metadata:
        raise BundleError(f"{meta_path}: not a model bundle metadata file (no 'files' section)")
    return metadata


def bundle_directory(path: Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror})") from None


def _parse_metadata(data: bytes, meta_path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(data)
    except ValueError as exc:
        raise BundleError(f"{meta_path}: unreadable metadata ({exc})") from None
    if not isinstance(metadata, dict):
        raise BundleError(f"{meta_path}: not a model bundle metadata file (not a JSON object)")
    return metadata


def _verified_metadata_bytes(directory: Path, key: SigningKey | None) -> bytes:
    """metadata.json's bytes, after its signature checked out (reads nothing else).

    Without a key nothing can be checked: the bytes are returned with a warning.
    """
    meta_path = directory / METADATA_FILE
    if key is None:
        logger.warning(
            "%s: loaded WITHOUT signature verification: %s is not set (development only)",
            directory,
            KEY_VARIABLE,
        )
        return _read_file(meta_path, "metadata file")
    sig_path = directory / SIGNATURE_FILE
    if not sig_path.exists() and not meta_path.exists():
        raise BundleError(f"{meta_path}: metadata file not found")
    try:
        raw = _read_file(sig_path, "signature file")
    except BundleError as exc:
        raise BundleError(
            f"{exc}: the bundle is unsigned and {key.source} is set; refusing it "
            "(sign it with `python -m churn.bundle sign DIR` after checking where it came from)"
        ) from None
    try:
        document = json.loads(raw)
        algorithm, key_id, signature = (
            document["algorithm"],
            document["key_id"],
            document["signature"],
        )
        if not isinstance(signature, str):
            raise TypeError("signature is not a string")
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{sig_path}: not a bundle signature file; refusing the bundle") from None
    if algorithm != SIGNATURE_ALGORITHM:
        raise BundleError(
            f"{sig_path}: algorithm {algorithm!r} is not {SIGNATURE_ALGORITHM}; refusing the bundle"
        )
    metadata_bytes = _read_file(meta_path, "metadata file")
    expected = key.sign(metadata_bytes)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        if key_id != key.key_id:
            raise BundleError(
                f"{sig_path}: signed with another key (key id {str(key_id)[:16]!r}, this "
                f"process has {key.key_id!r} from {key.source}); refusing the bundle"
            )
        raise BundleError(
            f"{sig_path}: the signature does not match {METADATA_FILE} (changed after "
            "signing); refusing the bundle"
        )
    return metadata_bytes


def _verified_files(
    directory: Path, metadata_bytes: bytes
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Validated metadata and the bytes of every file it lists, each matching its SHA-256."""
    meta_path = directory / METADATA_FILE
    metadata = _parse_metadata(metadata_bytes, meta_path)
    if "files" not in metadata:
        raise BundleError(f"{meta_path}: not a model bundle metadata file (no 'files' section)")
    checked = validate_metadata(metadata, meta_path)
    contents: dict[str, bytes] = {}
    for name, expected in checked.files.items():
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
                f"{path}: SHA-256 mismatch (metadata says {expected[:12]}…, file is "
                f"{actual[:12]}…); refusing to load a file that is not the one training wrote"
            )
        contents[name] = data
    return metadata, contents


def verify_bundle(path: Path, *, key: KeyChoice = FROM_ENVIRONMENT) -> dict[str, Any]:
    """Check a bundle without unpickling it: signature, metadata rules, every checksum.

    Returns the metadata. For code that copies or publishes a bundle it does not serve.
    """
    directory = bundle_directory(path)
    metadata_bytes = _verified_metadata_bytes(directory, _resolve(key))
    metadata, _ = _verified_files(directory, metadata_bytes)
    return metadata


def load_bundle(path: Path, *, key: KeyChoice = FROM_ENVIRONMENT) -> ModelBundle:
    """Load a bundle: signature, then metadata rules, then checksums, and only then unpickle.

    The pickle is loaded from the very bytes that were hashed, so a file swapped after the
    check is never the one unpickled.
    """
    directory = bundle_directory(path)
    metadata_bytes = _verified_metadata_bytes(directory, _resolve(key))
    metadata, contents = _verified_files(directory, metadata_bytes)
    try:
        pipeline = joblib.load(io.BytesIO(contents[MODEL_FILE]))  # verified above
    except Exception as exc:  # a corrupt pickle raises anything from EOFError to KeyError
        raise BundleError(f"{directory / MODEL_FILE}: cannot be unpickled ({exc!r})") from None
    if not hasattr(pipeline, "predict_proba"):
        raise BundleError(
            f"{directory / MODEL_FILE}: holds {type(pipeline).__name__}, not a classifier"
        )
    return ModelBundle(
        directory=directory,
        pipeline=pipeline,
        metadata=metadata,
        onnx_bytes=contents.get(ONNX_FILE),
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m churn.bundle sign|verify DIR`: sign a checked bundle, or verify one."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m churn.bundle", description=main.__doc__)
    parser.add_argument("command", choices=["sign", "verify"])
    parser.add_argument("bundle", type=Path, help="bundle directory (or its model.pkl)")
    args = parser.parse_args(argv)
    try:
        if args.command == "sign":
            print(f"signed: {sign_bundle(args.bundle)}")
        else:
            key = signing_key_from_env()
            if key is None:
                raise SigningKeyError(f"no key to verify with: set {KEY_VARIABLE}")
            metadata = verify_bundle(args.bundle, key=key)
            print(
                f"verified: {metadata['model_name']} v{metadata['model_version']} "
                f"(key id {key.key_id})"
            )
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
