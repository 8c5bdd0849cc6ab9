"""Where the SDK and CLI find the services. Read from ``TUNEPLEX_...`` env vars or flags."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REGISTRY_PORT = 50051
DEFAULT_TRAINER_PORT = 50052
DEFAULT_GATEWAY_PORT = 8000


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEPLEX_", extra="ignore")

    registry_target: str = Field(
        f"127.0.0.1:{DEFAULT_REGISTRY_PORT}", description="host:port of the registry."
    )
    trainer_target: str = Field(
        f"127.0.0.1:{DEFAULT_TRAINER_PORT}", description="host:port of the trainer."
    )
    gateway_url: str = Field(
        f"http://127.0.0.1:{DEFAULT_GATEWAY_PORT}", description="Base URL of the gateway."
    )
    api_key: str | None = Field(None, description="Bearer key sent to every service.")
