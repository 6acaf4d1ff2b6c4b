"""The rbd diff stream format (Ceph's ``rbd export-diff`` / ``import-diff`` / ``merge-diff``).

Written as version 1, read in version 1 and 2, byte by byte as Ceph documents it
(docs/replication.md repeats it)::

    header   "rbd diff v1\\n"                       (v2: "rbd diff v2\\n")
    'f'      le32 n, n bytes: from-snapshot name   (v2: le64 record length first)
    't'      le32 n, n bytes: to-snapshot name
    's'      le64 image size (of the "to" state)
    'w'      le64 offset, le64 length, length bytes of data
    'z'      le64 offset, le64 length              (the range reads as zeros)
    'e'      end (nothing follows)

Metadata records (f, t, s) come before data records (w, z). Nothing here does I/O beyond
the binary file object it is given, so the same code serves files, pipes and tests.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

HEADER_V1 = b"rbd diff v1\n"
HEADER_V2 = b"rbd diff v2\n"
#: Bytes of one data record handed out by the reader (longer records come in pieces).
READ_PIECE = 4 << 20

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_RANGE = struct.Struct("<QQ")


class DiffFormatError(ValueError):
    """The input is not a well-formed rbd diff (truncated, bad tag, out of order)."""


@dataclass(slots=True)
class DiffHeader:
    """The metadata records: from/to snapshot names (None if absent) and the image size."""

    from_snap: str | None = None
    to_snap: str | None = None
    size: int | None = None


Record = tuple[str, int, bytes | int]
"""``("w", offset, data)`` or ``("z", offset, length)``."""


class RbdDiffWriter:
    """Writes an rbd diff v1 stream: ``header()``, then ``write``/``zero``, then ``end()``."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.bytes = 0  # bytes written so far
        self._state = "new"

    def _put(self, data: bytes | bytearray | memoryview) -> None:
        self.out.write(data)
        self.bytes += len(data)

    def header(self, size: int, from_snap: str | None = None, to_snap: str | None = None
               ) -> None:
        """The magic and the metadata records (names are written only when given)."""
        if self._state != "new":
            raise RuntimeError("header() must come first, once")
        self._put(HEADER_V1)
        for tag, name in ((b"f", from_snap), (b"t", to_snap)):
            if name is not None:
                raw = name.encode("utf-8")
                self._put(tag + _U32.pack(len(raw)) + raw)
        self._put(b"s" + _U64.pack(size))
        self._state = "data"

    def write(self, offset: int, data: bytes | bytearray | memoryview
              | list[memoryview] | list[bytes]) -> None:
        """A 'w' record: ``data`` (one buffer or a list of consecutive pieces) at byte
        ``offset``."""
        self._data()
        parts = data if isinstance(data, list) else [data]
        self._put(b"w" + _RANGE.pack(offset, sum(len(p) for p in parts)))
        for p in parts:
            self._put(p)

    def zero(self, offset: int, length: int) -> None:
        """A 'z' record: ``length`` bytes from ``offset`` read as zeros."""
        self._data()
        self._put(b"z" + _RANGE.pack(offset, length))

    def end(self) -> None:
        """The 'e' record; the stream is complete."""
        self._data()
        self._put(b"e")
        self._state = "done"

    def _data(self) -> None:
        if self._state != "data":
            raise RuntimeError("data records go between header() and end()")


def _exact(inp: BinaryIO, n: int, what: str) -> bytes:
    data = inp.read(n)
    while data is not None and len(data) < n:
        more = inp.read(n - len(data))
        if not more:
            break
        data += more
    if data is None or len(data) != n:
        raise DiffFormatError(f"truncated rbd diff: end of input inside {what}")
    return data


class RbdDiffReader:
    """Reads an rbd diff (v1 or v2): ``header`` at once, then iterate the data records.

    Iteration yields :data:`Record` tuples in stream order; 'w' data longer than
    :data:`READ_PIECE` comes as several consecutive records. It ends at the 'e' record
    (``complete`` is then True); input that ends before it raises DiffFormatError.
    """

    def __init__(self, inp: BinaryIO) -> None:
        self.inp = inp
        magic = _exact(inp, len(HEADER_V1), "the header")
        if magic not in (HEADER_V1, HEADER_V2):
            raise DiffFormatError(f"not an rbd diff (header {magic!r})")
        self.version = 1 if magic == HEADER_V1 else 2
        self.header = DiffHeader()
        self.complete = False
        self._pending: bytes | None = None  # the first data tag, read with the metadata
        self._metadata()

    def _metadata(self) -> None:
        h = self.header
        while True:
            tag = _exact(self.inp, 1, "a record tag")
            if tag in (b"f", b"t"):
                if self.version == 2:
                    _exact(self.inp, 8, "a record length")
                (n,) = _U32.unpack(_exact(self.inp, 4, "a name length"))
                if n > 4096:
                    raise DiffFormatError(f"snapshot name of {n} bytes")
                name = _exact(self.inp, n, "a snapshot name").decode("utf-8", "replace")
                if tag == b"f":
                    h.from_snap = name
                else:
                    h.to_snap = name
            elif tag == b"s":
                if self.version == 2:
                    _exact(self.inp, 8, "a record length")
                (h.size,) = _U64.unpack(_exact(self.inp, 8, "the size record"))
            elif tag in (b"w", b"z", b"e"):
                self._pending = tag
                return
            elif self.version == 2:  # v2 lets readers skip what they do not know
                (n,) = _U64.unpack(_exact(self.inp, 8, "a record length"))
                _exact(self.inp, n, f"record {tag!r}")
            else:
                raise DiffFormatError(f"unknown rbd diff record {tag!r}")

    def __iter__(self) -> Iterator[Record]:
        while True:
            tag = self._pending or _exact(self.inp, 1, "a record tag")
            self._pending = None
            if tag == b"e":
                self.complete = True
                return
            if tag not in (b"w", b"z"):
                if tag in (b"f", b"t", b"s"):
                    raise DiffFormatError(f"metadata record {tag!r} after data records")
                if self.version == 2:
                    (n,) = _U64.unpack(_exact(self.inp, 8, "a record length"))
                    _exact(self.inp, n, f"record {tag!r}")
                    continue
                raise DiffFormatError(f"unknown rbd diff record {tag!r}")
            if self.version == 2:
                _exact(self.inp, 8, "a record length")
            offset, length = _RANGE.unpack(_exact(self.inp, 16, f"a {tag.decode()!r} record"))
            if tag == b"z":
                yield ("z", offset, length)
                continue
            done = 0
            while done < length:
                n = min(READ_PIECE, length - done)
                yield ("w", offset + done, _exact(self.inp, n, "'w' record data"))
                done += n
