"""Service settings: one typed class, every value from the environment.

Unsafe values are refused at start with a message naming the variable (e.g. CORS_ORIGINS=*
outside development), so a misconfigured pod fails fast instead of serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from churn.bundle import KEY_FILE_VARIABLE, KEY_VARIABLE, SigningKey, SigningKeyError
from churn.prediction_log import DEFAULT_WRITE_TIMEOUT, MAX_BATCH_ROWS
from churn.stores import DEFAULT_PREDICTION_LOG_URL

Environment = Literal["development", "test", "staging", "production"]


class Settings(BaseSettings):
    """Environment variables of the churn API (names are the upper-case field names)."""

    # hide_input_in_errors: a refused value may be a secret (a short signing key); messages
    # name the variable instead.
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True
    )

    # Where the model comes from: a bundle on disk, or the registry when MODEL_URI is set.
    model_path: Path = Path("artifacts/model.pkl")
    model_uri: str | None = None
    mlflow_tracking_uri: str | None = None
    model_watch_interval: float = Field(default=0.0, ge=0.0, description="0 disables the watcher")
    model_required: bool = Field(
        default=False,
        description="with a bundle on disk (no MODEL_URI): refuse to start when it cannot be "
        "loaded; a registry model is always loaded in the background (readiness 503 until then)",
    )
    # Loading and reloading across workers (app.lifecycle, app.workers).
    model_state_dir: Path | None = Field(
        default=None,
        description="directory the workers share to follow reloads; default: model-state/ "
        "in PROMETHEUS_MULTIPROC_DIR",
    )
    model_sync_interval: float = Field(
        default=1.0, gt=0.0, description="seconds between a worker's checks for a reload"
    )
    model_retry_max_interval: float = Field(
        default=30.0, gt=0.0, description="longest wait between attempts to load a model"
    )
    reload_wait_timeout: float = Field(
        default=10.0, ge=0.0, description="how long /admin/reload waits for every worker"
    )
    registry_timeout: float = Field(
        default=5.0, gt=0.0, description="seconds per registry HTTP request (MLflow)"
    )
    # auto: the compiled forest (churn.forest) when the pipeline is one it covers, else ONNX
    # when the bundle has an export, else sklearn; each checked against sklearn at load.
    # forest / onnx: prefer that one (falling back in the same order); sklearn: always the
    # pipeline.
    inference_backend: Literal["auto", "forest", "onnx", "sklearn"] = "auto"
    # The key bundles are signed with (churn.bundle): an unsigned or wrongly signed bundle is
    # refused. Required in production; one of the two, never both.
    bundle_signing_key: SecretStr | None = None
    bundle_signing_key_file: Path | None = None
    _signing_key: SigningKey | None = PrivateAttr(default=None)

    database_url: str = DEFAULT_PREDICTION_LOG_URL
    prediction_log_enabled: bool = True
    prediction_log_queue_size: int = Field(default=10_000, ge=1)
    prediction_log_batch_size: int = Field(default=500, ge=1)
    prediction_log_flush_interval: float = Field(default=0.5, gt=0.0)
    # One value bounds a store statement (lock wait, statement_timeout) and the shutdown wait
    # (at most twice this), so a locked store cannot stall shutdown nor lose rows uncounted.
    prediction_log_write_timeout: float = Field(default=DEFAULT_WRITE_TIMEOUT, gt=0.0, le=60.0)

    admin_token: SecretStr | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # a batch is one prediction-log row; its ids number its predictions in 4 hex digits
    max_batch_size: int = Field(default=1000, ge=1, le=MAX_BATCH_ROWS)

    # Default: the bundle metadata's "risk" section.
    risk_high: float | None = Field(default=None, gt=0.0, le=1.0)
    risk_medium: float | None = Field(default=None, gt=0.0, le=1.0)
    decision_threshold: float | None = Field(default=None, gt=0.0, lt=1.0)

    # /docs, /redoc and /openapi.json (and / redirecting to /docs); false removes all of them.
    docs_enabled: bool = True

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    environment: Environment = "production"

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("admin_token", "bundle_signing_key", "bundle_signing_key_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if "*" in self.cors_origins and self.environment != "development":
            raise ValueError(
                "CORS_ORIGINS='*' lets any web page call the API; list the allowed origins "
                "(comma-separated) or set ENVIRONMENT=development"
            )
        if (
            self.risk_high is not None
            and self.risk_medium is not None
            and self.risk_medium > self.risk_high
        ):
            raise ValueError(
                f"RISK_MEDIUM ({self.risk_medium}) must not exceed RISK_HIGH ({self.risk_high})"
            )
        self._signing_key = self._read_signing_key()
        if self._signing_key is None and self.environment == "production":
            raise ValueError(
                f"ENVIRONMENT=production needs a bundle signing key: set {KEY_VARIABLE} (or "
                f"{KEY_FILE_VARIABLE}) to the key the model bundles were signed with"
            )
        if self.model_uri is not None and not self.model_uri.startswith("models:/"):
            raise ValueError(
                f"MODEL_URI={self.model_uri!r} is not a models:/<name>@<alias> URI; "
                "for a bundle on disk set MODEL_PATH instead"
            )
        return self

    def _read_signing_key(self) -> SigningKey | None:
        """The key, read once at start (a missing key file fails here, not at first load)."""
        try:
            if self.bundle_signing_key is not None and self.bundle_signing_key_file is not None:
                raise SigningKeyError(f"set {KEY_VARIABLE} or {KEY_FILE_VARIABLE}, not both")
            if self.bundle_signing_key is not None:
                return SigningKey.from_text(self.bundle_signing_key.get_secret_value())
            if self.bundle_signing_key_file is not None:
                return SigningKey.from_file(self.bundle_signing_key_file)
        except SigningKeyError as exc:
            raise ValueError(str(exc)) from None
        return None

    @property
    def signing_key(self) -> SigningKey | None:
        """The bundle signing key (None: bundles load unverified, development only)."""
        return self._signing_key

    @property
    def admin_enabled(self) -> bool:
        return self.admin_token is not None and bool(self.admin_token.get_secret_value())
