"""Artifact names, aliases, references (`name`, `name@3`, `name@alias`) and file paths.

Names end up in object keys and on users' disks, so anything that could be read as a path is
refused rather than cleaned up: a name either is valid or the request fails.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.common.errors import InvalidArgument
from services.common.stubs import registry_pb2

NAME_RE = re.compile(r"[a-z0-9][a-z0-9\-_.]{0,62}")
# `latest` always means the newest version, so it cannot be taken by an alias.
RESERVED_ALIASES = frozenset({"latest"})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
MAX_PATH_CHARS = 512

KINDS: dict[str, int] = {
    "dataset": registry_pb2.ARTIFACT_KIND_DATASET,
    "adapter": registry_pb2.ARTIFACT_KIND_ADAPTER,
    "model": registry_pb2.ARTIFACT_KIND_MODEL,
}
KIND_NAMES: dict[int, str] = {v: k for k, v in KINDS.items()}


def kind_name(kind: int) -> str:
    try:
        return KIND_NAMES[kind]
    except KeyError:
        raise InvalidArgument("kind must be one of dataset, adapter, model", param="kind") from None


def check_name(name: str, what: str = "name") -> str:
    if not NAME_RE.fullmatch(name or "") or ".." in name:
        raise InvalidArgument(
            f"invalid {what} {name!r}: use 1-63 characters of a-z 0-9 - _ . starting with a "
            "letter or digit, with no '..' or '/'",
            param=what,
        )
    return name


def check_alias(alias: str) -> str:
    check_name(alias, "alias")
    if alias.isdigit():
        raise InvalidArgument(
            f"invalid alias {alias!r}: an alias cannot be a number", param="alias"
        )
    if alias in RESERVED_ALIASES:
        raise InvalidArgument(f"alias {alias!r} is reserved", param="alias")
    return alias


@dataclass(frozen=True)
class Ref:
    """A parsed reference: exactly one of ``version`` (>0) or ``alias`` is set, or neither
    (the latest version)."""

    name: str
    version: int = 0
    alias: str = ""

    def __str__(self) -> str:
        if self.version:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def parse_ref(ref: str) -> Ref:
    name, sep, selector = (ref or "").partition("@")
    check_name(name)
    if not sep or selector == "latest":
        return Ref(name)
    if selector.isdigit():
        if int(selector) < 1:
            raise InvalidArgument(f"invalid reference {ref!r}: versions start at 1", param="ref")
        return Ref(name, version=int(selector))
    if not NAME_RE.fullmatch(selector) or ".." in selector:
        raise InvalidArgument(
            f"invalid reference {ref!r}: expected name, name@VERSION or name@ALIAS", param="ref"
        )
    return Ref(name, alias=selector)


def check_file_path(path: str) -> str:
    """A file path inside a version: relative, '/'-separated, no '..', no hidden tricks."""
    parts = path.split("/")
    bad = (
        not path
        or len(path) > MAX_PATH_CHARS
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or ":" in parts[0]
        or any(p in ("", ".", "..") for p in parts)
        or any(ord(c) < 32 for c in path)
    )
    if bad:
        raise InvalidArgument(
            f"invalid file path {path!r}: must be relative, '/'-separated, without '..'",
            param="files",
        )
    return path


def is_pickle(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES)
