"""Streaming check of a ``.safetensors`` file: header well formed, offsets consistent and, when
asked, no NaN or Inf in any floating-point tensor.

It is fed the file's bytes as they arrive, so a 100 MB adapter is checked while it streams
to storage, in bounded memory, and without torch (numpy has no bfloat16, so half-precision
types are checked on their bit patterns: exponent all ones means Inf or NaN).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgument, shown

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit

ITEM_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}


def _all_finite(dtype: str, buf: bytes | memoryview) -> bool:
    if dtype == "F32":
        return bool(np.isfinite(np.frombuffer(buf, "<f4")).all())
    if dtype == "F64":
        return bool(np.isfinite(np.frombuffer(buf, "<f8")).all())
    if dtype == "F16":
        return not ((np.frombuffer(buf, "<u2") & 0x7C00) == 0x7C00).any()
    if dtype == "BF16":
        return not ((np.frombuffer(buf, "<u2") & 0x7F80) == 0x7F80).any()
    if dtype == "F8_E5M2":
        return not ((np.frombuffer(buf, "u1") & 0x7C) == 0x7C).any()
    if dtype == "F8_E4M3":  # no Inf in this format; NaN is S.1111.111
        return not ((np.frombuffer(buf, "u1") & 0x7F) == 0x7F).any()
    return True  # integers and booleans are always finite


@dataclass
class _Tensor:
    name: str
    dtype: str
    begin: int
    end: int


class SafetensorsCheck:
    def __init__(self, path: str, size: int, *, check_finite: bool):
        self.path = path
        self.size = size
        self.check_finite = check_finite
        self.tensor_names: list[str] = []
        self.tensor_shapes: dict[str, tuple[int, ...]] = {}
        self.metadata: dict[str, str] = {}
        self._head = bytearray()
        self._header_len: int | None = None
        self._tensors: list[_Tensor] = []
        self._index = 0  # tensor being read
        self._pos = 0  # offset in the data region
        self._carry = b""  # bytes of an element split across chunks

    def _fail(self, why: str) -> InvalidArgument:
        return InvalidArgument(f"{self.path}: {why}", param="files")

    def feed(self, data: bytes) -> None:
        if self._header_len is None or len(self._head) < 8 + self._header_len:
            data = self._feed_header(data)
            if not data:
                return
        self._feed_data(memoryview(data))

    def _feed_header(self, data: bytes) -> bytes:
        need = (8 if self._header_len is None else 8 + self._header_len) - len(self._head)
        self._head += data[:need]
        data = data[need:]
        if self._header_len is None and len(self._head) == 8:
            (self._header_len,) = struct.unpack("<Q", self._head)
            if self._header_len > min(MAX_HEADER_BYTES, self.size - 8):
                raise self._fail("not a safetensors file (header length out of range)")
            return self._feed_header(data) if data else b""
        if self._header_len is not None and len(self._head) == 8 + self._header_len:
            self._parse_header(bytes(self._head[8:]))
        return data

    def _parse_header(self, raw: bytes) -> None:
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise self._fail("not a safetensors file (header is not JSON)") from None
        if not isinstance(header, dict):
            raise self._fail("not a safetensors file (header is not an object)")
        meta = header.pop("__metadata__", None) or {}
        self.metadata = meta if isinstance(meta, dict) else {}
        tensors = []
        for name, spec in header.items():
            try:
                dtype, shape, (begin, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
                dims = tuple(int(dim) for dim in shape)
                numel = 1
                for dim in dims:
                    numel *= dim
            except (KeyError, TypeError, ValueError):
                raise self._fail(f"tensor {shown(name)} has a malformed header entry") from None
            if dtype not in ITEM_BYTES:
                raise self._fail(f"tensor {shown(name)} has unknown dtype {shown(dtype, 40)}")
            if end - begin != numel * ITEM_BYTES[dtype] or begin < 0:
                raise self._fail(f"tensor {shown(name)}: offsets do not match its shape and dtype")
            tensors.append(_Tensor(name, dtype, begin, end))
            self.tensor_shapes[name] = dims
        tensors.sort(key=lambda t: t.begin)
        pos = 0
        for t in tensors:
            if t.begin != pos:
                raise self._fail(f"tensor {shown(t.name)}: data offsets overlap or leave a gap")
            pos = t.end
        if 8 + len(raw) + pos != self.size:
            raise self._fail(
                f"file is {self.size} bytes but its header describes {8 + len(raw) + pos}"
            )
        self._tensors = tensors
        self.tensor_names = [t.name for t in tensors]

    def _feed_data(self, data: memoryview) -> None:
        while data:
            if self._index >= len(self._tensors):
                raise self._fail("bytes after the last tensor")
            t = self._tensors[self._index]
            take = min(len(data), t.end - self._pos)
            if self.check_finite:
                self._check_slice(t, data[:take])
            data = data[take:]
            self._pos += take
            if self._pos == t.end:
                self._index += 1
                self._carry = b""

    def _check_slice(self, t: _Tensor, piece: memoryview) -> None:
        item = ITEM_BYTES[t.dtype]
        buf = self._carry + bytes(piece) if self._carry else piece
        whole = len(buf) - len(buf) % item
        if whole and not _all_finite(t.dtype, buf[:whole]):
            raise self._fail(f"tensor {shown(t.name)} contains NaN or Inf values")
        self._carry = bytes(buf[whole:])

    def finish(self) -> None:
        if self._header_len is None or len(self._head) < 8 + self._header_len:
            raise self._fail("not a safetensors file (truncated header)")
        if self._index != len(self._tensors):
            raise self._fail("truncated tensor data")
