"""Lines of a file whose bytes arrive in chunks: what every line-by-line upload check needs."""

from __future__ import annotations

from collections.abc import Callable


class LineSplitter:
    """Feeds each complete line (without its newline) to ``on_line`` as chunks arrive; a line
    still buffered past ``max_pending`` bytes calls ``on_too_long`` (which raises) instead of
    growing without bound."""

    def __init__(
        self, on_line: Callable[[bytes], None], max_pending: int, on_too_long: Callable[[], None]
    ):
        self._on_line = on_line
        self._max_pending = max_pending
        self._on_too_long = on_too_long
        self._partial = bytearray()

    def feed(self, data: bytes) -> None:
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if self._partial:
                self._partial += data[start:end]
                line, self._partial = bytes(self._partial), bytearray()
            else:
                line = data[start:end]
            self._on_line(line)
            start = end + 1
        self._partial += data[start:]
        if len(self._partial) > self._max_pending:
            self._on_too_long()

    def finish(self) -> None:
        """The last line, when the file does not end with a newline."""
        if self._partial:
            line, self._partial = bytes(self._partial), bytearray()
            self._on_line(line)
