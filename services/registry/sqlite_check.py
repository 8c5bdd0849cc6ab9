"""Check that an uploaded file is a SQLite database, from its 100-byte header as it streams.

A SQLITE dataset is what ``sql_execution`` graders run queries on; a file that only has the
right name would fail every graded item later, so it is refused on upload. The header is the
documented one (https://www.sqlite.org/fileformat.html#the_database_header): the magic string,
a power-of-two page size, and the fixed payload fractions; the file is a whole number of pages.
"""

from __future__ import annotations

from services.common.errors import InvalidArgument

SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
HEADER_BYTES = 100
MAGIC = b"SQLite format 3\x00"


def is_sqlite_name(path: str) -> bool:
    return path.lower().endswith(SQLITE_SUFFIXES)


class SqliteCheck:
    def __init__(self, path: str, size: int):
        self.path = path
        self.size = size
        self._header = bytearray()

    def _fail(self, why: str) -> InvalidArgument:
        return InvalidArgument(
            f"{self.path}: not a SQLite database: {why} (rule: not_sqlite)",
            param="file",
            code="not_sqlite",
        )

    def feed(self, data: bytes) -> None:
        if len(self._header) >= HEADER_BYTES:
            return
        self._header += data[: HEADER_BYTES - len(self._header)]
        if len(self._header) >= len(MAGIC) and not self._header.startswith(MAGIC):
            raise self._fail("its first bytes are not the SQLite header")
        if len(self._header) == HEADER_BYTES:
            self._check_header(bytes(self._header))

    def finish(self) -> None:
        if len(self._header) < HEADER_BYTES:
            raise self._fail(f"shorter than the {HEADER_BYTES}-byte SQLite header")

    def _check_header(self, header: bytes) -> None:
        raw = int.from_bytes(header[16:18], "big")
        page_size = 65536 if raw == 1 else raw
        if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
            raise self._fail(f"page size {raw} in its header is not a power of two in 512..65536")
        if header[18] not in (1, 2) or header[19] not in (1, 2):
            raise self._fail("unknown file format version in its header")
        if header[21:24] != b"\x40\x20\x20":
            raise self._fail("its header's payload fractions are not SQLite's")
        if self.size % page_size:
            raise self._fail(
                f"{self.size} bytes is not a whole number of {page_size}-byte pages (truncated?)"
            )
