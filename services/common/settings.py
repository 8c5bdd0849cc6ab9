"""The settings base every service extends: one ``BaseSettings`` per service, read from
``TUNEPLEX_<SERVICE>_...`` environment variables, built once in ``main()`` and passed down."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import TypeVar

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """Where tuneplex keeps its data when nothing says otherwise: ``$TUNEPLEX_HOME`` or
    ``~/.tuneplex``. Every service of one machine shares it in the embedded setup."""
    return Path(os.environ.get("TUNEPLEX_HOME") or Path.home() / ".tuneplex")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclasses set ``model_config`` with their env prefix."""

    model_config = SettingsConfigDict(env_prefix="TUNEPLEX_", extra="ignore")

    host: str = Field(
        "127.0.0.1", description="Address to bind. Anything but loopback needs an API key."
    )
    port: int = Field(0, description="Port to bind.")
    api_key: SecretStr | None = Field(
        None,
        description="Bearer key clients must send. Optional only when binding to loopback.",
    )
    home: Path = Field(default_factory=default_home, description="Data directory.")
    log_level: str = Field("INFO", description="Python logging level.")
    log_json: bool = Field(False, description="Log one JSON object per line (for k8s).")

    @model_validator(mode="after")
    def _key_required_off_loopback(self) -> ServiceSettings:
        if self.api_key is None and not is_loopback(self.host):
            prefix = self.model_config.get("env_prefix", "TUNEPLEX_")
            raise ValueError(
                f"binding to {self.host} without an API key would expose the service: set "
                f"{prefix}API_KEY, or bind to 127.0.0.1"
            )
        if self.api_key is not None and not self.api_key.get_secret_value():
            raise ValueError("api_key is set but empty")
        return self

    def api_key_value(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def settings_or_exit(cls: type[SettingsT], service: str) -> SettingsT:
    """``cls()`` from the environment, or, for an operator's mistake, one line on stderr naming
    each variable at fault and what is wrong with it, and exit status 2 (never a traceback)."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        problems = "; ".join(
            (f"{prefix}{error['loc'][0]}".upper() + ": " if error["loc"] else "")
            + error["msg"]
            for error in exc.errors()
        )
        print(f"{service}: invalid settings: {problems}", file=sys.stderr)
        sys.exit(2)
