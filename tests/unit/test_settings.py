"""Settings refuse to expose a service off loopback without an API key."""

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from services.common.auth import check_bearer
from services.common.errors import Unauthenticated
from services.common.settings import ServiceSettings


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEPLEX_DEMOSVC_", extra="ignore")


def test_loopback_without_key_is_allowed():
    assert DemoSettings(host="127.0.0.1").api_key is None
    assert DemoSettings(host="::1").api_key is None
    assert DemoSettings(host="localhost").api_key is None


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.org"])
def test_non_loopback_without_key_is_refused(host):
    with pytest.raises(ValidationError, match="TUNEPLEX_DEMOSVC_API_KEY"):
        DemoSettings(host=host)


def test_non_loopback_with_key_from_env(monkeypatch):
    monkeypatch.setenv("TUNEPLEX_DEMOSVC_HOST", "0.0.0.0")
    monkeypatch.setenv("TUNEPLEX_DEMOSVC_API_KEY", "s3cret")
    settings = DemoSettings()
    assert settings.api_key_value() == "s3cret"
    assert "s3cret" not in repr(settings)  # a secret never shows in logs


def test_empty_key_is_refused():
    with pytest.raises(ValidationError, match="empty"):
        DemoSettings(api_key="")


def test_home_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEPLEX_HOME", str(tmp_path))
    assert DemoSettings().home == tmp_path


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer wrong", "bearer s3cretX"])
def test_bearer_refused(header):
    with pytest.raises(Unauthenticated):
        check_bearer(header, "s3cret")


@pytest.mark.parametrize("header", ["Bearer s3cret", "bearer s3cret", "Bearer  s3cret "])
def test_bearer_accepted(header):
    check_bearer(header, "s3cret")


def test_no_key_configured_lets_everyone_in():
    check_bearer(None, None)


@pytest.mark.parametrize("service", ["registry", "trainer", "gateway"])
def test_a_bad_setting_is_one_line_and_exit_2_for_every_service(service, tmp_path):
    """An operator's typo in a setting: each service says which variable and why, in one line
    on stderr, and exits 2; no traceback (the gateway printed one)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    variable = f"TUNEPLEX_{service.upper()}_PORT"
    env = {**os.environ, variable: "eighty", "TUNEPLEX_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"{service}: invalid settings: {variable}: ")
    assert "integer" in lines[0]
