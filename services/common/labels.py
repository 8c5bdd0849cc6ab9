"""Labels: the small string maps that the registry keeps on a version and the trainer on a job
(who owns it, the file name it was uploaded under, ...), and the one rule both check them by."""

from __future__ import annotations

import re
from collections.abc import Mapping

from services.common.errors import InvalidArgument, shown

KEY_RE = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,62}")
# An OpenAI job's metadata (16 pairs of 64 + 512 characters) travels as one JSON label.
MAX_VALUE_CHARS = 20_000
MAX_LABELS = 32
RULE = (
    f"at most {MAX_LABELS} labels; keys of 1-63 characters from [a-z0-9_.-] starting with a "
    f"letter or digit, values of at most {MAX_VALUE_CHARS} printable characters"
)


def check_labels(labels: Mapping[str, str], *, param: str = "labels") -> dict[str, str]:
    """``labels`` as a plain dict, or InvalidArgument naming the first one that breaks RULE."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"{len(labels)} labels: {RULE}", param=param)
    for key, value in labels.items():
        if not KEY_RE.fullmatch(key):
            raise InvalidArgument(f"invalid label key {shown(key)}: {RULE}", param=param)
        if len(value) > MAX_VALUE_CHARS or not value.isprintable():
            raise InvalidArgument(f"invalid value of label {key}: {RULE}", param=f"{param}.{key}")
    return dict(labels)


def carries(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """Whether ``labels`` has every pair of ``wanted`` (what a label filter matches)."""
    return all(labels.get(k) == v for k, v in wanted.items())
