"""Which file paths a version may hold: every version must be writable as a folder on the
file systems its users pull it to (Linux, macOS, Windows), or it is a version nobody can
download. The registry refuses the rest at upload; clients check the same rules before they
write a byte, so a version stored before these rules fails cleanly instead of half-written.

The rules:
- a path is relative, '/'-separated, at most ``MAX_PATH_CHARS`` characters;
- each component is non-empty, not `.` or `..`, at most ``MAX_COMPONENT_BYTES`` bytes in UTF-8
  (NAME_MAX of ext4, XFS, APFS), with no control character, no backslash, and no `:` in the
  first one (a Windows drive);
- no path is also a folder of another (`tok` and `tok/x`);
- no two paths are equal once Unicode-normalized (NFC) and case-folded (`A.txt`, `a.txt`):
  they are one file on a case-insensitive file system.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from services.common.errors import InvalidArgument, shown

MAX_PATH_CHARS = 512
MAX_COMPONENT_BYTES = 255
PARAM = "files"
CODE = "file_path_invalid"


def _bad(path: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid file path {shown(path)}: {why}", param=PARAM, code=CODE)


def check_file_path(path: str) -> str:
    """One path on its own, or InvalidArgument naming it and the rule it breaks."""
    if not path:
        raise _bad(path, "empty")
    if len(path) > MAX_PATH_CHARS:
        raise _bad(path, f"over {MAX_PATH_CHARS} characters")
    if path.startswith("/"):
        raise _bad(path, "must be relative, '/'-separated, without '..'")
    if any(unicodedata.category(c) == "Cc" for c in path):
        raise _bad(path, "control characters are not allowed")
    if "\\" in path:
        raise _bad(path, "must be relative, '/'-separated (no backslash), without '..'")
    parts = path.split("/")
    if ":" in parts[0]:
        raise _bad(path, "must be relative (no drive), '/'-separated, without '..'")
    if any(p in ("", ".", "..") for p in parts):
        raise _bad(path, "must be relative, '/'-separated, without '..', '.' or empty parts")
    for part in parts:
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise _bad(
                path,
                f"the part {shown(part, 40)} is over {MAX_COMPONENT_BYTES} bytes, longer than "
                "a file system allows in one name",
            )
    return path


def fold(path: str) -> str:
    """The form two paths share when a case-insensitive file system sees one file."""
    return unicodedata.normalize("NFC", path).casefold()


def check_file_layout(paths: Iterable[str]) -> None:
    """Every path valid, and together writable as one folder: no duplicates (exact or up to
    case), no file that is also a folder of another."""
    files: dict[str, str] = {}
    for path in paths:
        check_file_path(path)
        key = fold(path)
        if key in files:
            other = files[key]
            if other == path:
                raise InvalidArgument(f"file {shown(path)} listed twice", param=PARAM, code=CODE)
            raise _bad(
                path,
                f"it and {shown(other)} differ only in case and would be one file on "
                "case-insensitive file systems",
            )
        files[key] = path
    for key, path in files.items():
        parts = key.split("/")
        for end in range(1, len(parts)):
            folder = "/".join(parts[:end])
            if folder in files:
                raise _bad(
                    path,
                    f"{shown(files[folder])} is a file, so it cannot also be a folder of this one",
                )
