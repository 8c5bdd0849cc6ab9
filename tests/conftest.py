"""Fixtures shared by every tier.

The base model is imported once per checkout into `.tuneplex-test/` (git-ignored) with the same
code users run, so a second `make test` reuses it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.client.processes import free_port

__all__ = ["BASE_MODEL", "TEST_CACHE", "free_port"]

REPO = Path(__file__).resolve().parent.parent
TEST_CACHE = Path(os.environ.get("TUNEPLEX_TEST_CACHE", REPO / ".tuneplex-test"))
BASE_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a bf16 safetensors folder (imported on first use)."""
    from services.client.model_import import import_model

    return import_model(BASE_MODEL, home=TEST_CACHE).path


@pytest.fixture
def registry_server(tmp_path_factory):
    """A fresh, empty registry (local storage, no API key) as a real subprocess.

    Yields a ``tests.helpers.registry_process.RegistryServer``: ``.target`` ("127.0.0.1:PORT"),
    ``.home``, ``.api_key`` (None), ``.process``; stopped (SIGTERM) afterwards."""
    from tests.helpers.registry_process import start_registry

    server = start_registry(tmp_path_factory.mktemp("registry-home"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def registry_with_base_model(tmp_path_factory, base_model_dir):
    """One registry for the session that already holds ``base_model_dir`` as the model
    ``smollm2-135m-instruct`` (``.base_model``), so adapters can be pushed against it.
    Shared: use unique artifact names and do not kill its process."""
    from services.client.registry import RegistryClient
    from tests.helpers.registry_process import start_registry

    server = start_registry(tmp_path_factory.mktemp("registry-with-model"))
    try:
        with RegistryClient(server.target) as client:
            client.push("model", BASE_MODEL, base_model_dir, source=BASE_MODEL)
        server.base_model = BASE_MODEL
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL cluster for the session (``tests/helpers/postgres.py``): use
    ``.create_database()`` for a fresh database's URL; stopped and removed afterwards."""
    from tests.helpers.postgres import start_postgres

    cluster = start_postgres()
    try:
        yield cluster
    finally:
        cluster.stop()
