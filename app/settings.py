"""Service settings: one typed class, every value from the environment.

Unsafe values are refused at start with a message naming the variable (e.g. CORS_ORIGINS=*
outside development), so a misconfigured pod fails fast instead of serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

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

    # Every field's description is its row in the README's settings table (settings_table;
    # tests/test_settings_docs.py keeps the two equal).

    # Where the model comes from: a bundle on disk, or the registry when MODEL_URI is set.
    model_path: Path = Field(
        default=Path("artifacts/model.pkl"),
        description="bundle on disk (metadata and signature beside it): what promotion exported",
    )
    model_uri: str | None = Field(
        default=None,
        description="e.g. `models:/churn-classifier@production`; wins over `MODEL_PATH`",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="tracking server for `MODEL_URI` and the alias check (credentials are "
        "never shown to clients)",
    )
    model_watch_interval: float = Field(
        default=0.0,
        ge=0.0,
        description="seconds between checks of the model source for a new version; 0 disables "
        "the watcher",
    )
    rollout_enabled: bool = Field(
        default=True,
        description="with `MODEL_URI`: follow `@challenger` and its rollout record on each "
        "watcher tick (shadow scoring, canary share, guardrails; needs `MODEL_WATCH_INTERVAL` "
        "> 0)",
    )
    shadow_queue_size: int = Field(
        default=10_000,
        ge=1,
        description="rows waiting for the challenger's shadow scoring (and shadow scores "
        "waiting for the log), at most; beyond it they are counted "
        '`shadow_predictions_total{outcome="dropped"}`, never waited for',
    )
    shadow_max_time_share: float = Field(
        default=0.2,
        gt=0.0,
        le=1.0,
        description="largest share of a worker's time the challenger's shadow scoring may "
        "take (seconds of scoring per second, averaged over a second); beyond it shadow rows "
        "are dropped and counted, so at saturation shadow scores a sample instead of slowing "
        "the answers",
    )
    model_required: bool = Field(
        default=False,
        description="with a bundle on disk (no `MODEL_URI`): refuse to start when it cannot be "
        "loaded; a registry model is always loaded in the background (readiness 503 until then)",
    )
    # Loading and reloading across workers (app.lifecycle, app.workers).
    model_state_dir: Path | None = Field(
        default=None,
        description="directory the workers share to follow reloads; default: `model-state/` "
        "in `PROMETHEUS_MULTIPROC_DIR` (nothing shared with one process)",
    )
    model_sync_interval: float = Field(
        default=1.0,
        gt=0.0,
        description="seconds between a worker's checks for a reload asked of another worker",
    )
    model_retry_max_interval: float = Field(
        default=30.0,
        gt=0.0,
        description="longest wait (s) between attempts to load a model that is not there yet",
    )
    reload_wait_timeout: float = Field(
        default=10.0, ge=0.0, description="how long `/admin/reload` waits for every worker to swap"
    )
    registry_timeout: float = Field(
        default=5.0,
        gt=0.0,
        description="seconds per MLflow HTTP request (`MLFLOW_HTTP_REQUEST_TIMEOUT` wins when set)",
    )
    inference_backend: Literal["auto", "forest", "onnx", "sklearn"] = Field(
        default="auto",
        description="`auto`/`forest`: the compiled forest, else ONNX, else sklearn, each "
        "checked against sklearn at load; `onnx`: ONNX first; `sklearn`: always the pipeline",
    )
    # Per-prediction explanations (churn.explain): `?explain=true` on /predict and /predict/batch.
    explanations_enabled: bool = Field(
        default=True,
        description="build the exact explainer at load (checked against the pipeline on sample "
        "rows; about 1 s of CPU per worker for the default forest, its kernel compiled once) so "
        "`?explain=true` works; `false`: such requests get 422",
    )
    explain_top_reasons: int = Field(
        default=3,
        ge=1,
        le=50,
        description="plain-word reasons per explained prediction (largest contributions first)",
    )
    # The key bundles are signed with (churn.bundle): an unsigned or wrongly signed bundle is
    # refused. Required in production; one of the two, never both.
    bundle_signing_key: SecretStr | None = Field(
        default=None,
        description="the bundle signing key (at least 32 bytes); required in production "
        "([signed bundles](#security-signed-model-bundles))",
    )
    bundle_signing_key_file: Path | None = Field(
        default=None, description="a file holding the signing key (instead of the key itself)"
    )
    _signing_key: SigningKey | None = PrivateAttr(default=None)

    database_url: str = Field(
        default=DEFAULT_PREDICTION_LOG_URL,
        description="prediction log (SQLAlchemy URL; `postgresql+psycopg2://…`)",
    )
    prediction_log_enabled: bool = Field(
        default=True,
        description="write the prediction log (off: every prediction is counted dropped)",
    )
    prediction_log_queue_size: int = Field(
        default=50_000,
        ge=1,
        description="predictions waiting for the log writer, at most (50 requests of 1,000 "
        "rows: a fraction of a second of batch traffic)",
    )
    prediction_log_batch_size: int = Field(
        default=500,
        ge=1,
        description="predictions queued that start a write before the flush interval (a "
        "write takes all that is queued)",
    )
    prediction_log_flush_interval: float = Field(
        default=0.5, gt=0.0, description="seconds between writes of a partial batch"
    )
    # One value bounds a store statement (lock wait, statement_timeout) and the shutdown wait
    # (at most twice this), so a locked store cannot stall shutdown nor lose rows uncounted.
    prediction_log_write_timeout: float = Field(
        default=DEFAULT_WRITE_TIMEOUT,
        gt=0.0,
        le=60.0,
        description="seconds a log statement may wait (SQLite lock, PostgreSQL "
        "`statement_timeout`); shutdown waits at most twice this, then counts the rest dropped",
    )

    prediction_log_spool_dir: Path | None = Field(
        default=None,
        description="each worker's spool of answered predictions not yet written, so a killed "
        "worker loses none (a live one writes them); default: `prediction-spool/` in "
        "`PROMETHEUS_MULTIPROC_DIR` (no spool with one process)",
    )

    admin_token: SecretStr | None = Field(
        default=None, description="bearer token for `/admin/reload`; unset disables it"
    )
    # Registry webhooks (app.webhook): MLflow calls POST /hooks/mlflow when an alias moves.
    webhook_enabled: bool = Field(
        default=False,
        description="serve `POST /hooks/mlflow` for MLflow registry webhooks (needs `MODEL_URI` "
        "with an alias and a secret); polling stays the fallback",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="the webhook's HMAC secret (at least 16 bytes), as given to "
        "`python -m app.webhook register`; never logged",
    )
    webhook_secret_file: Path | None = Field(
        default=None, description="a file holding the webhook secret (instead of the secret)"
    )
    webhook_aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated aliases whose moves reload the API; empty: the served "
        "alias and `challenger`",
    )
    webhook_tolerance: float = Field(
        default=300.0,
        gt=0.0,
        description="seconds a delivery's `X-MLflow-Timestamp` may be from now; further is "
        "refused (401) as a replay",
    )
    _webhook_secret: bytes | None = PrivateAttr(default=None)

    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated origins; `*` refused unless `ENVIRONMENT=development`",
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="largest request body (413 above)"
    )
    # a batch is one prediction-log row; its ids number its predictions in 4 hex digits
    max_batch_size: int = Field(
        default=1000,
        ge=1,
        le=MAX_BATCH_ROWS,
        description="customers per `/predict/batch` and items per `/feedback/batch` (413 above)",
    )

    # Default: the bundle metadata's "risk" section.
    risk_high: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="HIGH tier from this probability (default: the bundle's `risk` section)",
    )
    risk_medium: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="MEDIUM tier from this probability (default: the bundle's `risk` section)",
    )
    decision_threshold: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="`churn_prediction` is probability at or above "
        "this (default: the bundle's `risk` section)",
    )

    docs_enabled: bool = Field(
        default=True,
        description="`/docs`, `/redoc`, `/openapi.json` and `/` → `/docs`; false removes them",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="one JSON line per event on stdout"
    )
    environment: Environment = Field(
        default="production",
        description="`production` requires a signing key; `development` allows `CORS_ORIGINS=*`",
    )

    @field_validator("cors_origins", "webhook_aliases", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "admin_token",
        "bundle_signing_key",
        "bundle_signing_key_file",
        "webhook_secret",
        "webhook_secret_file",
        mode="before",
    )
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
        self._webhook_secret = self._read_webhook_secret() if self.webhook_enabled else None
        return self

    def _read_webhook_secret(self) -> bytes:
        """WEBHOOK_SECRET or WEBHOOK_SECRET_FILE, read once at start; what the webhook needs
        is checked here so a misconfigured pod fails at start, not at the first delivery."""
        from app.webhook import MIN_SECRET_BYTES

        if self.model_uri is None or "@" not in self.model_uri:
            raise ValueError(
                "WEBHOOK_ENABLED=true needs MODEL_URI=models:/<name>@<alias>: webhooks announce "
                "alias moves (a bundle on disk is followed by MODEL_WATCH_INTERVAL)"
            )
        if self.webhook_secret is not None and self.webhook_secret_file is not None:
            raise ValueError("set WEBHOOK_SECRET or WEBHOOK_SECRET_FILE, not both")
        if self.webhook_secret is not None:
            secret = self.webhook_secret.get_secret_value().encode()
            source = "WEBHOOK_SECRET"
        elif self.webhook_secret_file is not None:
            try:
                secret = self.webhook_secret_file.read_bytes().strip()
            except OSError as exc:
                raise ValueError(
                    f"WEBHOOK_SECRET_FILE={self.webhook_secret_file}: cannot read it "
                    f"({exc.strerror})"
                ) from None
            source = "WEBHOOK_SECRET_FILE"
        else:
            raise ValueError("WEBHOOK_ENABLED=true needs WEBHOOK_SECRET or WEBHOOK_SECRET_FILE")
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"{source}: the webhook secret must be at least {MIN_SECRET_BYTES} bytes"
            )
        return secret

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
    def webhook_secret_bytes(self) -> bytes | None:
        """The webhook secret (None: the webhook endpoint is off)."""
        return self._webhook_secret

    @property
    def admin_enabled(self) -> bool:
        return self.admin_token is not None and bool(self.admin_token.get_secret_value())


def _default_text(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "none" if not value else ", ".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (str, Path)):
        return f"`{value}`"
    return str(value)


def settings_table() -> str:
    """The README's table of the API's environment variables, from the fields themselves."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{name.upper()}` | {_default_text(field)} | {field.description} |")
    return "\n".join(rows)
