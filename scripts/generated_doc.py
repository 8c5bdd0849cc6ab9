"""What every docs generator shares: write the page, or with ``--check`` (the tests) exit 1 when
the page on disk is not what the code would write."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(doc: Path, text: str, generator: str) -> int:
    if "--check" in sys.argv:
        if not doc.exists() or doc.read_text() != text:
            print(f"docs/{doc.name} is out of date: run scripts/{generator}")
            return 1
        return 0
    doc.write_text(text)
    print(f"wrote {doc}")
    return 0
