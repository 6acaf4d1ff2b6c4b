"""Wire error codes and the protocol's exception hierarchy.

Owns: the ONE table of wire error codes (``ERROR_TABLE``: int code, NAME, default text,
retryable flag), the :class:`ErrorCode` enum built from it, and every exception the
protocol package raises.

Exception hierarchy::

    ProtocolError                      base; never raised directly
      LocalProtocolError               our side misused the API (bad builder input, oversize encode)
      RemoteProtocolError              the peer sent something we cannot accept
        FramingError                   broken framing: the ONLY error that closes a connection
        BadRequest                     a well-framed message that fails validation; carries the wire
                                       code, a human reason and the request id to answer with ERROR
      RemoteError                      an ERROR reply received from the server, one subclass per code
        BadRequestError, UnknownOpError, ... (registered by code in ``REMOTE_ERROR_CLASSES``)

Invariants: codes and names in ``ERROR_TABLE`` are unique (checked at import);
every code has exactly one :class:`RemoteError` subclass (checked at import, duplicates raise).

Must not import: anything outside the stdlib (this module is the bottom of the package).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

# code, NAME, default text, retryable (the same request may succeed later, unchanged)
ERROR_TABLE: tuple[tuple[int, str, str, bool], ...] = (
    # 1xx: the request itself is wrong or not allowed in this state
    (100, "BAD_REQUEST", "malformed request", False),
    (101, "UNKNOWN_OP", "unknown or misdirected operation", False),
    (102, "NOT_IDENTIFIED", "IDENTIFY must be the first message", False),
    (103, "ALREADY_IDENTIFIED", "connection is already identified", False),
    (104, "VERSION_MISMATCH", "protocol version not supported", False),
    (105, "TOO_MANY_RANGES", "too many ranges in one request", False),
    (106, "LIMIT_EXCEEDED", "a per-request or per-connection limit was exceeded", False),
    (107, "OUT_OF_RANGE", "chunk address beyond the end of the volume", False),
    (108, "READ_ONLY", "volume is read-only", False),
    (109, "UNKNOWN_LOCK", "no read lock with that id is held by this connection", False),
    (110, "DUPLICATE_ID", "request id is already in flight or names a held lock", False),
    # 2xx: snapshot namespace
    (200, "UNKNOWN_SNAPSHOT", "no such snapshot", False),
    (201, "SNAPSHOT_DELETED", "snapshot has been deleted", False),
    (202, "SNAPSHOT_SQUASHED", "snapshot was squashed to free store space", False),
    (203, "SNAPSHOT_EXISTS", "a snapshot with that name or tag already exists", False),
    (204, "SNAPSHOT_HELD", "snapshot is held: release it first", False),
    # 3xx: the devices (snapshot store, origin)
    (300, "STORE_FULL", "snapshot store is full", False),
    (301, "STORE_CORRUPT", "snapshot store metadata is corrupt", False),
    (302, "WRONG_DEVICE", "a device does not match the server's", False),
    # 4xx: authentication and authorisation
    (400, "AUTH_FAILED", "authentication failed", False),
    (401, "PERMISSION_DENIED", "permission denied", False),
    # 5xx: server condition
    (500, "SHUTTING_DOWN", "server is shutting down", True),
    (501, "BUSY", "server is busy, retry later", True),
    (502, "INTERNAL", "internal server error", False),
    (503, "NOT_LEADER", "this server is a standby; the leader is named in `leader`", True),
)


def _check_table() -> None:
    """Reject duplicate codes or names in ERROR_TABLE (runs at import)."""
    codes = [row[0] for row in ERROR_TABLE]
    names = [row[1] for row in ERROR_TABLE]
    if len(set(codes)) != len(codes) or len(set(names)) != len(names):
        raise RuntimeError("duplicate code or name in ERROR_TABLE")


_check_table()

ErrorCode = IntEnum("ErrorCode", [(name, code) for code, name, _, _ in ERROR_TABLE])
ErrorCode.__doc__ = "Wire error codes (the ``code`` field of ERROR). Built from ERROR_TABLE."

DEFAULT_TEXT: dict[int, str] = {code: text for code, _, text, _ in ERROR_TABLE}
RETRYABLE: frozenset[int] = frozenset(code for code, _, _, retry in ERROR_TABLE if retry)


def error_name(code: int) -> str:
    """Return the NAME for a wire code, or ``"UNKNOWN(<code>)"`` for codes we do not know."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"UNKNOWN({code})"


def default_text(code: int) -> str:
    """Return the default human text for a wire code (used when a reply carries none)."""
    return DEFAULT_TEXT.get(code, "unknown error")


class ProtocolError(Exception):
    """Base of every protocol exception. Catch this to catch them all."""


class LocalProtocolError(ProtocolError):
    """Our own side misused the protocol API (e.g. encoding a non-map or an oversize frame)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something this side cannot accept."""


class FramingError(RemoteProtocolError):
    """The byte stream cannot be split into valid frames; the connection must be closed.

    ``code`` is the wire code a server may send (in an ERROR with id 0) before closing.
    """

    def __init__(self, reason: str, code: int = ErrorCode.BAD_REQUEST) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class BadRequest(RemoteProtocolError):
    """A well-framed message failed validation; answer with ERROR, keep the connection.

    ``code`` is the wire code, ``reason`` the human text and ``request_id`` the id to echo
    (the message's own id when it had a valid one, else 0).
    """

    def __init__(self, code: int, reason: str, request_id: int = 0) -> None:
        super().__init__(f"{error_name(code)}: {reason}")
        self.code = code
        self.reason = reason
        self.request_id = request_id


REMOTE_ERROR_CLASSES: dict[int, type[RemoteError]] = {}


class RemoteError(ProtocolError):
    """An ERROR reply from the server. Subclasses exist per code; see :func:`error_from_reply`.

    Defining a subclass with a ``code`` class attribute registers it; a second class for the
    same code raises ``RuntimeError`` at import.
    """

    code: int = 0

    def __init__(self, code: int, message: str, request_id: int = 0) -> None:
        super().__init__(f"{error_name(code)} ({code}): {message}")
        self.code = code  # instance value; equals the class value for registered subclasses
        self.message = message
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        """True when the same request may succeed if sent again later."""
        return self.code in RETRYABLE

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code")
        if code is None:
            return
        if code in REMOTE_ERROR_CLASSES:
            other = REMOTE_ERROR_CLASSES[code].__name__
            raise RuntimeError(f"error code {code} registered twice ({other}, {cls.__name__})")
        REMOTE_ERROR_CLASSES[code] = cls


class BadRequestError(RemoteError):
    code = ErrorCode.BAD_REQUEST


class UnknownOpError(RemoteError):
    code = ErrorCode.UNKNOWN_OP


class NotIdentifiedError(RemoteError):
    code = ErrorCode.NOT_IDENTIFIED


class AlreadyIdentifiedError(RemoteError):
    code = ErrorCode.ALREADY_IDENTIFIED


class VersionMismatchError(RemoteError):
    code = ErrorCode.VERSION_MISMATCH


class TooManyRangesError(RemoteError):
    code = ErrorCode.TOO_MANY_RANGES


class LimitExceededError(RemoteError):
    code = ErrorCode.LIMIT_EXCEEDED


class OutOfRangeError(RemoteError):
    code = ErrorCode.OUT_OF_RANGE


class ReadOnlyError(RemoteError):
    code = ErrorCode.READ_ONLY


class UnknownLockError(RemoteError):
    code = ErrorCode.UNKNOWN_LOCK


class DuplicateIdError(RemoteError):
    code = ErrorCode.DUPLICATE_ID


class UnknownSnapshotError(RemoteError):
    code = ErrorCode.UNKNOWN_SNAPSHOT


class SnapshotDeletedError(RemoteError):
    code = ErrorCode.SNAPSHOT_DELETED


class SnapshotSquashedError(RemoteError):
    code = ErrorCode.SNAPSHOT_SQUASHED


class SnapshotExistsError(RemoteError):
    code = ErrorCode.SNAPSHOT_EXISTS


class SnapshotHeldError(RemoteError):
    """Delete refused: the snapshot has holds (``csnapctl release`` takes them away)."""

    code = ErrorCode.SNAPSHOT_HELD


class StoreFullError(RemoteError):
    code = ErrorCode.STORE_FULL


class StoreCorruptError(RemoteError):
    code = ErrorCode.STORE_CORRUPT


class WrongDeviceError(RemoteError):
    """A device is not the server's: an ERROR WRONG_DEVICE reply to VERIFY_DEVICES, or the
    client library's own finding (then ``request_id`` is 0) when it checks the devices it
    opened against IDENTIFY_OK. ``message`` names the device and what did not match."""

    code = ErrorCode.WRONG_DEVICE


class AuthFailedError(RemoteError):
    code = ErrorCode.AUTH_FAILED


class PermissionDeniedError(RemoteError):
    code = ErrorCode.PERMISSION_DENIED


class ShuttingDownError(RemoteError):
    code = ErrorCode.SHUTTING_DOWN


class BusyError(RemoteError):
    code = ErrorCode.BUSY


class InternalError(RemoteError):
    code = ErrorCode.INTERNAL


class NotLeaderError(RemoteError):
    """The server is a standby (or stopped leading); ``leader`` is where to go, if known."""

    code = ErrorCode.NOT_LEADER
    leader: str = ""


def _check_classes() -> None:
    """Every code in the table must have its RemoteError subclass (runs at import)."""
    missing = set(DEFAULT_TEXT) - set(REMOTE_ERROR_CLASSES)
    if missing:
        raise RuntimeError(f"no RemoteError subclass for codes {sorted(missing)}")


_check_classes()


def error_from_reply(msg: dict[str, Any]) -> RemoteError:
    """Turn a (validated) ERROR message into the matching :class:`RemoteError` subclass.

    Unknown codes (a newer server) give a plain :class:`RemoteError` carrying the code.
    An empty message text is replaced by the code's default text.
    """
    code = msg.get("code")
    if type(code) is not int:
        code = ErrorCode.INTERNAL
    text = msg.get("message")
    if not isinstance(text, str) or not text:
        text = default_text(code)
    rid = msg.get("id")
    cls = REMOTE_ERROR_CLASSES.get(code, RemoteError)
    exc = cls(code, text, rid if type(rid) is int else 0)
    if isinstance(msg.get("leader"), str):
        exc.leader = msg["leader"]  # type: ignore[attr-defined]
    return exc
