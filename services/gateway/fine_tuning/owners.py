"""Who is calling: the owner of every file, job and fine-tuned model a request creates or reads.

The owner is the NAME of the API key the caller sent, never the key: `default` for the single
`api_key`, the name of its entry for `api_keys` (`{"team-a": "sk-a"}`), and `local` for every
caller when no key is configured (a loopback-only gateway). One owner never sees another's
objects: another owner's id is answered exactly as an unknown one (404).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping

from services.common.auth import BEARER
from services.common.errors import Unauthenticated

LOCAL_OWNER = "local"
DEFAULT_OWNER = "default"
# An owner is part of `ft:<base>:<owner>:...` model names and a label value: no `:`.
OWNER_RE = re.compile(r"[a-z0-9][a-z0-9_\-]{0,39}")
OWNER_RULE = "1-40 characters from [a-z0-9_-], starting with a letter or digit"


def check_owner_names(keys: Mapping[str, str]) -> None:
    """ValueError (a settings error) for a key name that cannot be an owner, or a key given
    twice (it could not tell its owners apart)."""
    for name in keys:
        if not OWNER_RE.fullmatch(name):
            raise ValueError(f"api_keys: key name {name!r} must be {OWNER_RULE}")
        if name in (LOCAL_OWNER, DEFAULT_OWNER):
            raise ValueError(f"api_keys: the name {name!r} is reserved")
    values = list(keys.values())
    if len(set(values)) != len(values):
        raise ValueError("api_keys: two names share one key")
    if any(not v for v in values):
        raise ValueError("api_keys: a key is empty")


def owner_of(header_value: str | None, keys: Mapping[str, str]) -> str:
    """The owner whose key `header_value` (`Bearer <key>`) carries, or Unauthenticated; with
    no key configured, `local`."""
    if not keys:
        return LOCAL_OWNER
    if not header_value:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    if not header_value.lower().startswith(BEARER):
        raise Unauthenticated("malformed Authorization header: expected 'Bearer <key>'")
    given = header_value[len(BEARER) :].strip().encode()
    found = None
    for name, key in keys.items():
        # Every key is compared, so the time taken does not tell which one matched.
        if hmac.compare_digest(given, key.encode()):
            found = name
    if found is None:
        raise Unauthenticated("invalid API key")
    return found
