"""Artifact names and references (`name`, `name@3`, `name@alias`): the one grammar the
registry stores and every service that names an artifact (trainer specs, the gateway's
`model`) parses.

Only ASCII digits make a version number: ``str.isdigit`` also takes `²` and `١`, which
``int`` then refuses or silently reads as 1. A number must also fit the registry's stored
integer (SQLite INTEGER / Postgres BIGINT), or the database, not the rule, would answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.common.errors import InvalidArgument, shown

NAME_RE = re.compile(r"[a-z0-9][a-z0-9\-_.]{0,62}")
VERSION_RE = re.compile(r"[0-9]+")
# Versions start at 1 and are stored as a signed 64-bit integer.
MAX_VERSION = 2**63 - 1
_MAX_VERSION_DIGITS = len(str(MAX_VERSION))
NAME_RULE = (
    "use 1-63 characters: lowercase letters, digits, '-', '_' and '.', starting with a letter "
    "or digit, with no '..' or '/'"
)
REF_SHAPE = "`name`, `name@version` (ASCII digits) or `name@alias`"
# `latest` always means the newest version, so it cannot be taken by an alias.
LATEST = "latest"


def check_name(name: str, what: str = "name", *, param: str | None = None) -> str:
    if not NAME_RE.fullmatch(name or "") or ".." in name:
        raise InvalidArgument(
            f"invalid {what} {shown(name)}: {NAME_RULE}",
            param=param or what,
        )
    return name


def is_version_number(text: str) -> bool:
    """True for what a reference reads as a version number: ASCII digits only."""
    return VERSION_RE.fullmatch(text) is not None


def version_number(text: str, param: str = "version") -> int:
    """``text`` (ASCII digits) as a version, 1..MAX_VERSION, or InvalidArgument."""
    if not is_version_number(text):
        raise InvalidArgument(f"invalid version {shown(text)}: use ASCII digits", param=param)
    # Length first: int() of a huge digit string is slow, and past 4300 digits it raises.
    number = int(text) if len(text.lstrip("0")) <= _MAX_VERSION_DIGITS else MAX_VERSION + 1
    check_version(number, param)
    return number


def check_version(number: int, param: str = "version") -> int:
    if number < 1:
        raise InvalidArgument(f"invalid version {number}: versions start at 1", param=param)
    if number > MAX_VERSION:
        raise InvalidArgument(
            f"invalid version {shown(str(number), 30)}: versions go up to {MAX_VERSION}",
            param=param,
        )
    return number


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


def parse_ref(ref: str, param: str = "ref") -> Ref:
    """`name`, `name@latest`, `name@<1..2**63-1>` or `name@alias`; anything else is
    InvalidArgument with ``param`` (the request field that carried ``ref``)."""
    name, sep, selector = (ref or "").partition("@")
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidArgument(
            f"invalid reference {shown(ref)}: expected {REF_SHAPE}; for the name, {NAME_RULE}",
            param=param,
        )
    if not sep or selector == LATEST:
        return Ref(name)
    if is_version_number(selector):
        try:
            return Ref(name, version=version_number(selector, param))
        except InvalidArgument as exc:
            raise InvalidArgument(
                f"invalid reference {shown(ref)}: {exc.message}", param=param
            ) from None
    if not NAME_RE.fullmatch(selector) or ".." in selector:
        raise InvalidArgument(
            f"invalid reference {shown(ref)}: expected {REF_SHAPE}",
            param=param,
        )
    return Ref(name, alias=selector)
