"""The data-connection session: one TCP connection to csnapd serving one volume.

Owns: the socket (an :class:`asyncio.Protocol` with one streaming :class:`Framer` that
accepts server frames up to ``MAX_SERVER_FRAME``), request ids, the table of requests in
flight, reply matching, ERROR -> exception mapping, the IDENTIFY handshake, reconnection
with exponential backoff, failover between the addresses of a server list, heartbeat and
the client-side lease.

It does *not* know about bytes, devices or caches: :mod:`csnap_client.volume` builds on it
and plugs in hooks: ``advice_sync`` (called synchronously the moment an ADVICE is decoded,
before any later message is looked at), ``advice_handler`` (the asynchronous rest of it),
``on_reset`` (all server-derived knowledge that depends on the connection is void:
disconnect, lease loss) and ``before_identify`` (awaited before a reconnect's IDENTIFY,
so the volume can finish the transfers it started under the old session).

Invariants:
  * request ids start at 1 and only grow; 0 is never sent (it marks unsolicited messages);
    since ids are never reused, an id never collides with a held read lock;
  * every request gets exactly one outcome: the reply, a :class:`RemoteError` (ERROR
    reply), or a local :class:`ConnectionError` subclass;
  * resendable requests (QUERY_*, FINISH_SNAPSHOT_READ) survive a reconnect: after the new
    IDENTIFY they are sent again, in id order, with their old ids. PING, ACK_ADVICE and
    DETACH are bound to one connection and fail with :class:`ConnectionLostError` instead;
  * read locks do not survive a lost connection (the server drops them): a FINISH resent
    after a reconnect is answered UNKNOWN_LOCK, and the volume reads those chunks again;
  * failover (several csnapd nodes, one elected leader): connecting tries the addresses in
    turn, the last leader first, follows a NOT_LEADER reply's ``leader`` hint at once and
    backs off only after a whole round failed. A NOT_LEADER reply on an established
    session (the leader was demoted) is never the caller's error: the connection is
    dropped and handled like any lost connection (same resend rules, same cache reset,
    a new epoch is a restart). Such bounces are not "quick losses" (a NOT_LEADER is the
    server saying why, not a request it hangs up on); instead the reconnect deadline runs
    from the first bounce until some request is answered again;
  * every IDENTIFY says ``clean``: a new client holds nothing, and a reconnecting one has
    voided its caches (``on_reset``) and waited for its transfers (``before_identify``);
  * the lease is counted from when a request was **sent**, never from when its reply was
    processed: a reply that sat in the socket buffer while this process was stalled can
    only renew the lease up to ``send time + lease_ms * LEASE_SAFETY``, which ends before
    the server's own count (from when it sent the reply) even if this host's clock runs
    up to 10% slow. :meth:`Client.lease_fresh` is False after that; the volume checks it
    right before every origin write it does without asking. Safety does not depend on it
    (the server copies out what a silent client may still write), it only keeps a
    client that lost the server from writing on old approvals for long.

Must not import csnapd. Uses only asyncio and csnap_client.protocol.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .addresses import Address, format_address, parse_address, unique_addresses
from .protocol import (
    MAX_CHUNKS_PER_REQUEST,
    MAX_INFLIGHT,
    MAX_RANGES,
    MAX_READ_LOCKS,
    PROTOCOL_VERSION,
    BusyError,
    Message,
    NotLeaderError,
    RemoteError,
    RemoteProtocolError,
    ShuttingDownError,
    ack_advice,
    auth,
    detach,
    error_from_reply,
    finish_snapshot_read,
    identify,
    ping,
)
from .protocol.session import ClientEvent, ClientSession, Failed, Reply, Unsolicited, Violation

log = logging.getLogger("csnap_client")

LEASE_SAFETY = 0.9  # stop trusting approvals a little before the server's lease ends
#: A connection lost this soon after its handshake counts as a quick loss; this many in a
#: row and the pending requests fail instead of being resent again.
QUICK_LOSS_S = 1.0
QUICK_LOSS_LIMIT = 5
RESENDABLE = frozenset({"QUERY_WRITE", "QUERY_SNAPSHOT_READ", "FINISH_SNAPSHOT_READ"})
DETACH_TIMEOUT = 2.0  # seconds close() waits for DETACH_OK


class ConnectionLostError(ConnectionError):
    """The connection dropped and this request cannot be resent (or reconnecting is off)."""


class ClientClosedError(ConnectionError):
    """The client was closed (by :meth:`Client.close`) before the request completed."""


class ReconnectFailedError(ConnectionError):
    """The server stayed unreachable for longer than ``reconnect_timeout`` seconds."""


class AuthenticationError(ConnectionError):
    """The server did not challenge us, or could not prove it knows the shared secret."""


class StoreChangedError(ConnectionError):
    """After a reconnect the server reports a different store: cached knowledge is void."""


class NoLeaderError(ConnectionError):
    """No address of the server list gave a session: each one refused, timed out or
    answered NOT_LEADER. ``errors`` pairs each address tried with what it did, in order."""

    def __init__(self, errors: list[tuple[Address, BaseException]]) -> None:
        self.errors = errors
        super().__init__("no csnapd leader found: " + "; ".join(
            f"{format_address(a)}: {describe_error(e)}" for a, e in errors))


def describe_error(exc: BaseException) -> str:
    """A short text for why one address failed (a NOT_LEADER's own text, an OSError's)."""
    if isinstance(exc, NotLeaderError):
        return f"not the leader ({exc.message})"
    if isinstance(exc, RemoteError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in str(exc):
        return "connection refused"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What IDENTIFY_OK told us about the volume and the server (see docs/protocol.md)."""

    chunk_size: int
    origin_chunks: int
    origin_bytes: int
    store_uuid: str
    server_epoch: int
    lease_ms: int
    snapshot: dict[str, Any] | None
    read_only: bool
    max_ranges: int = MAX_RANGES
    max_chunks: int = MAX_CHUNKS_PER_REQUEST
    max_inflight: int = MAX_INFLIGHT
    max_read_locks: int = MAX_READ_LOCKS

    @classmethod
    def from_reply(cls, msg: Message) -> SessionInfo:
        """Build from a validated IDENTIFY_OK (``limits`` overrides the defaults)."""
        limits = msg.get("limits") or {}
        extra = {k: limits[k] for k in ("max_ranges", "max_chunks", "max_inflight",
                                         "max_read_locks") if type(limits.get(k)) is int}
        return cls(chunk_size=msg["chunk_size"], origin_chunks=msg["origin_chunks"],
                   origin_bytes=msg["origin_bytes"], store_uuid=msg["store_uuid"],
                   server_epoch=msg["server_epoch"], lease_ms=msg["lease_ms"],
                   snapshot=msg["snapshot"], read_only=msg["read_only"], **extra)


class Slots:
    """A resizable counting semaphore (the server may announce its own limits)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        """Take a slot, waiting (FIFO) while all are in use."""
        if self.used < self.size and not self._waiters:
            self.used += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the releaser counted us in already
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        """Give a slot back (or hand it straight to the first waiter)."""
        self.used -= 1
        self._wake()

    def resize(self, size: int) -> None:
        """Change the capacity; extra capacity is handed to waiters at once."""
        self.size = max(1, size)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used < self.size:
            fut = self._waiters.popleft()
            if not fut.done():
                self.used += 1
                fut.set_result(None)


@dataclass(slots=True)
class _Pending:
    """One request awaiting its reply."""

    msg: Message
    fut: asyncio.Future[Message]
    resend: bool
    counted: bool = field(default=True)
    sent_at: float = 0.0  # monotonic time of the last send: the lease counts from here


class _Wire(asyncio.Protocol):
    """The asyncio side of one TCP connection: bytes in -> protocol session -> events."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.session = ClientSession()
        self.transport: asyncio.Transport | None = None
        #: the connection already ended (possibly before the client took it up: a
        #: server that hangs up at once, as a node switching role does)
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport."""
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """Hand every event the bytes complete to the client, in order."""
        on_event = self.client._on_event
        for ev in self.session.receive_data(data):
            on_event(self, ev)

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the client; it decides whether to reconnect."""
        self.lost = True
        self.client._on_lost(self, exc)

    def write(self, msgs: list[Message]) -> None:
        """Send requests (recorded as in flight by the session) in one write."""
        transport = self.transport
        if transport is not None and not transport.is_closing() and msgs:
            transport.write(b"".join(self.session.send(msg) for msg in msgs))

    def close(self) -> None:
        """Close the transport (idempotent)."""
        if self.transport is not None:
            self.transport.close()


class Client:
    """A session with csnapd for one volume: requests, replies, reconnects, leases.

    Create with the address and volume, then ``await client.connect()``. ``request`` sends a
    message built by a protocol builder and returns the success reply (or raises the
    ``RemoteError`` subclass of an ERROR reply).

    ``servers`` lists further addresses (``"host:port"``, ``"[v6]:port"`` or tuples) of
    csnapd nodes serving the same store, for failover: ``host:port`` comes first, then
    these, duplicates dropped; NOT_LEADER hints add addresses not yet known. ``address``
    is the node of the current session (while reconnecting: the last leader).
    """

    def __init__(self, host: str, port: int, volume: str | int = "origin", *,
                 servers: Iterable[str | Address] | None = None,
                 client_id: int | None = None, timeout: float = 10.0,
                 reconnect: bool = True, reconnect_delay: float = 0.05,
                 reconnect_max_delay: float = 2.0, reconnect_timeout: float | None = 60.0,
                 heartbeat: float | None = None, secret: bytes | None = None,
                 ssl: ssl_module.SSLContext | bool | None = None,
                 read_only: bool = False) -> None:
        self.host, self.port, self.volume = host, port, volume
        #: every address known, in the order given; a round of connection attempts
        #: starts at the current one and goes on in this order
        self.servers: list[Address] = unique_addresses([(host, port), *(servers or ())])
        self._hint: Address | None = None  # the leader a NOT_LEADER reply named, to try first
        self.failovers = 0  # sessions opened on another address than the previous one
        self._bounces = 0  # NOT_LEADER losses in a row, with no request answered since
        self._outage_since: float | None = None  # first of those bounces (the deadline)
        self.read_only = read_only
        self.secret = secret
        self.ssl = ssl
        self._challenge: asyncio.Future[bytes] | None = None
        self.client_id = client_id if client_id is not None else int.from_bytes(
            os.urandom(8), "big") >> 1
        self.timeout = timeout
        self.reconnect = reconnect
        self.reconnect_delay = reconnect_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.reconnect_timeout = reconnect_timeout
        self.heartbeat = heartbeat
        self.info: SessionInfo | None = None
        self.advice_sync: Callable[[Message], None] | None = None
        #: called with the new SessionInfo when the origin's size changed (RESIZED, or a
        #: reconnect that found it grown): volumes and gateways take the new size
        self.resize_listeners: list[Callable[[SessionInfo], None]] = []
        self.advice_handler: Callable[[Message], Awaitable[None]] | None = None
        self.on_reset: Callable[[str], None] | None = None
        self.before_identify: Callable[[], Awaitable[None]] | None = None
        #: awaited with every IDENTIFY_OK and a call function, before the session is
        #: used: checks the devices (csnap_client.devices.DeviceCheck); raising refuses
        self.device_check: Callable[[Message, Callable[..., Awaitable[Message]]],
                                    Awaitable[None]] | None = None
        self.reconnects = 0
        self._identified_at = 0.0
        self._quick_losses = 0  # connections in a row lost soon after their handshake
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._slots = Slots(MAX_INFLIGHT)
        self._wire: _Wire | None = None
        self._identified = False
        self._early_advice: list[Message] = []  # ADVICE received during the handshake
        self._closed = False
        self._failed: BaseException | None = None
        self._answered_sent = time.monotonic()  # send time of the newest answered request
        self._lease_lost = False
        self._state = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._outbuf: list[Message] = []
        self._flush_scheduled = False

    # ------------------------------------------------------------------ public API

    @property
    def address(self) -> str:
        """``"host:port"`` of the node of the current session (while reconnecting: of the
        last one that served it)."""
        return format_address((self.host, self.port))

    @property
    def connected(self) -> bool:
        """True while identified on a live connection."""
        return self._identified and self._wire is not None

    @property
    def lease_s(self) -> float:
        """The server's lease in seconds (from IDENTIFY_OK)."""
        return (self.info.lease_ms if self.info else 30000) / 1000.0

    def lease_fresh(self) -> bool:
        """True if connected and a request sent within the lease (with margin) was answered.

        Noticing an expired lease here (not only in the heartbeat) voids the unique
        knowledge at once, through ``on_reset``.
        """
        if not self.connected or self._lease_lost:
            return False
        silent = time.monotonic() - self._answered_sent
        if silent < self.lease_s * LEASE_SAFETY:
            return True
        self._lose_lease(silent)
        return False

    def _lose_lease(self, silent: float) -> None:
        log.warning("no request answered for %.1f s since it was sent: lease lost, holding "
                    "writes", silent)
        self._lease_lost = True
        self._reset("lease expired")
        self._notify()

    async def connect(self) -> SessionInfo:
        """Open the connection and IDENTIFY; raises OSError or the IDENTIFY's RemoteError.

        With several addresses each is tried once (following NOT_LEADER hints); if none
        gives a session, :class:`NoLeaderError` says what each one did. With one address
        its own error is raised, as it always was.
        """
        await self._connect_round(first=True)
        interval = self.heartbeat if self.heartbeat is not None else self.lease_s / 3
        self._heartbeat_task = self._spawn(self._heartbeat_loop(max(interval, 0.01)))
        assert self.info is not None
        return self.info

    async def request(self, build: Callable[..., Message], *args: Any,
                      resend: bool | None = None) -> Message:
        """Send ``build(id, *args)`` and return its success reply.

        Raises the ERROR reply as a :class:`RemoteError` subclass, :class:`ClientClosedError`
        after :meth:`close`, :class:`ConnectionLostError` if the connection dropped and the
        request may not be resent, or the fatal error that ended the session.
        """
        self._check_open()
        await self._slots.acquire()
        try:
            self._check_open()
            rid = self._take_id()
            msg = build(rid, *args)
            if resend is None:
                resend = msg["op"] in RESENDABLE
            fut = asyncio.get_running_loop().create_future()
            self._pending[rid] = p = _Pending(msg, fut, resend)
            if self.connected:
                p.sent_at = time.monotonic()
                self._send(msg)
            elif not resend:
                self._pending.pop(rid)
                raise ConnectionLostError(f"not connected to {self.address}")
            try:
                return await fut
            finally:
                p = self._pending.pop(rid, None)
                if p is not None and not fut.done():
                    self._abandoned(p)
        finally:
            self._slots.release()

    async def wait_ready(self) -> None:
        """Wait until connected with a fresh lease (writes may proceed); raise if dead."""
        while True:
            self._check_open()
            if self.lease_fresh():
                return
            if self.connected and not self._lease_lost:
                # connected but silent: poke the server; any reply renews the lease
                self._spawn(self._ping_quietly())
            ev = self._state
            try:
                await asyncio.wait_for(ev.wait(), timeout=max(self.lease_s / 3, 0.01))
            except TimeoutError:
                pass

    async def ack_advice(self, msg: Message) -> None:
        """Acknowledge an ADVICE; a lost connection makes the ack moot, so it is ignored."""
        try:
            await self.request(ack_advice, msg["advice"], resend=False)
        except (ConnectionError, RemoteError) as exc:
            log.warning("ACK_ADVICE %s not delivered: %s", msg["advice"], exc)

    async def close(self) -> None:
        """Close the connection and fail whatever is still pending. Idempotent.

        A live session is ended with DETACH first, so the server can forget what
        this client was allowed to write (the caller has finished its I/O).
        """
        if self._closed:
            return
        if self.connected and self._failed is None:
            try:
                await asyncio.wait_for(self.request(detach, resend=False), DETACH_TIMEOUT)
            except (ConnectionError, RemoteError, TimeoutError) as exc:
                log.info("DETACH not confirmed (%s): the server keeps this client's grants "
                         "until an operator releases them", exc)
        self._closed = True
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._fail_pending(ClientClosedError("client closed"), everything=True)
        if self._wire is not None:
            self._wire.close()
            self._wire = None
        self._identified = False
        self._notify()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                try:
                    await task
                except BaseException:  # noqa: BLE001 - tasks were cancelled on purpose
                    pass

    def drop_connection(self) -> None:
        """Abort the current TCP connection (tests, or a detected dead peer): reconnects."""
        if self._wire is not None and self._wire.transport is not None:
            self._wire.transport.abort()

    # ------------------------------------------------------------------ internals: sending

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("client closed")
        if self._failed is not None:
            raise self._failed

    def _take_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _send(self, msg: Message) -> None:
        """Queue one request; those queued in the same loop iteration go out in one write."""
        self._outbuf.append(msg)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_out)

    def _flush_out(self) -> None:
        self._flush_scheduled = False
        msgs, self._outbuf = self._outbuf, []
        if self._wire is not None:
            self._wire.write(msgs)

    async def _call_direct(self, wire: _Wire, msg: Message) -> Message:
        """Send on ``wire`` even before IDENTIFY completed (handshake messages)."""
        if wire.lost:  # it ended before we got here: no reply will ever come
            raise ConnectionLostError(f"connection to {self.address} closed by the server "
                                      "during the handshake")
        rid = msg["id"]
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(msg, fut, resend=False, counted=False,
                                      sent_at=time.monotonic())
        assert wire.transport is not None
        wire.write([msg])
        try:
            return await fut
        finally:
            self._pending.pop(rid, None)

    def _abandoned(self, p: _Pending) -> None:
        """A caller gave up on a request (cancelled). Nothing to undo except read locks,
        which are released when their reply arrives with no one waiting (see _on_event)."""

    # ------------------------------------------------------------------ internals: receiving

    def _on_event(self, wire: _Wire, ev: ClientEvent) -> None:
        """Dispatch one event of a connection's session (called from data_received)."""
        if isinstance(ev, Unsolicited):
            msg = ev.msg
            if msg["op"] == "CHALLENGE" and self._wire in (None, wire):
                # may arrive before create_connection() has returned the new wire
                if self._challenge is not None and not self._challenge.done():
                    self._challenge.set_result(msg["nonce"])
            elif wire is self._wire:
                self._on_unsolicited(msg)
            return
        if wire is not self._wire:
            return
        if isinstance(ev, Violation):
            log.error("%s%s", ev.reason, "; dropping the connection" if ev.fatal else "")
            if ev.fatal and wire.transport is not None:
                wire.transport.abort()
            return
        p = self._pending.get(ev.id)
        if isinstance(ev, Failed) and isinstance(ev.error, NotLeaderError) \
                and self._identified and (p is None or p.counted):
            # demoted under us: not this request's fault; it is resent (or fails as
            # unresendable) like any request on a lost connection
            self._bounce(wire, ev.error)
            return
        if p is None:
            if isinstance(ev, Reply):
                self._on_orphan(ev.msg)
            return
        self._answered(p.sent_at)
        if self._bounces and p.counted:
            self._bounces, self._outage_since = 0, None  # a leader answers again
        if p.fut.done():
            return
        if isinstance(ev, Failed):
            p.fut.set_exception(ev.error)
        else:
            p.fut.set_result(ev.msg)

    def _answered(self, sent_at: float) -> None:
        """A reply came to a request sent at ``sent_at``: the lease runs from there."""
        if sent_at > self._answered_sent:
            self._answered_sent = sent_at
        if self._lease_lost and time.monotonic() - sent_at < self.lease_s * LEASE_SAFETY:
            self._lease_lost = False
            self._notify()

    def _on_orphan(self, msg: Message) -> None:
        """A reply nobody waits for: release a read lock it may have created."""
        if msg["op"] == "SNAPSHOT_READ_OK" and msg["origin"]:
            self._spawn(self._release_orphan_lock(msg["id"]))

    async def _release_orphan_lock(self, lock: int) -> None:
        try:
            await self.request(finish_snapshot_read, lock)
        except (ConnectionError, RemoteError):
            pass

    def _on_unsolicited(self, msg: Message) -> None:
        if msg["op"] == "ADVICE":
            if not self._identified:
                # It came during the handshake (the server counts this connection in from
                # IDENTIFY_OK on): its ack cannot go out before the session is up, and
                # dropping it would leave the server waiting for us until its deadline.
                self._early_advice.append(msg)
                return
            if self.advice_sync is not None:
                self.advice_sync(msg)  # before any later message is looked at
            handler = self.advice_handler
            aw = handler(msg) if handler is not None else self.ack_advice(msg)
            self._spawn(aw)
        elif msg["op"] == "RESIZED":
            self._resized(msg["origin_chunks"], msg["origin_bytes"])
        elif msg["op"] == "ERROR":
            exc = error_from_reply(msg)
            if isinstance(exc, NotLeaderError) and self._wire is not None and self._identified:
                self._bounce(self._wire, exc)  # "I stopped leading", before it hangs up
                return
            log.warning("server notice: %s", exc)
        else:
            log.warning("unexpected unsolicited %s ignored", msg["op"])

    def _resized(self, origin_chunks: int, origin_bytes: int) -> None:
        """The origin grew (csnapctl grow --origin): take the new size, tell the listeners."""
        info = self.info
        if info is None or info.snapshot is not None or info.origin_bytes == origin_bytes:
            return
        log.info("origin grew from %d to %d bytes", info.origin_bytes, origin_bytes)
        self.info = replace(info, origin_chunks=origin_chunks,
                                        origin_bytes=origin_bytes)
        for listener in list(self.resize_listeners):
            listener(self.info)

    def _bounce(self, wire: _Wire, exc: NotLeaderError) -> None:
        """The node of this session says it does not lead (any more): note the leader it
        names, drop the connection at once and reconnect (there first)."""
        hint = self._learn_hint(exc)
        log.warning("csnapd at %s no longer leads (%s); reconnecting%s", self.address,
                    exc.message, f", to {format_address(hint)} first" if hint else "")
        if wire.transport is not None:
            wire.transport.abort()
        self._on_lost(wire, exc)  # now: nothing more is read from this connection

    def _learn_hint(self, exc: NotLeaderError) -> Address | None:
        """The leader a NOT_LEADER names (added to the known addresses), or None."""
        if not exc.leader:
            return None
        try:
            hint = parse_address(exc.leader, "leader")
        except ValueError:
            log.warning("ignoring the leader address %r in a NOT_LEADER reply", exc.leader)
            return None
        if hint not in self.servers:
            log.info("learned csnapd address %s from a NOT_LEADER reply",
                     format_address(hint))
            self.servers.append(hint)
        self._hint = hint
        return hint

    def _on_lost(self, wire: _Wire, exc: Exception | None) -> None:
        """The TCP connection ended: fail unresendable requests, then reconnect."""
        if wire is not self._wire:
            return
        self._wire = None
        if self._challenge is not None and not self._challenge.done():
            self._challenge.set_exception(ConnectionLostError(
                f"connection to {self.address} lost before its CHALLENGE"))
        was_identified = self._identified
        self._identified = False
        bounced = isinstance(exc, NotLeaderError)
        if bounced:  # not a quick loss: the deadline below bounds a run of these
            self._bounces += 1
            if self._outage_since is None:
                self._outage_since = time.monotonic()
        elif was_identified and time.monotonic() - self._identified_at < QUICK_LOSS_S:
            self._quick_losses += 1
        elif was_identified:
            self._quick_losses = 0
        self._fail_pending(ConnectionLostError(f"connection to {self.address} lost"))
        if self._quick_losses >= QUICK_LOSS_LIMIT:
            # the same resent request may be what the server keeps hanging up on: fail it
            # rather than resend it forever
            self._fail_pending(ConnectionLostError(
                f"connection to {self.address} lost {self._quick_losses} times in a "
                f"row right after reconnecting; not resending"), everything=True)
        self._reset("disconnected")
        if self._closed:
            return
        if was_identified and self.reconnect:
            if not bounced:
                log.warning("connection to %s lost (%s); reconnecting", self.address,
                            exc or "closed by server")
            if self._reconnect_task is None or self._reconnect_task.done():
                self._reconnect_task = self._spawn(self._reconnect_loop())
        elif was_identified:
            self._fatal(ConnectionLostError(f"connection to {self.address} lost"))
        self._notify()

    # ------------------------------------------------------------------ internals: state

    def _fail_pending(self, exc: BaseException, everything: bool = False) -> None:
        for p in list(self._pending.values()):
            if (everything or not p.resend) and not p.fut.done():
                p.fut.set_exception(exc)

    def _fatal(self, exc: BaseException) -> None:
        """The session cannot continue: every current and future request raises ``exc``."""
        if self._failed is None:
            log.error("csnap session ended: %s", exc)
            self._failed = exc
        self._fail_pending(exc, everything=True)
        self._notify()

    def _reset(self, why: str) -> None:
        if self.on_reset is not None:
            self.on_reset(why)

    def _notify(self) -> None:
        self._state.set()
        self._state = asyncio.Event()

    def _spawn(self, aw: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ handshake, reconnect

    def _round_order(self) -> list[Address]:
        """Where a round of attempts goes: the hinted leader, the current (last) leader,
        then the other known addresses in list order from there."""
        cur = (self.host, self.port)
        i = self.servers.index(cur) if cur in self.servers else 0
        order = self.servers[i:] + self.servers[:i]
        if self._hint is not None:
            order = [self._hint] + [a for a in order if a != self._hint]
        return order

    async def _connect_round(self, first: bool) -> None:
        """Try each known address once, following NOT_LEADER hints at once.

        An address that refuses, times out, is busy, shutting down or not the leader is
        passed over; any other error (the volume refused, another store, a protocol
        error) is raised at once. If no address gave a session, raises that address's
        own error when only one was tried, else :class:`NoLeaderError`.
        """
        queue = self._round_order()
        tried: list[Address] = []
        errors: list[tuple[Address, BaseException]] = []
        while queue:
            addr = queue.pop(0)
            if addr in tried:
                continue
            tried.append(addr)
            try:
                await self._open_session(first, addr)
            except NotLeaderError as exc:
                errors.append((addr, exc))
                hint = self._learn_hint(exc)
                log.info("csnapd at %s is not the leader (%s)", format_address(addr),
                         exc.message)
                if hint is not None and hint not in tried:
                    queue.insert(0, hint)
                continue
            except StoreChangedError:
                raise
            except (OSError, TimeoutError, ShuttingDownError, BusyError) as exc:
                errors.append((addr, exc))
                if len(self.servers) > 1:
                    log.info("csnapd at %s: %s", format_address(addr), describe_error(exc))
                continue
            old = (self.host, self.port)
            self.host, self.port = addr
            self._hint = None
            if addr != old:
                self.failovers += 1
                if first:
                    log.info("connected to the csnapd leader at %s (%s was not it)",
                             self.address, format_address(old))
                else:
                    log.warning("failover: session moved from csnapd at %s to %s",
                                format_address(old), self.address)
            return
        if len(errors) == 1:
            raise errors[0][1]
        raise NoLeaderError(errors)

    async def _open_session(self, first: bool, address: Address) -> None:
        """Connect to ``address``, IDENTIFY (clean), resend pending requests."""
        if not first and self.before_identify is not None:
            await self.before_identify()
        loop = asyncio.get_running_loop()
        self._challenge = loop.create_future() if self.secret is not None else None
        self._early_advice = []  # those of an earlier, failed handshake are moot
        host, port = address
        _, wire = await asyncio.wait_for(
            loop.create_connection(lambda: _Wire(self), host, port, ssl=self.ssl),
            self.timeout)
        self._wire = wire
        try:
            if wire.lost:  # hung up on at once (a node switching role closes everything)
                raise ConnectionLostError(f"connection to {format_address(address)} closed "
                                          "by the server at once")
            proof, check = await self._answer_challenge()
            reply = await asyncio.wait_for(self._call_direct(wire, identify(
                self._take_id(), self.client_id, self.volume, PROTOCOL_VERSION, proof,
                self.read_only, clean=True)),
                self.timeout)
            if check is not None and not auth.verify(check, reply.get("auth")):
                raise AuthenticationError("the server could not prove it knows the secret")
            info = SessionInfo.from_reply(reply)
            old = self.info
            if old is not None and old.store_uuid != info.store_uuid:
                # self.info keeps the old store: a later attempt must not pass this check
                raise StoreChangedError(f"store changed from {old.store_uuid} to "
                                        f"{info.store_uuid}")
            self.info = info
            if old is not None and old.origin_bytes != info.origin_bytes:
                for listener in list(self.resize_listeners):  # it grew while we were away
                    listener(info)
            if old is not None and old.server_epoch != info.server_epoch:
                log.info("server restarted or failed over (epoch %s -> %s)",
                         old.server_epoch, info.server_epoch)
                self._reset("server restarted")
            if self.device_check is not None:
                await self.device_check(reply, lambda build, *args: asyncio.wait_for(
                    self._call_direct(wire, build(self._take_id(), *args)), self.timeout))
            self._slots.resize(info.max_inflight)
        except BaseException:
            if self._wire is wire:
                self._wire = None
            wire.close()
            raise
        if wire is not self._wire:
            raise ConnectionLostError("connection lost during handshake")
        self._identified = True
        self._lease_lost = False
        early, self._early_advice = self._early_advice, []
        for msg in early:  # before any reply to what is resent below is looked at
            self._on_unsolicited(msg)
        now = time.monotonic()
        self._identified_at = now
        for rid in sorted(self._pending):
            p = self._pending[rid]
            if p.resend and not p.fut.done():
                p.sent_at = now
                self._send(p.msg)
        self._notify()

    async def _answer_challenge(self) -> tuple[dict[str, bytes] | None, bytes | None]:
        """Wait for CHALLENGE (when we have a secret) and build the IDENTIFY proof."""
        if self._challenge is None or self.secret is None:
            return None, None
        try:
            nonce = await asyncio.wait_for(self._challenge, self.timeout)
        except TimeoutError:
            raise AuthenticationError("server sent no CHALLENGE: it does not require a "
                                      "secret, or is not csnapd") from None
        cnonce = auth.new_nonce()
        mac = auth.client_proof(self.secret, nonce, cnonce, self.client_id, self.volume)
        return ({"cnonce": cnonce, "mac": mac},
                auth.server_proof(self.secret, nonce, cnonce, self.client_id))

    async def _reconnect_loop(self) -> None:
        """Retry rounds of attempts (every address once) with exponential backoff between
        rounds, until one works or ``reconnect_timeout`` has passed.

        The time counts from now, or, during a run of NOT_LEADER bounces, from the first
        of them: sessions that are opened and at once refused again do not reset it.
        """
        delay = self.reconnect_delay
        start = self._outage_since if self._outage_since is not None else time.monotonic()
        if self._quick_losses:  # reconnecting worked, the connection did not: back off
            await asyncio.sleep(min(self.reconnect_delay * 2 ** self._quick_losses,
                                    self.reconnect_max_delay))
        elif self._bounces > 1:  # the last failover did not hold: back off (not the first)
            await asyncio.sleep(min(self.reconnect_delay * 2 ** (self._bounces - 1),
                                    self.reconnect_max_delay))
        last: BaseException | None = None
        while not self._closed and self._failed is None:
            if self._bounces and self._past(start):
                self._fatal(self._deadline_error(last))
                return
            try:
                await self._connect_round(first=False)
                self.reconnects += 1
                log.info("reconnected to %s", self.address)
                return
            except StoreChangedError as exc:  # an OSError too: caught before the others
                self._fatal(exc)
                return
            except (OSError, TimeoutError, ConnectionLostError, ShuttingDownError,
                    BusyError, NotLeaderError) as exc:
                last = exc
                log.debug("reconnect round failed: %s", exc)
            except (RemoteError, RemoteProtocolError) as exc:
                self._fatal(exc)
                return
            if self._past(start):
                self._fatal(self._deadline_error(last))
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_delay)

    def _past(self, start: float) -> bool:
        """True once ``reconnect_timeout`` has passed since ``start``."""
        return (self.reconnect_timeout is not None
                and time.monotonic() - start > self.reconnect_timeout)

    def _deadline_error(self, last: BaseException | None) -> ReconnectFailedError:
        """The error that ends a session whose server stayed out of reach too long."""
        why = f" (last: {describe_error(last)})" if last is not None else ""
        if len(self.servers) == 1:
            return ReconnectFailedError(
                f"{self.address} unreachable for {self.reconnect_timeout} s{why}")
        return ReconnectFailedError(
            f"no csnapd leader reachable for {self.reconnect_timeout} s at "
            f"{', '.join(format_address(a) for a in self.servers)}{why}")

    # ------------------------------------------------------------------ heartbeat, lease

    async def _heartbeat_loop(self, interval: float) -> None:
        """PING every ``interval``; track the lease; drop a connection silent for 2 leases."""
        while not self._closed:
            await asyncio.sleep(interval)
            if not self.connected:
                continue
            silent = time.monotonic() - self._answered_sent
            if silent >= self.lease_s * LEASE_SAFETY and not self._lease_lost:
                self._lose_lease(silent)
            if silent >= 2 * self.lease_s:
                log.warning("server silent for %.1f s; dropping the connection", silent)
                self.drop_connection()
                continue
            self._spawn(self._ping_quietly())

    async def _ping_quietly(self) -> None:
        try:
            await self.request(ping, resend=False)
        except (ConnectionError, RemoteError):
            pass
