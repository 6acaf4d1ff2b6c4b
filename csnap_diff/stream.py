"""The csnap-send stream: framed records, a CRC32C per record, a chained SHA-256 digest.

Byte by byte (docs/replication.md has the same with an example)::

    stream  = magic record*                       magic = "CSNAPSTR" 0x01 (9 bytes)
    record  = kind:u8 length:u32be payload crc:u32be
              crc = CRC32C(kind || length || payload)  (Castagnoli, as crc32c.crc32c)
    'H'  header      msgpack map (HEADER_FIELDS)            first record, once
    'W'  data        offset:u64be data                      data at byte offset
    'Z'  zero        offset:u64be length:u64be              zeros
    'C'  checkpoint  position:u64be chain:32 bytes          every byte before position sent
    'E'  end         position:u64be chain:32 records:u64be bytes:u64be

The *chain* is the digest: ``c0 = SHA-256("csnap-send v1" 0x00 || stream id)``, and after
every W or Z record ``c = SHA-256(c || kind || length || payload)``. Checkpoints and the end
record carry the sender's chain value; a receiver that computed another refuses the stream
there. A resumed stream starts where the receiver's last verified checkpoint was (the
header's ``start`` and ``chain``), so the digest covers the whole transfer across resumes.

A record is used only after its CRC matched; nothing else in a stream is trusted before
then. The CRC catches damage; the chain catches lost, repeated or reordered records. An
active attacker can recompute both: run the stream over ssh (or another authenticated
channel) when the network is not trusted.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import crc32c
import msgpack

MAGIC = b"CSNAPSTR\x01"
#: Largest data payload in a W record (the sender's extents are at most this long).
MAX_DATA = 4 << 20
MAX_PAYLOAD = MAX_DATA + 64
HEADER_FIELDS = ("stream", "source", "from", "to", "size", "chunk_size", "start", "chain")

_REC = struct.Struct(">BI")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ZERO = struct.Struct(">QQ")
_END = struct.Struct(">Q32sQQ")


class StreamError(Exception):
    """The stream is damaged, truncated, out of order, or not the one expected.

    ``record`` is the number of the record at fault (0 = header) and ``offset`` its byte
    offset in the stream; nothing from that record on was used.
    """

    def __init__(self, message: str, record: int = 0, offset: int = 0) -> None:
        super().__init__(message)
        self.record, self.offset = record, offset


@dataclass(slots=True)
class StreamHeader:
    """What the H record says: which diff this is and where it starts."""

    stream: bytes  # 16-byte stream id (source store, from and to snapshots)
    source: str  # the sending store's UUID (informational)
    from_snap: str | None
    to_snap: str
    size: int  # volume size in bytes
    chunk_size: int
    start: int  # byte position this stream starts at (0, or a resume point)
    chain: bytes  # chain value at ``start``

    def encode(self) -> bytes:
        """The H payload."""
        return msgpack.packb({"stream": self.stream, "source": self.source,
                              "from": self.from_snap, "to": self.to_snap, "size": self.size,
                              "chunk_size": self.chunk_size, "start": self.start,
                              "chain": self.chain}, use_bin_type=True)

    @classmethod
    def decode(cls, payload: bytes) -> StreamHeader:
        """Parse an H payload; StreamError if a field is missing or of the wrong type."""
        try:
            d = msgpack.unpackb(payload, raw=False)
            ok = (type(d) is dict and set(d) == set(HEADER_FIELDS)
                  and type(d["stream"]) is bytes and len(d["stream"]) == 16
                  and type(d["chain"]) is bytes and len(d["chain"]) == 32
                  and type(d["to"]) is str and type(d["source"]) is str
                  and (d["from"] is None or type(d["from"]) is str)
                  and all(type(d[k]) is int and d[k] >= 0
                          for k in ("size", "chunk_size", "start")))
        except (ValueError, msgpack.UnpackException) as exc:
            raise StreamError(f"unreadable stream header: {exc}") from None
        if not ok or d["chunk_size"] == 0 or d["start"] > d["size"]:
            raise StreamError("malformed stream header")
        return cls(d["stream"], d["source"], d["from"], d["to"], d["size"], d["chunk_size"],
                   d["start"], d["chain"])


def stream_id(source: str, from_snap: dict[str, Any] | None, to_snap: dict[str, Any]) -> bytes:
    """16 bytes naming one diff: the source store and both snapshots (name, tag, creation
    time), so a snapshot deleted and made again under the same name is another stream."""
    def part(s: dict[str, Any] | None) -> str:
        return "-" if s is None else f"{s['name']}\0{s['tag']}\0{float(s['created']):.6f}"
    text = f"{source}\0{part(from_snap)}\0{part(to_snap)}".encode()
    return hashlib.sha256(text).digest()[:16]


def chain_start(stream: bytes) -> bytes:
    """The chain value before the first data record."""
    return hashlib.sha256(b"csnap-send v1\0" + stream).digest()


def frame(kind: bytes, payload: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    """``(head, tail)`` around ``payload``: kind and length, then the CRC32C."""
    head = _REC.pack(kind[0], len(payload))
    crc = crc32c.crc32c(payload, crc32c.crc32c(head))
    return head, _U32.pack(crc)


class StreamEncoder:
    """Builds the records of one stream; every method returns bytes to send, in order."""

    def __init__(self, header: StreamHeader) -> None:
        self.header = header
        self.chain = header.chain
        self.records = 0  # W and Z records so far
        self.bytes = 0  # data bytes in W records so far

    def start(self) -> list[bytes | memoryview]:
        """The magic and the header record."""
        payload = self.header.encode()
        head, tail = frame(b"H", payload)
        return [MAGIC, head, payload, tail]

    def _chained(self, kind: bytes, parts: list[bytes | memoryview]) -> list[bytes | memoryview]:
        length = sum(len(p) for p in parts)
        head = _REC.pack(kind[0], length)
        crc = crc32c.crc32c(head)
        h = hashlib.sha256(self.chain)
        h.update(head)
        for p in parts:
            crc = crc32c.crc32c(p, crc)
            h.update(p)
        self.chain = h.digest()
        self.records += 1
        return [head, *parts, _U32.pack(crc)]

    def data(self, offset: int, parts: list[memoryview] | list[bytes]) -> list[bytes | memoryview]:
        """A W record (the parts together at most MAX_DATA bytes)."""
        self.bytes += sum(len(p) for p in parts)
        return self._chained(b"W", [_U64.pack(offset), *parts])

    def zero(self, offset: int, length: int) -> list[bytes | memoryview]:
        """A Z record."""
        return self._chained(b"Z", [_ZERO.pack(offset, length)])

    def checkpoint(self, position: int) -> list[bytes | memoryview]:
        """A C record: everything before byte ``position`` has been sent."""
        payload = _U64.pack(position) + self.chain
        head, tail = frame(b"C", payload)
        return [head, payload, tail]

    def end(self) -> list[bytes | memoryview]:
        """The E record."""
        payload = _END.pack(self.header.size, self.chain, self.records, self.bytes)
        head, tail = frame(b"E", payload)
        return [head, payload, tail]


@dataclass(slots=True)
class Data:
    """A verified W record."""

    offset: int
    data: bytes


@dataclass(slots=True)
class Zero:
    """A verified Z record."""

    offset: int
    length: int


@dataclass(slots=True)
class Checkpoint:
    """A verified C record whose chain matched: safe to record ``position`` as done."""

    position: int
    chain: bytes


@dataclass(slots=True)
class End:
    """A verified E record whose chain matched: the stream is complete."""

    chain: bytes
    records: int
    bytes: int


Event = Data | Zero | Checkpoint | End


class StreamDecoder:
    """Reads and verifies one stream from a blocking binary file object.

    ``header`` is read at construction; iterating yields :data:`Event` objects, each only
    after its record's CRC (and, for C and E, the chain) matched; anything else raises
    StreamError naming the record. Iteration ends after End.
    """

    def __init__(self, inp: BinaryIO) -> None:
        self.inp = inp
        self.offset = 0  # stream bytes consumed
        self.record = 0
        magic = self._read(len(MAGIC), "the stream magic")
        if magic != MAGIC:
            raise StreamError(f"not a csnap-send stream (starts {magic[:9]!r})")
        kind, payload = self._record()
        if kind != b"H":
            raise StreamError("the stream does not start with a header", 0, len(MAGIC))
        self.header = StreamHeader.decode(payload)
        self.chain = self.header.chain
        self.records = 0
        self.bytes = 0
        self.position = self.header.start  # data before this byte has been applied

    def _read(self, n: int, what: str) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            more = self.inp.read(n - len(buf))
            if not more:
                raise StreamError(f"stream truncated inside {what}", self.record, self.offset)
            buf += more
        self.offset += n
        return bytes(buf)

    def _record(self) -> tuple[bytes, bytes]:
        start = self.offset
        head = self._read(_REC.size, f"record {self.record}")
        kind, length = _REC.unpack(head)
        if length > MAX_PAYLOAD:
            raise StreamError(f"record {self.record} claims {length} bytes", self.record, start)
        payload = self._read(length, f"record {self.record}")
        (crc,) = _U32.unpack(self._read(4, f"record {self.record}"))
        if crc32c.crc32c(payload, crc32c.crc32c(head)) != crc:
            raise StreamError(f"record {self.record} at stream byte {start}: checksum "
                              "mismatch (damaged stream)", self.record, start)
        self.record += 1
        return bytes([kind]), payload

    def __iter__(self) -> Iterator[Event]:
        size = self.header.size
        while True:
            at, rec = self.offset, self.record
            kind, payload = self._record()
            if kind in (b"W", b"Z"):
                h = hashlib.sha256(self.chain)
                h.update(_REC.pack(kind[0], len(payload)))
                h.update(payload)
                self.chain = h.digest()
                self.records += 1
                if kind == b"W" and len(payload) >= 8:
                    (offset,) = _U64.unpack_from(payload)
                    length = len(payload) - 8
                    event: Event = Data(offset, payload[8:])
                    self.bytes += length
                elif kind == b"Z" and len(payload) == _ZERO.size:
                    offset, length = _ZERO.unpack(payload)
                    event = Zero(offset, length)
                else:
                    raise StreamError(f"record {rec}: malformed {kind!r} record", rec, at)
                if offset < self.position or offset + length > size:
                    raise StreamError(f"record {rec}: bytes {offset}..{offset + length} are "
                                      f"out of order or outside the volume", rec, at)
                self.position = offset + length
                yield event
            elif kind == b"C" and len(payload) == 40:
                (position,) = _U64.unpack_from(payload)
                self._match(payload[8:], rec, at)
                if position < self.position or position > size:
                    raise StreamError(f"record {rec}: checkpoint at {position} out of order",
                                      rec, at)
                self.position = position
                yield Checkpoint(position, self.chain)
            elif kind == b"E" and len(payload) == _END.size:
                position, chain, records, nbytes = _END.unpack(payload)
                self._match(chain, rec, at)
                if position != size:
                    raise StreamError(f"record {rec}: end record before the end", rec, at)
                self.position = size
                yield End(chain, records, nbytes)
                return
            else:
                raise StreamError(f"record {rec}: unexpected {kind!r} record", rec, at)

    def _match(self, chain: bytes, rec: int, at: int) -> None:
        if chain != self.chain:
            raise StreamError(f"record {rec} at stream byte {at}: digest mismatch (records "
                              "lost, repeated or altered since the last checkpoint)", rec, at)
