"""The one place the version is read from: the installed distribution's metadata."""

from importlib.metadata import PackageNotFoundError, version


def tuneplex_version() -> str:
    try:
        return version("tuneplex")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0.0.0+unknown"
