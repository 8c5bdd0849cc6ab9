"""The ``tuneplex`` command line."""

from services.client.cli.app import app, main

__all__ = ["app", "main"]
