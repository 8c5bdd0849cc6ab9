"""Settings of the registry, read from ``TUNEPLEX_REGISTRY_...`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict
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
    database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL metadata instead of SQLite: postgresql://user:password@host:port/"
        "db (libpq URL; ?host=/socket/dir for a Unix socket). Several registries on one "
        "database stay consistent; they need one blob store too (storage=s3).",
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
    direct_transfers: bool = Field(
        True,
        description="On S3, hand authenticated clients presigned URLs so that pulls go straight "
        "to object storage; off where clients cannot reach it (they stream through the registry).",
    )
    direct_url_expiry_seconds: int = Field(
        300,
        ge=1,
        le=7 * 24 * 3600,  # the longest a SigV4 presigned URL may live
        description="Lifetime of a presigned URL; clients ask for a fresh one when it has passed.",
    )

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
        if self.database_url is not None:
            url = self.database_url.get_secret_value()
            if not url.startswith(("postgresql://", "postgres://")):
                # The value is a secret (it may hold a password): never echoed.
                raise ValueError(
                    "TUNEPLEX_REGISTRY_DATABASE_URL must be a postgresql:// URL"
                    " (postgresql://user:password@host:port/dbname)"
                )
            try:
                conninfo_to_dict(url)
            except psycopg.ProgrammingError:
                # Not psycopg's message: it quotes the token it choked on (the password, say).
                raise ValueError(
                    "TUNEPLEX_REGISTRY_DATABASE_URL cannot be parsed as a libpq URL: check its"
                    " percent-encoding (a '%' in the password is written %25) and its port"
                ) from None
            if self.db_path is not None:
                raise ValueError(
                    "set TUNEPLEX_REGISTRY_DATABASE_URL (PostgreSQL) or "
                    "TUNEPLEX_REGISTRY_DB_PATH (SQLite), not both"
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
