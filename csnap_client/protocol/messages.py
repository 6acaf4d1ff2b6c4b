"""The message catalogue as data, its validator, builders and range helpers.

Owns: every op name, who sends it, on which socket, its required and optional fields with
their wire types, and which replies it can get (``CATALOGUE``); ``validate`` which checks a
decoded message against it; one builder per message; the range/mapping (de)compression.
docs/protocol.md is the prose version of this file and must be kept in step with it.

Invariants enforced by ``validate`` (everything else is the server's business):
  * a message is a dict with str keys, ``op`` a known op accepted on this socket, ``id`` a
    uint64; no fields other than the catalogue's, every required field present;
  * integers are ints (not bools) within their declared width; no negative values;
  * ranges are ``[[start, count], ...]``, sorted by start, non-overlapping, count >= 1,
    start + count <= 2**64, at most ``limits.max_ranges`` entries and ``limits.max_chunks``
    chunks in all (mappings ``[[chunk, count, store_chunk], ...]`` likewise).

Validation returns the same dict (no copy, no defaults filled in) so that checking a small
QUERY_WRITE costs a couple of microseconds.

Must not import: asyncio, socket, csnapd. Only stdlib + msgpack (via framing).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest, ErrorCode, LocalProtocolError, default_text

PROTOCOL_VERSION = 2
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1

MAX_RANGES = 1024  # entries in one request's ranges list
MAX_CHUNKS_PER_REQUEST = 65536  # chunks covered by one request's ranges
MAX_INFLIGHT = 256  # requests a client may have outstanding on one connection
MAX_READ_LOCKS = 1024  # read-lock ids (held locks) per connection
MAX_NAME_LEN = 255  # characters in a snapshot name
MAX_SAMPLES = 64  # origin sample ranges in IDENTIFY_OK.devices / VERIFY_AGAIN
MAX_SAMPLE_BYTES = 1 << 20  # bytes in one origin sample range
MAX_STORE_MARKS = 8  # [offset, bytes] entries in IDENTIFY_OK.devices.store
MAX_CHANGE_CHUNKS = 65536  # chunks one CHANGES reply covers at most (QUERY_CHANGES)
ORIGIN = "origin"  # the reserved volume name for the origin device

Message = dict[str, Any]


class Op(enum.StrEnum):
    """Every op name on the wire."""

    IDENTIFY = "IDENTIFY"
    IDENTIFY_OK = "IDENTIFY_OK"
    QUERY_WRITE = "QUERY_WRITE"
    WRITE_OK = "WRITE_OK"
    SNAPSHOT_WRITE_OK = "SNAPSHOT_WRITE_OK"
    QUERY_SNAPSHOT_READ = "QUERY_SNAPSHOT_READ"
    SNAPSHOT_READ_OK = "SNAPSHOT_READ_OK"
    FINISH_SNAPSHOT_READ = "FINISH_SNAPSHOT_READ"
    FINISH_OK = "FINISH_OK"
    DETACH = "DETACH"
    DETACH_OK = "DETACH_OK"
    PING = "PING"
    PONG = "PONG"
    ACK_ADVICE = "ACK_ADVICE"
    ACK_OK = "ACK_OK"
    CHALLENGE = "CHALLENGE"
    LIST_VOLUMES = "LIST_VOLUMES"
    VOLUMES = "VOLUMES"
    QUERY_MAP = "QUERY_MAP"
    MAP_OK = "MAP_OK"
    QUERY_CHANGES = "QUERY_CHANGES"
    CHANGES = "CHANGES"
    VERIFY_DEVICES = "VERIFY_DEVICES"
    VERIFY_OK = "VERIFY_OK"
    VERIFY_AGAIN = "VERIFY_AGAIN"
    ADVICE = "ADVICE"
    ERROR = "ERROR"
    CREATE_SNAPSHOT = "CREATE_SNAPSHOT"
    DELETE_SNAPSHOT = "DELETE_SNAPSHOT"
    LIST_SNAPSHOTS = "LIST_SNAPSHOTS"
    STATUS = "STATUS"
    SHUTDOWN = "SHUTDOWN"
    FORGET_CLIENT = "FORGET_CLIENT"
    HOLD_SNAPSHOT = "HOLD_SNAPSHOT"
    RELEASE_SNAPSHOT = "RELEASE_SNAPSHOT"
    SET_SNAPSHOT = "SET_SNAPSHOT"
    GROW = "GROW"
    REVERT_SNAPSHOT = "REVERT_SNAPSHOT"
    RESIZED = "RESIZED"
    OK = "OK"


class Direction(enum.StrEnum):
    """Who sends a message and on which socket."""

    CLIENT_TO_SERVER = "client->server"  # request on the TCP data connection
    SERVER_TO_CLIENT = "server->client"  # reply or notice on the TCP data connection
    CONTROL = "control"  # request on the unix control socket
    CONTROL_REPLY = "control-reply"  # reply on the control socket


class AdviceKind(enum.StrEnum):
    """Values of ADVICE.kind."""

    NEW_SNAPSHOT = "NEW_SNAPSHOT"
    DELETE_SNAPSHOT = "DELETE_SNAPSHOT"
    NEW_CLONE = "NEW_CLONE"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-request limits the validator enforces (defaults are the protocol's)."""

    max_ranges: int = MAX_RANGES
    max_chunks: int = MAX_CHUNKS_PER_REQUEST


DEFAULT_LIMITS = Limits()


class _Invalid(Exception):
    """Internal: a field failed its check. ``validate`` turns it into BadRequest."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


# ----------------------------------------------------------------------------------------
# Field types. Each is a checker ``(value, limits) -> None`` raising _Invalid, plus a name
# used in error text and docs.


@dataclass(frozen=True, slots=True)
class FieldType:
    """A wire type: its name (as used in docs/protocol.md) and its checker."""

    name: str
    check: Callable[[Any, Limits], None]


def _fail(what: str, code: int = ErrorCode.BAD_REQUEST) -> None:
    raise _Invalid(code, what)


def _check_uint64(v: Any, limits: Limits) -> None:
    if type(v) is not int or v < 0 or v > U64_MAX:
        _fail(f"expected uint64, got {_show(v)}")


def _check_request_id(v: Any, limits: Limits) -> None:
    if type(v) is not int or v < 1 or v > U64_MAX:
        _fail(f"expected request id (uint64 >= 1), got {_show(v)}")


def _check_uint32(v: Any, limits: Limits) -> None:
    if type(v) is not int or v < 0 or v > U32_MAX:
        _fail(f"expected uint32, got {_show(v)}")


def _check_int8(v: Any, limits: Limits) -> None:
    if type(v) is not int or not -128 <= v <= 127:
        _fail(f"expected int in [-128, 127], got {_show(v)}")


def _check_bool(v: Any, limits: Limits) -> None:
    if type(v) is not bool:
        _fail(f"expected bool, got {_show(v)}")


def _check_float(v: Any, limits: Limits) -> None:
    if type(v) is not float and type(v) is not int:
        _fail(f"expected float, got {_show(v)}")


def _check_str(v: Any, limits: Limits) -> None:
    if type(v) is not str:
        _fail(f"expected str, got {_show(v)}")


def _check_any(v: Any, limits: Limits) -> None:
    return None


def _check_bin(v: Any, limits: Limits) -> None:
    if type(v) is not bytes or len(v) > 1024:
        _fail("expected bytes (msgpack bin) of at most 1024 bytes")


def _check_auth(v: Any, limits: Limits) -> None:
    if type(v) is not dict or set(v) != {"cnonce", "mac"}:
        _fail("expected a map {cnonce: bin, mac: bin}")
    _check_bin(v["cnonce"], limits)
    _check_bin(v["mac"], limits)


def _check_map(v: Any, limits: Limits) -> None:
    if type(v) is not dict or any(type(k) is not str for k in v):
        _fail(f"expected map with str keys, got {_show(v)}")


def _check_name(v: Any, limits: Limits) -> None:
    if type(v) is not str or not 0 < len(v) <= MAX_NAME_LEN or v == ORIGIN:
        _fail(f"expected snapshot name (1..{MAX_NAME_LEN} chars, not 'origin'), got {_show(v)}")


def _check_snapshot_ref(v: Any, limits: Limits) -> None:
    if type(v) is int:
        _check_uint32(v, limits)
    else:
        _check_name(v, limits)


def _check_volume(v: Any, limits: Limits) -> None:
    if type(v) is str and v == ORIGIN:
        return
    _check_snapshot_ref(v, limits)


def _check_advice_kind(v: Any, limits: Limits) -> None:
    if type(v) is not str or v not in AdviceKind.__members__:
        _fail(f"expected advice kind {sorted(AdviceKind.__members__)}, got {_show(v)}")


def _check_snapshot_info(v: Any, limits: Limits) -> None:
    if v is None:
        return
    if type(v) is not dict or set(v) != {"name", "tag", "created"}:
        _fail(f"expected null or map {{name, tag, created}}, got {_show(v)}")
    _check_name(v["name"], limits)
    _check_uint32(v["tag"], limits)
    _check_float(v["created"], limits)


def _check_ranges(v: Any, limits: Limits) -> None:
    """Non-empty sorted, non-overlapping [[start, count], ...] within the limits."""
    _check_runs(v, limits, 2, limits.max_ranges, allow_empty=False)


def _check_chunk_list(v: Any, limits: Limits) -> None:
    """Like ranges but may be empty and may hold up to max_chunks entries (reply lists)."""
    _check_runs(v, limits, 2, limits.max_chunks, allow_empty=True)


def _check_mapping(v: Any, limits: Limits) -> None:
    """[[chunk, count, store_chunk], ...]: sorted by chunk, non-overlapping, may be empty."""
    _check_runs(v, limits, 3, limits.max_chunks, allow_empty=True)


def _check_runs(v: Any, limits: Limits, width: int, max_entries: int, allow_empty: bool) -> None:
    if type(v) is not list:
        _fail(f"expected a list of ranges, got {_show(v)}")
    if len(v) > max_entries:
        _fail(f"{len(v)} ranges exceed the limit of {max_entries}", ErrorCode.TOO_MANY_RANGES)
    if not v and not allow_empty:
        _fail("empty ranges list")
    prev_end = total = 0
    for run in v:
        if type(run) is not list or len(run) != width:
            _fail(f"expected a list of {width} ints, got {_show(run)}")
        start, count = run[0], run[1]
        if type(start) is not int or type(count) is not int or count < 1 or start < prev_end:
            _fail(f"bad range {_show(run)}: need ints, count >= 1, sorted, non-overlapping")
        prev_end = start + count
        total += count
        if width == 3:
            store = run[2]
            if type(store) is not int or store < 0 or store + count > U64_MAX + 1:
                _fail(f"bad store address in {_show(run)}")
    if prev_end > U64_MAX + 1:
        _fail("range extends beyond 2**64")
    if total > limits.max_chunks:
        _fail(f"{total} chunks exceed the limit of {limits.max_chunks}",
              ErrorCode.LIMIT_EXCEEDED)


def _check_samples(v: Any, limits: Limits) -> None:
    """Origin sample ranges: [[offset, length], ...], 0 < length <= MAX_SAMPLE_BYTES."""
    if type(v) is not list or len(v) > MAX_SAMPLES:
        _fail(f"expected a list of at most {MAX_SAMPLES} [offset, length] samples")
    for s in v:
        if (type(s) is not list or len(s) != 2 or type(s[0]) is not int
                or type(s[1]) is not int or not 0 <= s[0] <= U64_MAX
                or not 0 < s[1] <= MAX_SAMPLE_BYTES or s[0] + s[1] > U64_MAX + 1):
            _fail(f"bad sample {_show(s)}: need [offset, length], "
                  f"0 < length <= {MAX_SAMPLE_BYTES}")


def _check_crc_list(v: Any, limits: Limits) -> None:
    if type(v) is not list or len(v) > MAX_SAMPLES:
        _fail(f"expected a list of at most {MAX_SAMPLES} uint32 checksums")
    for crc in v:
        _check_uint32(crc, limits)


def _check_devices(v: Any, limits: Limits) -> None:
    """IDENTIFY_OK.devices: {store: [[offset, bin], ...], store_bytes, origin: samples}."""
    if type(v) is not dict or set(v) != {"store", "store_bytes", "origin"}:
        _fail("expected a map {store, store_bytes, origin}")
    marks = v["store"]
    if type(marks) is not list or len(marks) > MAX_STORE_MARKS:
        _fail(f"devices.store: expected a list of at most {MAX_STORE_MARKS} [offset, bin]")
    for mark in marks:
        if type(mark) is not list or len(mark) != 2:
            _fail(f"devices.store: bad entry {_show(mark)}")
        _check_uint64(mark[0], limits)
        _check_bin(mark[1], limits)
        if not mark[1]:
            _fail("devices.store: empty byte string")
    _check_uint64(v["store_bytes"], limits)
    _check_samples(v["origin"], limits)


def _check_base(v: Any, limits: Limits) -> None:
    """QUERY_CHANGES.base: nil (compare with nothing), "origin", or a snapshot-ref."""
    if v is not None:
        _check_volume(v, limits)


def _check_opt_uint64(v: Any, limits: Limits) -> None:
    if v is not None:
        _check_uint64(v, limits)


def _show(v: Any) -> str:
    """Short, safe rendering of a peer-supplied value for error text."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


UINT64 = FieldType("uint64", _check_uint64)
REQUEST_ID = FieldType("request-id", _check_request_id)
UINT32 = FieldType("uint32", _check_uint32)
INT8 = FieldType("int8", _check_int8)
BOOL = FieldType("bool", _check_bool)
FLOAT = FieldType("float", _check_float)
STR = FieldType("str", _check_str)
ANY = FieldType("any", _check_any)
MAP = FieldType("map", _check_map)
BIN = FieldType("bin", _check_bin)
AUTH = FieldType("auth", _check_auth)
NAME = FieldType("snapshot-name", _check_name)
SNAPSHOT_REF = FieldType("snapshot-name | uint32-tag", _check_snapshot_ref)
VOLUME = FieldType('"origin" | snapshot-name | uint32-tag', _check_volume)
ADVICE_KIND = FieldType("advice-kind", _check_advice_kind)
SNAPSHOT_INFO = FieldType("null | snapshot-info", _check_snapshot_info)
RANGES = FieldType("ranges", _check_ranges)
CHUNK_LIST = FieldType("chunk-list", _check_chunk_list)
MAPPING = FieldType("mapping", _check_mapping)
SAMPLES = FieldType("samples", _check_samples)
CRC_LIST = FieldType("crc-list", _check_crc_list)
DEVICES = FieldType("devices", _check_devices)
BASE = FieldType('nil | "origin" | snapshot-name | uint32-tag', _check_base)
OPT_UINT64 = FieldType("nil | uint64", _check_opt_uint64)


# ----------------------------------------------------------------------------------------
# The catalogue.


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One op: its direction, fields (besides ``op``) and the ops that may answer it."""

    op: str
    direction: Direction
    required: dict[str, FieldType]
    optional: dict[str, FieldType]
    replies: tuple[str, ...]
    checks: tuple[tuple[str, Callable[[Any, Limits], None], bool], ...]
    fields: frozenset[str]


def _spec(op: Op, direction: Direction, required: dict[str, FieldType],
          optional: dict[str, FieldType] | None = None, replies: tuple[str, ...] = ()) -> OpSpec:
    """Build an OpSpec; every message gets the ``id`` field first (>= 1 in requests)."""
    is_request = direction in (Direction.CLIENT_TO_SERVER, Direction.CONTROL)
    required = {"id": REQUEST_ID if is_request else UINT64, **required}
    optional = optional or {}
    checks = tuple((n, t.check, True) for n, t in required.items())
    checks += tuple((n, t.check, False) for n, t in optional.items())
    fields = frozenset({"op", *required, *optional})
    return OpSpec(str(op), direction, required, optional, replies, checks, fields)


_C2S, _S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
_CTL, _CTLR = Direction.CONTROL, Direction.CONTROL_REPLY
_E = Op.ERROR

_SPECS = (
    _spec(Op.IDENTIFY, _C2S, {"client_id": UINT64, "volume": VOLUME, "version": UINT32},
          {"auth": AUTH, "read_only": BOOL, "clean": BOOL}, replies=(Op.IDENTIFY_OK, _E)),
    _spec(Op.IDENTIFY_OK, _S2C, {
        "version": UINT32, "chunk_size": UINT32, "origin_chunks": UINT64,
        "origin_bytes": UINT64, "store_uuid": STR, "server_epoch": UINT64, "lease_ms": UINT32,
        "snapshot": SNAPSHOT_INFO, "read_only": BOOL},
          {"limits": MAP, "auth": BIN, "devices": DEVICES}),
    _spec(Op.CHALLENGE, _S2C, {"nonce": BIN}),
    _spec(Op.QUERY_WRITE, _C2S, {"ranges": RANGES},
          replies=(Op.WRITE_OK, Op.SNAPSHOT_WRITE_OK, _E)),
    _spec(Op.WRITE_OK, _S2C, {}),
    _spec(Op.SNAPSHOT_WRITE_OK, _S2C, {"map": MAPPING}),
    _spec(Op.QUERY_SNAPSHOT_READ, _C2S, {"ranges": RANGES}, replies=(Op.SNAPSHOT_READ_OK, _E)),
    _spec(Op.SNAPSHOT_READ_OK, _S2C, {"origin": CHUNK_LIST, "store": MAPPING,
                                       "lease_ms": UINT32}),
    _spec(Op.FINISH_SNAPSHOT_READ, _C2S, {"lock": UINT64}, {"ranges": RANGES},
          replies=(Op.FINISH_OK, _E)),
    _spec(Op.FINISH_OK, _S2C, {"valid": BOOL}),
    _spec(Op.DETACH, _C2S, {}, replies=(Op.DETACH_OK, _E)),
    _spec(Op.DETACH_OK, _S2C, {}),
    _spec(Op.PING, _C2S, {}, replies=(Op.PONG, _E)),
    _spec(Op.PONG, _S2C, {}),
    _spec(Op.ACK_ADVICE, _C2S, {"advice": UINT64}, replies=(Op.ACK_OK, _E)),
    _spec(Op.ACK_OK, _S2C, {}),
    _spec(Op.LIST_VOLUMES, _C2S, {}, replies=(Op.VOLUMES, _E)),
    _spec(Op.VOLUMES, _S2C, {"snapshots": ANY}),
    _spec(Op.QUERY_MAP, _C2S, {"ranges": RANGES}, replies=(Op.MAP_OK, _E)),
    _spec(Op.MAP_OK, _S2C, {"store": MAPPING}),
    _spec(Op.QUERY_CHANGES, _C2S, {"base": BASE, "start": UINT64},
          {"count": UINT64, "max_chunks": UINT32}, replies=(Op.CHANGES, _E)),
    _spec(Op.CHANGES, _S2C, {"ranges": CHUNK_LIST, "next": OPT_UINT64}),
    _spec(Op.VERIFY_DEVICES, _C2S, {"origin": CRC_LIST},
          replies=(Op.VERIFY_OK, Op.VERIFY_AGAIN, _E)),
    _spec(Op.VERIFY_OK, _S2C, {}),
    _spec(Op.VERIFY_AGAIN, _S2C, {"origin": SAMPLES, "differ": UINT32}),
    _spec(Op.ADVICE, _S2C, {"advice": UINT64, "kind": ADVICE_KIND, "snapshot": NAME,
                            "lease_ms": UINT32}),
    _spec(Op.ERROR, _S2C, {"code": UINT32, "message": STR}, {"leader": STR}),
    _spec(Op.CREATE_SNAPSHOT, _CTL, {"name": NAME}, {"tag": UINT32, "priority": INT8,
                                                     "from": SNAPSHOT_REF},
          replies=(Op.OK, _E)),
    _spec(Op.DELETE_SNAPSHOT, _CTL, {"snapshot": SNAPSHOT_REF}, replies=(Op.OK, _E)),
    _spec(Op.LIST_SNAPSHOTS, _CTL, {}, replies=(Op.OK, _E)),
    _spec(Op.STATUS, _CTL, {}, replies=(Op.OK, _E)),
    _spec(Op.SHUTDOWN, _CTL, {}, replies=(Op.OK, _E)),
    _spec(Op.FORGET_CLIENT, _CTL, {"client_id": UINT64}, replies=(Op.OK, _E)),
    _spec(Op.HOLD_SNAPSHOT, _CTL, {"snapshot": SNAPSHOT_REF}, replies=(Op.OK, _E)),
    _spec(Op.RELEASE_SNAPSHOT, _CTL, {"snapshot": SNAPSHOT_REF}, replies=(Op.OK, _E)),
    _spec(Op.SET_SNAPSHOT, _CTL, {"snapshot": SNAPSHOT_REF}, {"name": NAME, "priority": INT8},
          replies=(Op.OK, _E)),
    _spec(Op.REVERT_SNAPSHOT, _CTL, {"snapshot": SNAPSHOT_REF}, replies=(Op.OK, _E)),
    _spec(Op.GROW, _CTL, {}, {"store": BOOL, "origin": BOOL, "store_bytes": UINT64,
                              "origin_bytes": UINT64}, replies=(Op.OK, _E)),
    _spec(Op.RESIZED, _S2C, {"origin_chunks": UINT64, "origin_bytes": UINT64}),
    _spec(Op.OK, _CTLR, {"result": ANY}),
)

CATALOGUE: dict[str, OpSpec] = {s.op: s for s in _SPECS}
assert set(CATALOGUE) == set(Op), "every Op needs exactly one spec"


def _ops(*directions: Direction) -> frozenset[str]:
    return frozenset(s.op for s in _SPECS if s.direction in directions)


CLIENT_REQUESTS = _ops(_C2S)  # what the server accepts on a TCP data connection
SERVER_MESSAGES = _ops(_S2C)  # what a client accepts on a TCP data connection
CONTROL_REQUESTS = _ops(_CTL)  # what the server accepts on the control socket
CONTROL_REPLIES = _ops(_CTLR) | {Op.ERROR.value}  # what a control client accepts


# ----------------------------------------------------------------------------------------
# Validation.


def validate(msg: Any, accept: frozenset[str] | None = None,
             limits: Limits = DEFAULT_LIMITS) -> Message:
    """Check a decoded message against the catalogue and return it unchanged.

    ``accept`` restricts the ops allowed (e.g. ``CLIENT_REQUESTS`` on the server's data
    socket); an op outside it is UNKNOWN_OP like an op that does not exist. Raises
    :class:`BadRequest` (code, reason, request_id) on any problem, never anything else.
    """
    if type(msg) is not dict:
        raise BadRequest(ErrorCode.BAD_REQUEST, f"message is not a map: {_show(msg)}")
    rid = msg.get("id")
    request_id = rid if type(rid) is int and 0 <= rid <= U64_MAX else 0
    op = msg.get("op")
    spec = CATALOGUE.get(op) if type(op) is str else None
    if spec is None or (accept is not None and op not in accept):
        raise BadRequest(ErrorCode.UNKNOWN_OP, f"unknown op {_show(op)}", request_id)
    if not spec.fields.issuperset(msg):
        extra = ", ".join(sorted(_show(k) for k in msg if k not in spec.fields))
        raise BadRequest(ErrorCode.BAD_REQUEST, f"{op}: unknown fields {extra}", request_id)
    name = ""
    try:
        for name, check, required in spec.checks:
            if name in msg:
                check(msg[name], limits)
            elif required:
                _fail("missing")
    except _Invalid as exc:
        reason = f"{op}: field {name!r}: {exc.reason}"
        raise BadRequest(exc.code, reason, request_id) from None
    return msg


# ----------------------------------------------------------------------------------------
# Builders: one per message, no validation (tests validate every one of them).


def identify(id: int, client_id: int, volume: str | int,
             version: int = PROTOCOL_VERSION, auth: dict[str, bytes] | None = None,
             read_only: bool = False, clean: bool = False) -> Message:
    """IDENTIFY: the first request on every data connection (``auth`` when challenged).

    ``read_only`` asks for an identity that can never write: every QUERY_WRITE on
    the connection is refused with READ_ONLY.  ``clean`` says the client holds no
    approvals or store addresses from earlier connections and has no write in
    flight based on them, so the server may forget its grants.
    """
    msg: Message = {"op": "IDENTIFY", "id": id, "client_id": client_id, "volume": volume,
                    "version": version}
    if auth is not None:
        msg["auth"] = auth
    if read_only:
        msg["read_only"] = True
    if clean:
        msg["clean"] = True
    return msg


def challenge(nonce: bytes) -> Message:
    """CHALLENGE: sent by a server that requires authentication, before anything else."""
    return {"op": "CHALLENGE", "id": 0, "nonce": nonce}


def identify_ok(id: int, *, chunk_size: int, origin_chunks: int, origin_bytes: int,
                store_uuid: str, server_epoch: int, lease_ms: int,
                snapshot: dict[str, Any] | None = None, read_only: bool = False,
                version: int = PROTOCOL_VERSION, limits: dict[str, Any] | None = None,
                devices: dict[str, Any] | None = None) -> Message:
    """IDENTIFY_OK: the server's description of the volume and session.

    ``devices`` (see :func:`devices_info`) tells the client how to check that the
    devices it opened are the server's.
    """
    msg = {"op": "IDENTIFY_OK", "id": id, "version": version, "chunk_size": chunk_size,
           "origin_chunks": origin_chunks, "origin_bytes": origin_bytes,
           "store_uuid": store_uuid, "server_epoch": server_epoch, "lease_ms": lease_ms,
           "snapshot": snapshot, "read_only": read_only}
    if limits is not None:
        msg["limits"] = limits
    if devices is not None:
        msg["devices"] = devices
    return msg


def devices_info(store: list[list[Any]], store_bytes: int,
                 origin: list[list[int]]) -> dict[str, Any]:
    """The ``devices`` map of IDENTIFY_OK.

    ``store``: ``[[offset, bytes], ...]``, byte strings the client's store device must hold
    at those offsets (a match of any one entry passes: each superblock slot holds the
    store UUID, and one slot may be torn); ``store_bytes``: the store device's size;
    ``origin``: ``[[offset, length], ...]`` sample ranges whose CRC32C the client sends
    back in VERIFY_DEVICES.
    """
    return {"store": store, "store_bytes": store_bytes, "origin": origin}


def verify_devices(id: int, origin: list[int]) -> Message:
    """VERIFY_DEVICES: CRC32C of each origin sample range the server asked for, in order."""
    return {"op": "VERIFY_DEVICES", "id": id, "origin": origin}


def verify_ok(id: int) -> Message:
    """VERIFY_OK: the client's origin matched the server's in every sample."""
    return {"op": "VERIFY_OK", "id": id}


def verify_again(id: int, origin: list[list[int]], differ: int) -> Message:
    """VERIFY_AGAIN: ``differ`` samples did not match (perhaps live writes); check these
    fresh ``origin`` samples and send VERIFY_DEVICES again."""
    return {"op": "VERIFY_AGAIN", "id": id, "origin": origin, "differ": differ}


def snapshot_info(name: str, tag: int, created: float) -> dict[str, Any]:
    """The ``snapshot`` map of IDENTIFY_OK."""
    return {"name": name, "tag": tag, "created": created}


def query_write(id: int, ranges: list[list[int]]) -> Message:
    """QUERY_WRITE: ask permission to write these chunks."""
    return {"op": "QUERY_WRITE", "id": id, "ranges": ranges}


def write_ok(id: int) -> Message:
    """WRITE_OK: origin client may write the queried chunks."""
    return {"op": "WRITE_OK", "id": id}


def snapshot_write_ok(id: int, mapping: list[list[int]]) -> Message:
    """SNAPSHOT_WRITE_OK: snapshot client writes the chunks at these store addresses."""
    return {"op": "SNAPSHOT_WRITE_OK", "id": id, "map": mapping}


def query_snapshot_read(id: int, ranges: list[list[int]]) -> Message:
    """QUERY_SNAPSHOT_READ: where to read these snapshot chunks (locks origin ones)."""
    return {"op": "QUERY_SNAPSHOT_READ", "id": id, "ranges": ranges}


def snapshot_read_ok(id: int, origin: list[list[int]], store: list[list[int]],
                     lease_ms: int) -> Message:
    """SNAPSHOT_READ_OK: origin ranges (read-locked under lock id = id) and store mapping."""
    return {"op": "SNAPSHOT_READ_OK", "id": id, "origin": origin, "store": store,
            "lease_ms": lease_ms}


def finish_snapshot_read(id: int, lock: int, ranges: list[list[int]] | None = None) -> Message:
    """FINISH_SNAPSHOT_READ: release the read lock ``lock`` (or only ``ranges`` of it)."""
    msg = {"op": "FINISH_SNAPSHOT_READ", "id": id, "lock": lock}
    if ranges is not None:
        msg["ranges"] = ranges
    return msg


def finish_ok(id: int, valid: bool) -> Message:
    """FINISH_OK: ``valid`` False means the lock had been broken; re-read."""
    return {"op": "FINISH_OK", "id": id, "valid": valid}


def detach(id: int) -> Message:
    """DETACH: the client will write nothing more on earlier approvals; forget its grants."""
    return {"op": "DETACH", "id": id}


def detach_ok(id: int) -> Message:
    """DETACH_OK: the server forgot the client's grants (durably)."""
    return {"op": "DETACH_OK", "id": id}


def ping(id: int) -> Message:
    """PING: no-op round trip."""
    return {"op": "PING", "id": id}


def pong(id: int) -> Message:
    """PONG: reply to PING."""
    return {"op": "PONG", "id": id}


def advice(advice_id: int, kind: str, snapshot: str, lease_ms: int) -> Message:
    """ADVICE (unsolicited, id 0): a snapshot was created or deleted; act, then ACK_ADVICE."""
    return {"op": "ADVICE", "id": 0, "advice": advice_id, "kind": str(kind),
            "snapshot": snapshot, "lease_ms": lease_ms}


def ack_advice(id: int, advice_id: int) -> Message:
    """ACK_ADVICE: the client has done what ADVICE ``advice_id`` asked."""
    return {"op": "ACK_ADVICE", "id": id, "advice": advice_id}


def list_volumes(id: int) -> Message:
    """LIST_VOLUMES: the snapshots a data connection may IDENTIFY as (any identity)."""
    return {"op": "LIST_VOLUMES", "id": id}


def volumes(id: int, snapshots: list[dict[str, Any]]) -> Message:
    """VOLUMES: [{name, tag, created, squashed}, ...], oldest first."""
    return {"op": "VOLUMES", "id": id, "snapshots": snapshots}


def query_map(id: int, ranges: list[list[int]]) -> Message:
    """QUERY_MAP: where a snapshot's chunks live, without taking read locks."""
    return {"op": "QUERY_MAP", "id": id, "ranges": ranges}


def map_ok(id: int, store: list[list[int]]) -> Message:
    """MAP_OK: [[chunk, count, store_chunk], ...]; chunks not listed read the origin."""
    return {"op": "MAP_OK", "id": id, "store": store}


def query_changes(id: int, base: str | int | None, start: int = 0, count: int | None = None,
                  max_chunks: int | None = None) -> Message:
    """QUERY_CHANGES: the chunks of this connection's volume whose copy differs from
    ``base``'s (a snapshot, "origin", or None for "every chunk"), from chunk ``start``
    (over at most ``count`` chunks); the reply covers at most ``max_chunks`` chunks and
    says in ``next`` where to ask again."""
    msg: Message = {"op": "QUERY_CHANGES", "id": id, "base": base, "start": start}
    if count is not None:
        msg["count"] = count
    if max_chunks is not None:
        msg["max_chunks"] = max_chunks
    return msg


def changes(id: int, ranges: list[list[int]], next: int | None) -> Message:
    """CHANGES: changed chunks in ``[start, next)`` (``next`` None: up to the end asked)."""
    return {"op": "CHANGES", "id": id, "ranges": ranges, "next": next}


def ack_ok(id: int) -> Message:
    """ACK_OK: reply to ACK_ADVICE."""
    return {"op": "ACK_OK", "id": id}


def reply_error(id: int, code: int, message: str | None = None,
                leader: str | None = None) -> Message:
    """ERROR: request ``id`` (0 = connection-level) failed with wire ``code``.

    ``leader`` (NOT_LEADER) is the address clients should go to instead."""
    text = message if message else default_text(code)
    msg: Message = {"op": "ERROR", "id": id, "code": int(code), "message": text}
    if leader:
        msg["leader"] = leader
    return msg


def create_snapshot(id: int, name: str, tag: int | None = None,
                    priority: int | None = None, from_: str | int | None = None) -> Message:
    """CREATE_SNAPSHOT (control): make a snapshot of the origin as of now, or with
    ``from_`` a clone of that snapshot (by name or tag)."""
    msg: Message = {"op": "CREATE_SNAPSHOT", "id": id, "name": name}
    if tag is not None:
        msg["tag"] = tag
    if priority is not None:
        msg["priority"] = priority
    if from_ is not None:
        msg["from"] = from_
    return msg


def delete_snapshot(id: int, snapshot: str | int) -> Message:
    """DELETE_SNAPSHOT (control): delete by name or tag."""
    return {"op": "DELETE_SNAPSHOT", "id": id, "snapshot": snapshot}


def list_snapshots(id: int) -> Message:
    """LIST_SNAPSHOTS (control)."""
    return {"op": "LIST_SNAPSHOTS", "id": id}


def status(id: int) -> Message:
    """STATUS (control)."""
    return {"op": "STATUS", "id": id}


def shutdown(id: int) -> Message:
    """SHUTDOWN (control): graceful server shutdown."""
    return {"op": "SHUTDOWN", "id": id}


def forget_client(id: int, client_id: int) -> Message:
    """FORGET_CLIENT (control): the operator vouches that a disconnected client can
    write no more (its host is down or fenced); its grants are dropped."""
    return {"op": "FORGET_CLIENT", "id": id, "client_id": client_id}


def hold_snapshot(id: int, snapshot: str | int) -> Message:
    """HOLD_SNAPSHOT (control): add a hold; a held snapshot is never deleted nor squashed."""
    return {"op": "HOLD_SNAPSHOT", "id": id, "snapshot": snapshot}


def release_snapshot(id: int, snapshot: str | int) -> Message:
    """RELEASE_SNAPSHOT (control): take one hold away."""
    return {"op": "RELEASE_SNAPSHOT", "id": id, "snapshot": snapshot}


def set_snapshot(id: int, snapshot: str | int, name: str | None = None,
                 priority: int | None = None) -> Message:
    """SET_SNAPSHOT (control): rename a snapshot and/or change its priority."""
    msg: Message = {"op": "SET_SNAPSHOT", "id": id, "snapshot": snapshot}
    if name is not None:
        msg["name"] = name
    if priority is not None:
        msg["priority"] = priority
    return msg


def grow(id: int, store: bool = False, origin: bool = False, store_bytes: int | None = None,
         origin_bytes: int | None = None) -> Message:
    """GROW (control): take an enlarged store and/or origin device into use (the whole
    device, or the sizes given); shrinking is refused with the reason."""
    msg: Message = {"op": "GROW", "id": id, "store": store, "origin": origin}
    if store_bytes is not None:
        msg["store_bytes"] = store_bytes
    if origin_bytes is not None:
        msg["origin_bytes"] = origin_bytes
    return msg


def revert_snapshot(id: int, snapshot: str | int) -> Message:
    """REVERT_SNAPSHOT (control): make the origin equal to that snapshot (by name or tag),
    in the background; the other snapshots keep their content."""
    return {"op": "REVERT_SNAPSHOT", "id": id, "snapshot": snapshot}


def resized(origin_chunks: int, origin_bytes: int) -> Message:
    """RESIZED (unsolicited, id 0, to origin clients): the origin grew to this size."""
    return {"op": "RESIZED", "id": 0, "origin_chunks": origin_chunks,
            "origin_bytes": origin_bytes}


def ok(id: int, result: Any = None) -> Message:
    """OK (control reply) carrying an op-specific ``result``."""
    return {"op": "OK", "id": id, "result": result}


# ----------------------------------------------------------------------------------------
# Range helpers.


def compress_ranges(chunks: Iterable[int]) -> list[list[int]]:
    """Turn strictly increasing chunk numbers into ``[[start, count], ...]`` runs.

    Raises LocalProtocolError if the input is not strictly increasing (a caller bug).
    """
    out: list[list[int]] = []
    run: list[int] = [0, 0]
    prev = -1
    for c in chunks:
        if c == prev + 1 and out:
            run[1] += 1
        elif c > prev:
            run = [c, 1]
            out.append(run)
        else:
            raise LocalProtocolError(f"chunks not strictly increasing (or negative) at {c}")
        prev = c
    return out


def expand_ranges(ranges: Iterable[list[int]]) -> Iterator[int]:
    """Yield every chunk number covered by ``[[start, count], ...]``, in order."""
    for start, count in ranges:
        yield from range(start, start + count)


def count_chunks(ranges: Iterable[list[int]]) -> int:
    """Total chunks covered by ranges or mapping entries (second element is the count)."""
    return sum(r[1] for r in ranges)


def compress_mapping(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Turn ``(chunk, store_chunk)`` pairs, chunks strictly increasing, into
    ``[[chunk, count, store_start], ...]`` runs where both addresses are consecutive.

    Raises LocalProtocolError if the chunks are not strictly increasing.
    """
    out: list[list[int]] = []
    run: list[int] | None = None
    prev = -1
    for chunk, store in pairs:
        if chunk <= prev or store < 0:
            raise LocalProtocolError(f"chunks not strictly increasing (or negative) at {chunk}")
        if run is not None and chunk == prev + 1 and store == run[2] + run[1]:
            run[1] += 1
        else:
            run = [chunk, 1, store]
            out.append(run)
        prev = chunk
    return out


def expand_mapping(mapping: Iterable[list[int]]) -> Iterator[tuple[int, int]]:
    """Yield ``(chunk, store_chunk)`` for every chunk of a mapping, in order."""
    for chunk, count, store in mapping:
        for i in range(count):
            yield chunk + i, store + i
