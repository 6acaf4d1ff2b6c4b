"""The NBD wire protocol as pure data: constants, struct layouts, parsers and builders.

Owns: every NBD magic number, flag, option, reply, command and error value the gateway
uses (names as in the NBD spec, doc/proto.md of the reference implementation), the
parsers of option payloads (NBD_OPT_GO/INFO, NBD_OPT_*_META_CONTEXT) and request headers,
the builders of option replies, simple replies and structured reply chunks, and the
metadata-context query matching rules (base:, qemu:allocation-depth, qemu:dirty-bitmap:).

Nothing here does I/O or knows about csnap: :mod:`csnap_nbd.server` drives a socket with
these helpers and :mod:`csnap_nbd.exports` answers the questions. Keeping the byte layout
in one pure module makes it testable without sockets and keeps the server readable.

All integers on the wire are big-endian ("network byte order").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# ---------------------------------------------------------------------------- handshake
NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0  # handshake flags (server)
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0  # client flags
FLAG_C_NO_ZEROES = 1 << 1
KNOWN_CLIENT_FLAGS = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES

# options
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_PEEK_EXPORT = 4
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

# option replies
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = 2**31 + 1
REP_ERR_POLICY = 2**31 + 2
REP_ERR_INVALID = 2**31 + 3
REP_ERR_PLATFORM = 2**31 + 4
REP_ERR_TLS_REQD = 2**31 + 5
REP_ERR_UNKNOWN = 2**31 + 6
REP_ERR_SHUTDOWN = 2**31 + 7
REP_ERR_BLOCK_SIZE_REQD = 2**31 + 8
REP_ERR_TOO_BIG = 2**31 + 9

# NBD_REP_INFO types
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# transmission flags
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8

# ---------------------------------------------------------------------------- transmission
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = 2**15 + 1
REPLY_TYPE_ERROR_OFFSET = 2**15 + 2

# error values (the spec's restricted errno set)
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

# base:allocation flags
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1
# qemu:dirty-bitmap:NAME flags
STATE_DIRTY = 1 << 0

# metadata context names
BASE_ALLOCATION = "base:allocation"
ALLOCATION_DEPTH = "qemu:allocation-depth"
DIRTY_BITMAP_PREFIX = "qemu:dirty-bitmap:"

MAX_STRING = 4096  # longest string (export name, query, message) the spec allows
MAX_OPTION_DATA = 64 * 1024  # longer option payloads are refused (and skipped)

# struct layouts
HANDSHAKE = struct.Struct(">QQH")
OPTION_HEADER = struct.Struct(">QII")  # magic, option, length
OPTION_REPLY_HEADER = struct.Struct(">QIII")  # magic, option, reply type, length
REQUEST_HEADER = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, cookie
STRUCTURED_HEADER = struct.Struct(">IHHQI")  # magic, flags, type, cookie, length
EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, transmission flags
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")


class OptionError(Exception):
    """An option the server answers with an NBD_REP_ERR_* reply (``code``) and ``text``."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


# ---------------------------------------------------------------------------- parsing


def _take_string(data: bytes, pos: int, length: int, what: str) -> tuple[str, int]:
    """Decode ``length`` bytes of UTF-8 at ``pos``; raises REP_ERR_INVALID if malformed."""
    if length > MAX_STRING or pos + length > len(data):
        raise OptionError(REP_ERR_INVALID, f"{what} length {length} is invalid")
    raw = data[pos:pos + length]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OptionError(REP_ERR_INVALID, f"{what} is not valid UTF-8") from None
    if "\0" in text:
        raise OptionError(REP_ERR_INVALID, f"{what} contains NUL")
    return text, pos + length


@dataclass(frozen=True, slots=True)
class InfoRequest:
    """A parsed NBD_OPT_INFO / NBD_OPT_GO payload."""

    name: str
    requests: tuple[int, ...]


def parse_info_request(data: bytes) -> InfoRequest:
    """Parse ``u32 namelen, name, u16 n, u16 * n`` (NBD_OPT_INFO and NBD_OPT_GO)."""
    if len(data) < 6:
        raise OptionError(REP_ERR_INVALID, "option data too short")
    (namelen,) = U32.unpack_from(data, 0)
    if namelen > len(data) - 6:
        raise OptionError(REP_ERR_INVALID, "export name length exceeds the option data")
    name, pos = _take_string(data, 4, namelen, "export name")
    (count,) = U16.unpack_from(data, pos)
    pos += 2
    if len(data) != pos + 2 * count:
        raise OptionError(REP_ERR_INVALID, "information request list has the wrong length")
    reqs = struct.unpack_from(f">{count}H", data, pos)
    return InfoRequest(name, tuple(reqs))


@dataclass(frozen=True, slots=True)
class MetaContextRequest:
    """A parsed NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT payload."""

    name: str
    queries: tuple[str, ...]


def parse_meta_context_request(data: bytes) -> MetaContextRequest:
    """Parse ``u32 namelen, name, u32 nqueries, (u32 len, query) * n``."""
    if len(data) < 8:
        raise OptionError(REP_ERR_INVALID, "option data too short")
    (namelen,) = U32.unpack_from(data, 0)
    name, pos = _take_string(data, 4, namelen, "export name")
    if pos + 4 > len(data):
        raise OptionError(REP_ERR_INVALID, "missing query count")
    (count,) = U32.unpack_from(data, pos)
    pos += 4
    queries = []
    for _ in range(count):
        if pos + 4 > len(data):
            raise OptionError(REP_ERR_INVALID, "query list truncated")
        (qlen,) = U32.unpack_from(data, pos)
        query, pos = _take_string(data, pos + 4, qlen, "query")
        queries.append(query)
    if pos != len(data):
        raise OptionError(REP_ERR_INVALID, "trailing bytes after the queries")
    return MetaContextRequest(name, tuple(queries))


def match_contexts(available: list[str], queries: tuple[str, ...], *, listing: bool
                   ) -> list[str]:
    """The contexts of ``available`` selected by ``queries`` (no duplicates, in order).

    Listing (NBD_OPT_LIST_META_CONTEXT): no query lists everything; ``base:`` lists the
    base namespace, ``qemu:`` every qemu context and ``qemu:dirty-bitmap:`` every bitmap
    (QEMU's wildcard conventions). Setting: only exact names select. Queries in unknown
    namespaces are ignored, as the spec requires.
    """
    if listing and not queries:
        return list(available)
    chosen: list[str] = []
    for query in queries:
        for ctx in available:
            if ctx in chosen:
                continue
            if ctx == query:
                chosen.append(ctx)
            elif listing and query in ("base:", "qemu:", DIRTY_BITMAP_PREFIX) \
                    and ctx.startswith(query):
                chosen.append(ctx)
    return chosen


@dataclass(frozen=True, slots=True)
class Request:
    """One transmission-phase request header."""

    flags: int
    type: int
    cookie: int
    offset: int
    length: int


def parse_request(header: bytes) -> Request:
    """Decode a 28-byte request header; raises ValueError on a bad magic (fatal)."""
    magic, flags, typ, cookie, offset, length = REQUEST_HEADER.unpack(header)
    if magic != REQUEST_MAGIC:
        raise ValueError(f"bad request magic {magic:#x}")
    return Request(flags, typ, cookie, offset, length)


# ---------------------------------------------------------------------------- building


def handshake() -> bytes:
    """The server's greeting: NBDMAGIC, IHAVEOPT, handshake flags."""
    return HANDSHAKE.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    """One fixed-newstyle option reply packet."""
    return OPTION_REPLY_HEADER.pack(OPT_REPLY_MAGIC, option, reply, len(data)) + data


def option_error(option: int, code: int, text: str) -> bytes:
    """An NBD_REP_ERR_* reply carrying a human-readable message."""
    return option_reply(option, code, text.encode("utf-8")[:MAX_STRING])


def rep_server(option: int, name: str, description: str = "") -> bytes:
    """NBD_REP_SERVER: one export in an NBD_OPT_LIST answer."""
    raw = name.encode("utf-8")
    return option_reply(option, REP_SERVER, U32.pack(len(raw)) + raw
                        + description.encode("utf-8"))


def info_export(option: int, size: int, flags: int) -> bytes:
    """NBD_REP_INFO / NBD_INFO_EXPORT: size and transmission flags."""
    return option_reply(option, REP_INFO, struct.pack(">HQH", INFO_EXPORT, size, flags))


def info_string(option: int, info_type: int, text: str) -> bytes:
    """NBD_REP_INFO carrying NBD_INFO_NAME or NBD_INFO_DESCRIPTION."""
    return option_reply(option, REP_INFO, U16.pack(info_type) + text.encode("utf-8"))


def info_block_size(option: int, minimum: int, preferred: int, maximum: int) -> bytes:
    """NBD_REP_INFO / NBD_INFO_BLOCK_SIZE."""
    return option_reply(option, REP_INFO,
                        struct.pack(">HIII", INFO_BLOCK_SIZE, minimum, preferred, maximum))


def rep_meta_context(option: int, context_id: int, name: str) -> bytes:
    """NBD_REP_META_CONTEXT: one (selected or listed) metadata context."""
    return option_reply(option, REP_META_CONTEXT, U32.pack(context_id) + name.encode("utf-8"))


def export_name_reply(size: int, flags: int, no_zeroes: bool) -> bytes:
    """The answer to NBD_OPT_EXPORT_NAME (no reply header; 124 zeroes unless NO_ZEROES)."""
    return EXPORT_NAME_REPLY.pack(size, flags) + (b"" if no_zeroes else bytes(124))


def simple_reply(cookie: int, error: int = 0) -> bytes:
    """A simple reply header (the data of a successful read follows it)."""
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def chunk_header(cookie: int, flags: int, reply_type: int, length: int) -> bytes:
    """A structured reply chunk header (payload of ``length`` bytes follows)."""
    return STRUCTURED_HEADER.pack(STRUCTURED_REPLY_MAGIC, flags, reply_type, cookie, length)


def chunk_none(cookie: int) -> bytes:
    """NBD_REPLY_TYPE_NONE with DONE: the request succeeded."""
    return chunk_header(cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0)


def chunk_data_header(cookie: int, offset: int, length: int, done: bool = True) -> bytes:
    """Header + offset of an NBD_REPLY_TYPE_OFFSET_DATA chunk; ``length`` data bytes follow."""
    flags = REPLY_FLAG_DONE if done else 0
    return chunk_header(cookie, flags, REPLY_TYPE_OFFSET_DATA, 8 + length) + U64.pack(offset)


#: Bytes in front of the data of a successful READ's reply: simple, structured.
SIMPLE_DATA_HEADER = SIMPLE_REPLY.size
STRUCTURED_DATA_HEADER = STRUCTURED_HEADER.size + U64.size


def read_reply_size(length: int, structured: bool) -> int:
    """Bytes of the reply to a successful READ of ``length`` bytes (header + data)."""
    return (STRUCTURED_DATA_HEADER if structured else SIMPLE_DATA_HEADER) + length


def read_reply_buffer(cookie: int, offset: int, length: int, structured: bool,
                      buf: bytearray | None = None) -> tuple[bytearray, memoryview]:
    """The whole reply to a successful READ of ``length`` (> 0) bytes, header filled in:
    ``(reply, data)`` where ``data`` is the view of ``reply`` the caller reads into.

    One buffer for header and data lets the server read straight into what it sends and
    send it with one write (no ``bytes`` copy of the data, no separate header write).
    ``buf`` (of :func:`read_reply_size` bytes) is reused instead of a new buffer: its
    header is rewritten here, its data must be overwritten whole by the caller.
    """
    if buf is None:
        buf = bytearray(read_reply_size(length, structured))
    assert len(buf) == read_reply_size(length, structured)
    if structured:
        STRUCTURED_HEADER.pack_into(buf, 0, STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                    REPLY_TYPE_OFFSET_DATA, cookie, 8 + length)
        U64.pack_into(buf, STRUCTURED_HEADER.size, offset)
        return buf, memoryview(buf)[STRUCTURED_DATA_HEADER:]
    SIMPLE_REPLY.pack_into(buf, 0, SIMPLE_REPLY_MAGIC, 0, cookie)
    return buf, memoryview(buf)[SIMPLE_DATA_HEADER:]


def chunk_error(cookie: int, error: int, message: str = "") -> bytes:
    """NBD_REPLY_TYPE_ERROR with DONE (the request failed with ``error``)."""
    msg = message.encode("utf-8")[:1024]
    payload = U32.pack(error) + U16.pack(len(msg)) + msg
    return chunk_header(cookie, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, len(payload)) + payload


def chunk_block_status(cookie: int, context_id: int, extents: list[tuple[int, int]],
                       done: bool) -> bytes:
    """NBD_REPLY_TYPE_BLOCK_STATUS for one context: ``[(length, flags), ...]``."""
    payload = U32.pack(context_id) + b"".join(struct.pack(">II", n, f) for n, f in extents)
    flags = REPLY_FLAG_DONE if done else 0
    return chunk_header(cookie, flags, REPLY_TYPE_BLOCK_STATUS, len(payload)) + payload


def merge_extents(extents: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join neighbouring extents with equal flags (the spec asks for distinct neighbours)."""
    out: list[tuple[int, int]] = []
    for length, flags in extents:
        if length <= 0:
            continue
        if out and out[-1][1] == flags:
            out[-1] = (out[-1][0] + length, flags)
        else:
            out.append((length, flags))
    return out
