"""Protocol sessions: one connection's protocol state as pure objects (no sockets, no asyncio).

After h11: a session turns received bytes into typed events and messages to send into
bytes, and owns the connection's states; the I/O layer only moves bytes.

* :class:`ServerSession` is what csnapd keeps per connection. ``receive_data(bytes)``
  buffers; ``next_event()`` returns the next :class:`Request` for the engine (validated,
  its ranges normalised and bounds-checked once, here), :data:`NEED_DATA`, or
  :data:`PAUSED` while an IDENTIFY is with the engine (requests behind it wait until its
  reply is sent, so they see the connection identified or not). What the session can
  answer alone it answers (a bad request, a request before IDENTIFY, the in-flight limit,
  PING, CHALLENGE, a framing error); ``send(msgs)`` queues the engine's replies and
  applies their transitions (IDENTIFY_OK identifies); ``data_to_send()`` drains
  everything queued as one byte string. ``closing`` means: send what is queued, then
  close.
* :class:`ClientSession` is the client side: ``send(msg)`` records the request and returns
  its frame; ``receive_data(bytes)`` returns :class:`Reply`, :class:`Failed`,
  :class:`Unsolicited` and :class:`Violation` events, each reply checked against the op it
  answers.

Server states (data connections; a control connection starts READY)::

    state        on                              goes to       and
    CHALLENGED   IDENTIFY with a valid auth      IDENTIFYING   forwarded
    CHALLENGED   anything else                   CLOSED        AUTH_FAILED sent
    WAITING      IDENTIFY                        IDENTIFYING   forwarded
    WAITING      any other request               WAITING       NOT_IDENTIFIED sent
    IDENTIFYING  (its reply sent: IDENTIFY_OK)   READY
    IDENTIFYING  (its reply sent: ERROR)         WAITING       (CHALLENGED again if auth)
    READY        IDENTIFY                        READY         ALREADY_IDENTIFIED sent
    READY        PING                            READY         PONG sent
    READY        any other request               READY         forwarded (in-flight limit)
    any          framing error                   CLOSED        ERROR id 0 sent

Invariants: every request that reaches ``next_event`` gets exactly one reply, from the
session or from ``send``; the session never raises on peer input (bad input becomes an
ERROR or a close), only on its caller's misuse (:class:`LocalProtocolError`).

Must not import asyncio, sockets or csnapd. Stdlib and this package only.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import auth as _auth
from . import messages as m
from .errors import (
    BadRequest,
    ErrorCode,
    FramingError,
    LocalProtocolError,
    RemoteProtocolError,
    error_from_reply,
)
from .framing import DEFAULT_MAX_FRAME, MAX_SERVER_FRAME, Framer, encode

Ranges = tuple[tuple[int, int], ...]
"""Chunk ranges as the engine receives them: sorted, disjoint ``(start, count)`` pairs,
inside the volume. Built once, here, from the wire's validated lists."""

#: Ops whose ``ranges`` name chunks of the volume (bounds-checked at the edge).
_RANGED = frozenset({"QUERY_WRITE", "QUERY_SNAPSHOT_READ", "QUERY_MAP"})


class State(enum.Enum):
    """Where a server-side connection is in its life (see the module table)."""

    CHALLENGED = "challenged"
    WAITING = "waiting for IDENTIFY"
    IDENTIFYING = "identifying"
    READY = "ready"
    CLOSED = "closed"


class _Marker(enum.Enum):
    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA = _Marker.NEED_DATA
PAUSED = _Marker.PAUSED


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1 us per request
class Request:
    """A valid request for the engine. ``ranges`` is set for ops that carry ranges."""

    op: str
    id: int
    msg: dict[str, Any]
    ranges: Ranges | None = None


class ServerSession:
    """The server side of one connection (module docstring: states and rules)."""

    __slots__ = ("control", "accept", "state", "framer", "max_inflight", "inflight",
                 "limit", "closing", "_out", "_ready", "_secret", "_nonce", "_proof",
                 "close_reason", "on_local_reply")

    def __init__(self, control: bool = False, secret: bytes | None = None,
                 max_inflight: int = m.MAX_INFLIGHT, max_frame: int = DEFAULT_MAX_FRAME
                 ) -> None:
        self.control = control
        self.accept = m.CONTROL_REQUESTS if control else m.CLIENT_REQUESTS
        self.framer = Framer(max_frame_size=max_frame)
        self.max_inflight = max_inflight
        self.inflight: dict[int, str] = {}  # request id -> op, until its reply is sent
        self.limit: int | None = None  # origin_chunks, once identified
        self.closing = False
        self.close_reason = ""
        self._out: list[bytes] = []
        self._ready: deque[dict[str, Any]] = deque()  # decoded, not yet looked at
        self._secret = secret
        self._nonce: bytes | None = None
        self._proof: bytes | None = None
        #: called with (op, reply) for every valid request the session answers itself
        #: (PING, limits, out-of-range...), e.g. to count it in metrics
        self.on_local_reply: Callable[[str, dict[str, Any]], None] | None = None
        if control:
            self.state = State.READY
        elif secret is not None:
            self.state = State.CHALLENGED
            self._nonce = _auth.new_nonce()
            self._queue(m.challenge(self._nonce))
        else:
            self.state = State.WAITING

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer received bytes (a framing error queues ERROR and marks ``closing``)."""
        if self.state is State.CLOSED:
            return
        try:
            self._ready.extend(self.framer.feed_many(data))
        except FramingError as exc:
            self._close(m.reply_error(0, exc.code or ErrorCode.BAD_REQUEST,
                                      f"framing error: {exc}"), f"framing error: {exc}")

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame (for the I/O layer's frame timeout)."""
        return self.framer.buffered

    def next_event(self) -> Request | _Marker:
        """The next request for the engine, NEED_DATA, or PAUSED (see the module docstring)."""
        ready = self._ready
        while ready:
            if self.state is State.IDENTIFYING or self.state is State.CLOSED:
                return PAUSED if self.state is State.IDENTIFYING else NEED_DATA
            msg = ready.popleft()
            req = self._admit(msg)
            if req is not None:
                return req
        return NEED_DATA

    def _admit(self, msg: Any) -> Request | None:
        """Validate one message and apply the state rules; None if answered here."""
        try:
            m.validate(msg, accept=self.accept)
        except BadRequest as exc:
            if self.state is State.CHALLENGED:
                self._refuse_auth(exc.request_id, "authentication required")
            else:
                self._queue(m.reply_error(exc.request_id, exc.code, exc.reason))
            return None
        op, rid = msg["op"], msg["id"]
        state = self.state
        if state is State.READY:
            if op == "PING" and not self.control:
                return self._answer(op, m.pong(rid))
            if op == "IDENTIFY":
                return self._answer(op, m.reply_error(rid, ErrorCode.ALREADY_IDENTIFIED,
                                                      "already identified"))
        elif state is State.CHALLENGED:
            if op != "IDENTIFY" or not self._authentic(msg):
                self._refuse_auth(rid, "authentication failed" if op == "IDENTIFY"
                                  and "auth" in msg else "authentication required")
                return None
            self.state = State.IDENTIFYING
        elif op == "IDENTIFY":
            self.state = State.IDENTIFYING
        else:
            return self._answer(op, m.reply_error(rid, ErrorCode.NOT_IDENTIFIED,
                                                  "send IDENTIFY first"))
        if len(self.inflight) >= self.max_inflight or rid in self.inflight:
            if op == "IDENTIFY":
                self.state = State.WAITING
            if rid in self.inflight:
                return self._answer(op, m.reply_error(rid, ErrorCode.DUPLICATE_ID,
                                                      f"request id {rid} is in flight"))
            return self._answer(op, m.reply_error(
                rid, ErrorCode.LIMIT_EXCEEDED, f"more than {self.max_inflight} requests in flight"))
        ranges = None
        if op in _RANGED:
            ranges = tuple(map(tuple, msg["ranges"]))
            last_start, last_count = ranges[-1]
            if self.limit is not None and last_start + last_count > self.limit:
                return self._answer(op, m.reply_error(rid, ErrorCode.OUT_OF_RANGE, (
                    f"chunks up to {last_start + last_count - 1} are outside the volume "
                    f"(0..{self.limit - 1})")))
        self.inflight[rid] = op
        return Request(op, rid, msg, ranges)

    def _answer(self, op: str, reply: dict[str, Any]) -> None:
        """A reply the session gives itself to a valid request."""
        self._queue(reply)
        if self.on_local_reply is not None:
            self.on_local_reply(op, reply)

    def _authentic(self, msg: dict[str, Any]) -> bool:
        proof, secret, nonce = msg.get("auth"), self._secret, self._nonce
        if proof is None or secret is None or nonce is None:
            return False
        ok = _auth.verify(_auth.client_proof(secret, nonce, proof["cnonce"], msg["client_id"],
                                             msg["volume"]), proof["mac"])
        if ok:
            self._proof = _auth.server_proof(secret, nonce, proof["cnonce"], msg["client_id"])
        return ok

    def _refuse_auth(self, rid: int, why: str) -> None:
        self._close(m.reply_error(rid, ErrorCode.AUTH_FAILED, why), why)

    # ------------------------------------------------------------------ output

    def send(self, msgs: list[dict[str, Any]]) -> None:
        """Queue the engine's replies (and notices); apply their transitions."""
        if self.state is State.CLOSED and not self.closing:
            return
        inflight = self.inflight
        for msg in msgs:
            rid = msg.get("id", 0)
            op = inflight.pop(rid, None) if rid else None
            if op == "IDENTIFY":
                self._identified(msg)
            elif msg.get("op") == "RESIZED" and self.limit is not None:
                self.limit = msg["origin_chunks"]  # the origin grew (an origin volume)
            self._out.append(encode(msg, max_frame_size=MAX_SERVER_FRAME))

    def _identified(self, reply: dict[str, Any]) -> None:
        if reply["op"] == "IDENTIFY_OK":
            self.state = State.READY
            self.limit = reply["origin_chunks"]
            if self._proof is not None:
                reply["auth"] = self._proof
        else:
            self.state = State.CHALLENGED if self._secret is not None else State.WAITING
            if self._secret is not None:
                self._nonce = _auth.new_nonce()  # a failed IDENTIFY used up the nonce
                self._queue(m.challenge(self._nonce))

    def data_to_send(self) -> bytes:
        """Everything queued, as one byte string (empty if nothing)."""
        if not self._out:
            return b""
        out = self._out
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self, notice: dict[str, Any] | None = None, reason: str = "") -> None:
        """The server ends the connection: optionally with a last notice."""
        self._close(notice, reason)

    # ------------------------------------------------------------------ internals

    def _queue(self, msg: dict[str, Any]) -> None:
        self._out.append(encode(msg, max_frame_size=MAX_SERVER_FRAME))

    def _close(self, notice: dict[str, Any] | None, reason: str) -> None:
        if notice is not None:
            self._queue(notice)
        self.state = State.CLOSED
        self.closing = True
        self.close_reason = self.close_reason or reason
        self._ready.clear()


# ======================================================================== client side


@dataclass(frozen=True, slots=True)
class Reply:
    """The success reply to request ``id`` (whose op was ``request_op``)."""

    id: int
    request_op: str
    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Failed:
    """Request ``id`` failed: an ERROR reply, or a reply that is no answer to it."""

    id: int
    request_op: str
    error: Exception


@dataclass(frozen=True, slots=True)
class Unsolicited:
    """A server message with id 0: ADVICE, CHALLENGE, or a connection-level ERROR."""

    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Violation:
    """The server broke the protocol: a frame that cannot be decoded (``fatal``), or a
    message that fails validation or answers nothing we asked."""

    reason: str
    fatal: bool


ClientEvent = Reply | Failed | Unsolicited | Violation


class ClientSession:
    """The client side of one connection: requests in flight and the replies to them."""

    __slots__ = ("framer", "inflight", "dead")

    def __init__(self, max_frame: int = MAX_SERVER_FRAME) -> None:
        self.framer = Framer(max_frame_size=max_frame)
        self.inflight: dict[int, str] = {}  # request id -> op
        self.dead = False

    def send(self, msg: dict[str, Any]) -> bytes:
        """Record ``msg`` as in flight and return its frame."""
        rid = msg["id"]
        if rid in self.inflight:
            raise LocalProtocolError(f"request id {rid} is already in flight")
        self.inflight[rid] = msg["op"]
        return encode(msg)

    def forget(self, rid: int) -> None:
        """The caller gave up on request ``rid`` (its reply, if any, will be an orphan)."""
        self.inflight.pop(rid, None)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ClientEvent]:
        """Every event the received bytes complete, in order."""
        if self.dead:
            return []
        try:
            msgs = self.framer.feed_many(data)
        except FramingError as exc:
            self.dead = True
            return [Violation(f"framing error from the server: {exc}", True)]
        return [self._event(msg) for msg in msgs]

    def _event(self, msg: dict[str, Any]) -> ClientEvent:
        try:
            m.validate(msg, m.SERVER_MESSAGES)
        except BadRequest as exc:
            op = self.inflight.pop(exc.request_id, None) if exc.request_id else None
            if op is not None:
                return Failed(exc.request_id, op, RemoteProtocolError(str(exc)))
            return Violation(f"invalid message from the server: {exc}", False)
        rid = msg["id"]
        if rid == 0:
            return Unsolicited(msg)
        op = self.inflight.pop(rid, None)
        if op is None:
            return Reply(rid, "", msg)  # an orphan: nobody waits (e.g. cancelled)
        if msg["op"] == "ERROR":
            return Failed(rid, op, error_from_reply(msg))
        if msg["op"] not in m.CATALOGUE[op].replies:
            return Failed(rid, op, RemoteProtocolError(f"{msg['op']} is no answer to {op}"))
        return Reply(rid, op, msg)
