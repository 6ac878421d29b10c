"""Service settings: one typed class, every value from the environment.

Unsafe values are refused at start with a message naming the variable (e.g. CORS_ORIGINS=*
outside development), so a misconfigured pod fails fast instead of serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from churn.prediction_log import MAX_BATCH_ROWS

Environment = Literal["development", "test", "staging", "production"]


class Settings(BaseSettings):
    """Environment variables of the churn API (names are the upper-case field names)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Where the model comes from: a bundle on disk, or the registry when MODEL_URI is set.
    model_path: Path = Path("artifacts/model.pkl")
    model_uri: str | None = None
    mlflow_tracking_uri: str | None = None
    model_watch_interval: float = Field(default=0.0, ge=0.0, description="0 disables the watcher")
    model_required: bool = False
    # auto: the compiled forest (churn.forest) when the pipeline is one it covers, else ONNX
    # when the bundle has an export, else sklearn; each checked against sklearn at load.
    # forest / onnx: prefer that one (falling back in the same order); sklearn: always the
    # pipeline.
    inference_backend: Literal["auto", "forest", "onnx", "sklearn"] = "auto"

    database_url: str = "sqlite:///prediction_log.db"
    prediction_log_enabled: bool = True
    prediction_log_queue_size: int = Field(default=10_000, ge=1)
    prediction_log_batch_size: int = Field(default=500, ge=1)
    prediction_log_flush_interval: float = Field(default=0.5, gt=0.0)

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

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
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
        if self.model_uri is not None and not self.model_uri.startswith("models:/"):
            raise ValueError(
                f"MODEL_URI={self.model_uri!r} is not a models:/<name>@<alias> URI; "
                "for a bundle on disk set MODEL_PATH instead"
            )
        return self

    @property
    def admin_enabled(self) -> bool:
        return self.admin_token is not None and bool(self.admin_token.get_secret_value())
