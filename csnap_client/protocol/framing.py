"""Frame layer: a sans-IO object that turns a byte stream into messages and back.

Owns: the frame format and its limits. A frame is::

    +----------------------------+-----------------------------------+
    | length: uint32 big-endian  | payload: `length` bytes, msgpack  |
    +----------------------------+-----------------------------------+

The payload must be exactly one msgpack map (no trailing bytes, no ext types, map keys
str or bin). ``1 <= length <= max_frame_size`` (default 1 MiB).

Invariants:
  * the declared length is checked as soon as the 4 header bytes are present, before any of
    the body is waited for or decoded, so an oversize frame costs no memory;
  * every failure to parse raises :class:`FramingError` and nothing else; after that the
    Framer is poisoned (every later call raises the same error) because the stream position
    is lost: the connection must be closed;
  * buffer work is linear: received bytes are appended to one bytearray and consumed by an
    offset; consumed space is reclaimed when the offset passes half the buffer.

Usage (the I/O layer owns the socket; this object never sees one)::

    framer = Framer()
    framer.feed(data)
    for msg in framer.messages():
        handle(msg)
    transport.write(Framer.encode(reply))

Must not import: asyncio, socket, csnapd. Only stdlib + msgpack.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import msgpack

from .errors import ErrorCode, FramingError, LocalProtocolError

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 4

DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB: limit for frames sent to the server
MAX_SERVER_FRAME = 2 << 20  # 2 MiB: limit clients should accept from the server (see docs)
_COMPACT_MIN = 64 * 1024  # don't bother reclaiming consumed space below this many bytes

Message = dict[str, Any]


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


NEED_DATA = _Sentinel.NEED_DATA
"""Returned by :meth:`Framer.next_message` when no complete frame is buffered yet."""


def encode(msg: Message, max_frame_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """Encode one message as a frame (header + msgpack payload).

    Raises :class:`LocalProtocolError` if ``msg`` is not a dict, holds a value msgpack cannot
    encode, or encodes to more than ``max_frame_size`` bytes: all are bugs on our side.
    """
    if type(msg) is not dict:
        raise LocalProtocolError(f"a message must be a dict, not {type(msg).__name__}")
    try:
        payload = msgpack.packb(msg, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode message: {exc}") from exc
    if len(payload) > max_frame_size:
        raise LocalProtocolError(f"frame of {len(payload)} bytes exceeds {max_frame_size}")
    return HEADER.pack(len(payload)) + payload


def encode_many(msgs: Iterable[Message], max_frame_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """Encode several messages into one bytes object (one joined write for many replies)."""
    return b"".join([encode(m, max_frame_size) for m in msgs])


def _decode(payload: bytearray) -> Message:
    """Decode one frame payload into a map, or raise FramingError."""
    try:
        # unpackb already bounds max_{str,bin,array,map}_len by len(payload), i.e. by the
        # frame size; ext types are not part of the protocol, so max_ext_len=0 rejects them.
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True,
                              max_ext_len=0)
    except Exception as exc:  # msgpack raises many types on garbage; all mean "bad frame"
        raise FramingError(f"frame payload is not valid msgpack: {exc!r}") from None
    if type(msg) is not dict:
        raise FramingError(f"frame payload is a {type(msg).__name__}, not a map")
    return msg


class Framer:
    """Incremental frame decoder (one per connection and direction). Sans-IO.

    ``feed`` bytes as they arrive; take messages with ``next_message`` (one at a time, returns
    :data:`NEED_DATA` when nothing complete is buffered), ``messages()`` (iterate over all
    complete ones) or ``feed_many`` (feed and return them as a list, the fastest path).
    """

    __slots__ = ("_buf", "_off", "_max", "_error")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME) -> None:
        if not 1 <= max_frame_size <= 0xFFFFFFFF:
            raise LocalProtocolError(f"max_frame_size {max_frame_size} out of range")
        self._buf = bytearray()
        self._off = 0
        self._max = max_frame_size
        self._error: FramingError | None = None

    @property
    def max_frame_size(self) -> int:
        """Largest accepted payload length in bytes."""
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages (non-zero at EOF = truncated frame)."""
        return len(self._buf) - self._off

    encode = staticmethod(encode)
    encode_many = staticmethod(encode_many)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. Raises the stored FramingError if the stream already failed."""
        if self._error is not None:
            raise self._error
        self._buf += data

    def next_message(self) -> Message | Literal[_Sentinel.NEED_DATA]:
        """Return the next complete message, or NEED_DATA. Raises FramingError on bad input."""
        if self._error is not None:
            raise self._error
        buf, off = self._buf, self._off
        avail = len(buf) - off
        if avail < HEADER_SIZE:
            return NEED_DATA
        (length,) = HEADER.unpack_from(buf, off)
        if length == 0 or length > self._max:
            self._fail_length(length)
        end = off + HEADER_SIZE + length
        if end > len(buf):
            return NEED_DATA
        payload = buf[off + HEADER_SIZE:end]
        self._off = end
        try:
            msg = _decode(payload)
        except FramingError as exc:
            self._error = exc
            raise
        self._reclaim()
        return msg

    def messages(self) -> Iterator[Message]:
        """Yield every complete buffered message; stop at NEED_DATA. Raises FramingError."""
        while True:
            msg = self.next_message()
            if msg is NEED_DATA:
                return
            yield msg

    def feed_many(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Feed ``data`` and return all messages now complete, in order (the hot path).

        On a framing error, messages decoded before the bad frame are lost with the
        connection; the error is raised.
        """
        self.feed(data)
        buf, off, limit = self._buf, self._off, self._max
        end_of_data = len(buf)
        out: list[Message] = []
        unpack_from = HEADER.unpack_from
        while end_of_data - off >= HEADER_SIZE:
            (length,) = unpack_from(buf, off)
            if length == 0 or length > limit:
                self._off = off
                self._fail_length(length)
            end = off + HEADER_SIZE + length
            if end > end_of_data:
                break
            try:
                out.append(_decode(buf[off + HEADER_SIZE:end]))
            except FramingError as exc:
                self._error = exc
                raise
            off = end
        self._off = off
        self._reclaim()
        return out

    def _fail_length(self, length: int) -> None:
        """Poison the framer for a zero or oversize declared length and raise."""
        if length == 0:
            exc = FramingError("zero-length frame", ErrorCode.BAD_REQUEST)
        else:
            exc = FramingError(f"declared frame length {length} exceeds {self._max}",
                               ErrorCode.LIMIT_EXCEEDED)
        self._error = exc
        raise exc

    def _reclaim(self) -> None:
        """Drop consumed bytes: at once when all is consumed, else when past half the buffer."""
        off = self._off
        if off == len(self._buf):
            self._buf.clear()
            self._off = 0
        elif off >= _COMPACT_MIN and off * 2 >= len(self._buf):
            del self._buf[:off]
            self._off = 0
