"""Settings of the registry, read from ``TUNEPLEX_REGISTRY_...`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

MIB = 1024 * 1024


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEPLEX_REGISTRY_", extra="ignore")

    port: int = Field(50051, description="Port to bind.")
    metrics_port: int = Field(
        9090, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 = off."
    )

    storage: Literal["local", "s3"] = Field("local", description="Blob store backend.")
    blob_dir: Path | None = Field(
        None, description="Local blob store (default <home>/registry/blobs)."
    )
    db_path: Path | None = Field(
        None, description="SQLite metadata (default <home>/registry/registry.db)."
    )

    s3_endpoint: str = Field(
        "127.0.0.1:9000", description="host:port (or http[s]:// URL) of S3/MinIO."
    )
    s3_bucket: str = Field("tuneplex", description="Bucket; created when missing.")
    s3_access_key: str | None = Field(None, description="S3 access key.")
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret key.")
    s3_secure: bool = Field(False, description="Use TLS to reach S3.")
    s3_region: str | None = Field(None, description="S3 region, e.g. us-east-1.")
    s3_prefix: str = Field("", description="Key prefix inside the bucket, e.g. 'registry/'.")

    max_upload_bytes: int = Field(
        20 * 1024 * MIB, description="Largest version, all files together."
    )
    max_example_chars: int = Field(
        200_000,
        description="Longest dataset example, in characters of content (~50k tokens); the trainer "
        "enforces the exact token limit with the model's tokenizer.",
    )
    chunk_bytes: int = Field(2 * MIB, description="Size of the chunks streamed to clients.")
    gc_grace_seconds: float = Field(
        3600.0, description="Orphan blobs younger than this are kept: they may be in an upload."
    )
    gc_interval_seconds: float = Field(
        3600.0, description="Time between orphan collections; 0 = off."
    )

    @model_validator(mode="after")
    def _s3_needs_credentials(self) -> RegistrySettings:
        if self.storage == "s3" and not (self.s3_access_key and self.s3_secret_key):
            raise ValueError(
                "storage=s3 needs TUNEPLEX_REGISTRY_S3_ACCESS_KEY and "
                "TUNEPLEX_REGISTRY_S3_SECRET_KEY"
            )
        if not 64 * 1024 <= self.chunk_bytes <= 8 * MIB:
            raise ValueError("chunk_bytes must be between 64 KiB and 8 MiB (gRPC message limit)")
        return self

    @property
    def registry_dir(self) -> Path:
        return self.home / "registry"

    def resolved_db_path(self) -> Path:
        return self.db_path or self.registry_dir / "registry.db"

    def resolved_blob_dir(self) -> Path:
        return self.blob_dir or self.registry_dir / "blobs"
