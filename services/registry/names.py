"""Artifact names, aliases, references (`name`, `name@3`, `name@alias`) and file paths, as
the registry applies them (the grammar itself lives in ``services.common.refs`` and
``services.common.file_layout``, shared with the clients).

Names end up in object keys and on users' disks, so anything that could be read as a path is
refused rather than cleaned up: a name either is valid or the request fails.
"""

from __future__ import annotations

from services.common.errors import InvalidArgument, shown
from services.common.file_layout import MAX_PATH_CHARS, check_file_layout, check_file_path
from services.common.kinds import KIND_NAMES, KINDS
from services.common.refs import (
    LATEST,
    NAME_RE,
    Ref,
    check_name,
    is_version_number,
    parse_ref,
)

__all__ = [
    "KINDS",
    "MAX_PATH_CHARS",
    "NAME_RE",
    "Ref",
    "check_alias",
    "check_file_layout",
    "check_file_path",
    "check_name",
    "is_pickle",
    "kind_name",
    "parse_ref",
]

# `latest` always means the newest version, so it cannot be taken by an alias.
RESERVED_ALIASES = frozenset({LATEST})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")



def kind_name(kind: int) -> str:
    try:
        return KIND_NAMES[kind]
    except KeyError:
        raise InvalidArgument(f"kind must be one of {', '.join(KINDS)}", param="kind") from None


def check_alias(alias: str) -> str:
    check_name(alias, "alias")
    if is_version_number(alias):
        raise InvalidArgument(
            f"invalid alias {shown(alias)}: an alias cannot be a number", param="alias"
        )
    if alias in RESERVED_ALIASES:
        raise InvalidArgument(f"alias {shown(alias)} is reserved", param="alias")
    return alias


def is_pickle(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES)
