"""Text the metadata databases can hold, the same on both backends.

PostgreSQL's TEXT cannot hold NUL at all, and its JSON types refuse ``\\u0000`` in any string:
one such string in a version's info would make every query that reads the info's fields fail
(every promotion gate). SQLite would store both; the store refuses them on either backend, with
INVALID_ARGUMENT, so a version reads the same wherever it was pushed. In a description, the
other C0 control characters are refused too: never meant in prose, they garble the terminals
and logs that show it. Tab and line breaks stay.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from services.common.errors import InvalidArgument

CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # C0 controls and DEL: none belongs in a name
# Prose keeps \t, \n and \r (text pasted from Windows ends its lines in \r\n).
CONTROL_IN_PROSE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
NUL = re.compile("\x00")


def refuse_characters(text: str, what: str, *, param: str, refused: re.Pattern[str]) -> None:
    """InvalidArgument when ``text`` holds a character of ``refused``; ``what`` names the text
    for the caller (``the description``)."""
    found = refused.search(text)
    if found:
        raise InvalidArgument(
            f"{what} holds the control character U+{ord(found.group()):04X} (at position "
            f"{found.start()}): remove it",
            param=param,
            code="control_character",
        )


def refuse_nul_in_json(text: str, what: str, *, param: str) -> None:
    """The same, for NUL in any string (key or value) of the JSON document ``text``."""
    refuse_characters(text, what, param=param, refused=NUL)
    if "\\u0000" not in text:  # how json and protobuf encode NUL: most documents stop here
        return
    for value in _strings(json.loads(text)):
        refuse_characters(value, what, param=param, refused=NUL)


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
