"""The asyncio layer: bytes in, sessions, the engine, bytes out. The only asyncio in csnapd.

Each connection has a protocol session (``csnap_client.protocol.session``) that turns its
bytes into requests and replies into bytes; requests go straight to the engine on the
event loop (lookups and approvals never leave the loop). At the end of each loop
iteration the server takes the engine's outcome: replies that may go now are handed to
their sessions, replies that wait for durability go to the :class:`Committer`, and every
connection with something to send gets exactly one socket write.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from csnap_client.protocol import ErrorCode, encode
from csnap_client.protocol import messages as m
from csnap_client.protocol.session import NEED_DATA, PAUSED, ServerSession
from csnapd.engine.service import Engine, Out, Outcome
from csnapd.metrics import RequestMetrics, outcome_of

from .commit import Committer

log = logging.getLogger("csnapd.net")
TICK = 0.2
#: How long background work (clone fill, delete, revert) waits when the open transaction
#: is already large and a write is in flight, seconds.
BACKGROUND_WAIT = 0.002
#: Changed blocks in the open transaction from which background work waits so.
BACKGROUND_BLOCKS = 32


@dataclass
class Limits:
    """Per-connection limits: one client cannot exhaust the server or block others."""

    max_inflight: int = 256  # unanswered requests per connection
    max_connections: int = 1024
    identify_timeout: float = 10.0  # a data connection must identify within this
    frame_timeout: float = 30.0  # a started frame must complete within this


class Connection(asyncio.Protocol):
    """One client or control connection: a transport and its protocol session."""

    def __init__(self, server: Server, control: bool) -> None:
        self.server, self.control = server, control
        self.id = next(server.ids)
        self.session = ServerSession(control, server.secret if not control else None,
                                     server.limits.max_inflight)
        if server.metrics is not None:
            metrics = server.metrics
            self.session.on_local_reply = lambda op, reply: metrics.observe(
                op, outcome_of(reply), 0.0)
        self.transport: asyncio.Transport | None = None
        self.peer = "control"
        self._frame_timer: asyncio.TimerHandle | None = None
        self._identify_timer: asyncio.TimerHandle | None = None
        self.started: dict[int, tuple[str, float]] = {}  # request id -> (op, arrival)
        self.open = False

    # -- asyncio callbacks -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        srv = self.server
        privileged = True
        if self.control:
            uid = peer_uid(transport)
            privileged = uid in (0, os.getuid())
            self.peer = f"uid {uid}"
        else:
            self.peer = str(transport.get_extra_info("peername"))
        if len(srv.conns) >= srv.limits.max_connections:
            log.warning("refusing connection from %s: %d connections open", self.peer,
                        len(srv.conns))
            self.transport.write(encode(m.reply_error(0, ErrorCode.BUSY, "too many connections")))
            transport.close()
            return
        self.open = True
        srv.conns[self.id] = self
        srv.engine.open_conn(self.id, control=self.control, peer=self.peer,
                             privileged=privileged)
        if not self.control:
            self._identify_timer = srv.loop.call_later(srv.limits.identify_timeout,
                                                       self._identify_deadline)
        srv.dirty.add(self)  # a CHALLENGE may be queued
        srv.schedule()

    def data_received(self, data: bytes) -> None:
        """Requests to the engine; replies are written at the end of the loop iteration."""
        self.session.receive_data(data)
        if self._frame_timer is not None or self.session.buffered:
            self._watch_partial_frame()
        self.server.pump(self)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._frame_timer, self._identify_timer):
            if timer is not None:
                timer.cancel()
        self.started.clear()
        srv = self.server
        if srv.conns.pop(self.id, None) is not None:
            srv.dirty.discard(self)
            srv.engine.close_conn(self.id, time.monotonic())
            srv.schedule()

    def pause_writing(self) -> None:
        """The client is not reading its replies: stop reading its requests."""
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    # -- timers --------------------------------------------------------------------
    def _identify_deadline(self) -> None:
        if self.session.state.name in ("WAITING", "CHALLENGED") and self.transport \
                and not self.transport.is_closing():
            log.warning("closing connection %d from %s: no IDENTIFY within %.1fs", self.id,
                        self.peer, self.server.limits.identify_timeout)
            self.transport.close()

    def _frame_deadline(self) -> None:
        if self.session.buffered and self.transport and not self.transport.is_closing():
            log.warning("closing connection %d from %s: frame incomplete after %.1fs", self.id,
                        self.peer, self.server.limits.frame_timeout)
            self.transport.close()

    def _watch_partial_frame(self) -> None:
        if self.session.buffered:
            if self._frame_timer is None:
                self._frame_timer = self.server.loop.call_later(
                    self.server.limits.frame_timeout, self._frame_deadline)
        elif self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None

    # -- output ----------------------------------------------------------------------
    def send(self, msgs: list[dict[str, Any]]) -> None:
        """Hand replies to the session; they are written at the end of the iteration."""
        metrics = self.server.metrics
        if metrics is not None:
            now = time.monotonic()
            for msg in msgs:
                started = self.started.pop(msg.get("id", 0), None)
                if started is not None:
                    metrics.observe(started[0], outcome_of(msg), now - started[1])
        self.session.send(msgs)
        self.server.dirty.add(self)

    def flush(self) -> None:
        """One socket write with everything the session has queued."""
        data = self.session.data_to_send()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if data:
            transport.write(data)
        if self.session.closing:
            log.warning("closing connection %d from %s: %s", self.id, self.peer,
                        self.session.close_reason)
            transport.close()


def peer_uid(transport: asyncio.BaseTransport) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    sock = transport.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1]
    except OSError:
        return -1


class Server:
    """The listeners, the connections, and the loop that ties sessions to the engine."""

    def __init__(self, engine: Engine, limits: Limits | None = None,
                 secret: bytes | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.engine = engine
        self.limits = limits or Limits()
        self.secret = secret
        self.ssl_context = ssl_context
        self.metrics: RequestMetrics | None = None  # set by the daemon with --metrics
        self.ids = itertools.count(1)
        self.conns: dict[int, Connection] = {}
        self.dirty: set[Connection] = set()  # connections with bytes to write
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.listeners: list[asyncio.AbstractServer] = []
        self.stopping = asyncio.Event()
        self.loop = asyncio.get_event_loop()
        self.committer = Committer(engine, self.worker, self.deliver)
        #: HA: True while this node's leader lease runs. Requests are handed to the
        #: engine, and replies sent, only while it does; None = not in HA mode.
        self.lease_ok: Callable[[], bool] | None = None
        self._scheduled = False
        self._background_more = False
        self._ticker: asyncio.TimerHandle | None = None

    # -- listeners ---------------------------------------------------------------------
    async def listen_tcp(self, host: str, port: int) -> asyncio.AbstractServer:
        srv = await self.loop.create_server(lambda: Connection(self, False), host, port,
                                            reuse_address=True, ssl=self.ssl_context)
        self.listeners.append(srv)
        return srv

    async def listen_unix(self, path: str) -> asyncio.AbstractServer:
        srv = await self.loop.create_unix_server(lambda: Connection(self, True), path)
        self.listeners.append(srv)
        return srv

    async def stop_listening(self) -> None:
        for srv in self.listeners:
            srv.close()
        for srv in self.listeners:
            await srv.wait_closed()

    def switch(self, engine: Any, lease_ok: Any = None,
               on_fenced: Any = None) -> None:
        """Serve with another engine from now on (HA: a leader's, or a standby's).

        Every connection is closed after what it has queued is sent (unless the
        lease it was decided under has ended): its session
        belonged to the other engine, and its client reconnects (to this node, or
        to the leader it is told about).
        """
        if self.lease_ok is None or self.lease_ok():
            self.collect()
            for conn in list(self.conns.values()):
                conn.flush()
        # else a leader that lost its lease: what it queued is not sent (_lease_ended)
        old, self.conns = self.conns, {}
        self.dirty.clear()
        for conn in old.values():
            if conn.transport is not None:
                conn.transport.close()
        self.engine = engine
        self.lease_ok = lease_ok
        self.committer = Committer(engine, self.worker, self.deliver, lease_ok)
        self.committer.on_fenced = on_fenced

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            if conn.transport is not None:
                conn.transport.close()

    # -- the request path --------------------------------------------------------------
    def pump(self, conn: Connection) -> None:
        """Feed a connection's ready requests to the engine."""
        session, engine, metrics = conn.session, self.engine, self.metrics
        if self.conns.get(conn.id) is not conn:
            # a connection of the engine before a switch (HA): its session belongs to
            # that engine, which will never answer it; hang up so the client reconnects
            log.info("closing connection %d from %s: this node changed role", conn.id,
                     conn.peer)
            if conn.transport is not None:
                conn.transport.abort()
            return
        if self.lease_ok is not None and not self.lease_ok():
            self._lease_ended()
            return
        now = time.monotonic()
        while True:
            req = session.next_event()
            if req is NEED_DATA or req is PAUSED:
                break
            if self.stopping.is_set():  # draining: only what is in flight still finishes
                session.send([m.reply_error(req.id, ErrorCode.SHUTTING_DOWN,
                                            "csnapd is shutting down; reconnect later")])
                continue
            if metrics is not None:
                conn.started[req.id] = (req.op, now)
            engine.handle(conn.id, req, now)
            if req.op == "IDENTIFY":
                self.collect()  # its reply un-pauses the session: deliver it now
        self.dirty.add(conn)
        self.schedule()

    def schedule(self) -> None:
        """Run the end of this loop iteration (outcome, one write per connection) once."""
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._end_of_iteration)

    def _end_of_iteration(self) -> None:
        self._scheduled = False
        if self.lease_ok is not None and not self.lease_ok():
            self._lease_ended()
            return
        self.collect()
        dirty, self.dirty = self.dirty, set()
        for conn in dirty:
            conn.flush()
        if self._background_more:
            self._background_more = False
            self.loop.call_soon(self._background)

    def _lease_ended(self) -> None:
        """HA: the lease ran out (this node stalled?): decide nothing, send nothing.

        A reply decided while the lease ran but not yet sent is dropped with its
        connection: a newer leader may have changed what it says. Clients reconnect
        and are sent to the leader; the election demotes this node meanwhile.
        """
        self.dirty.clear()
        for conn in list(self.conns.values()):
            if conn.transport is not None and not conn.transport.is_closing():
                log.warning("closing connection %d from %s: this node's leader lease has "
                            "ended", conn.id, conn.peer)
                conn.transport.abort()

    def collect(self) -> None:
        """Take the engine's outcome and act on it."""
        out: Outcome = self.engine.take()
        if out.now:
            self.deliver(out.now)
        self.committer.submit(out.durable, out.ticket)
        for conn_id in out.close:
            conn = self.conns.get(conn_id)
            if conn is not None:
                conn.session.close(None, "closed by the server")
                self.dirty.add(conn)
        if out.shutdown and not self.stopping.is_set():
            self.stopping.set()

    def deliver(self, replies: list[Out]) -> None:
        """Hand replies to their connections' sessions (grouped, in order)."""
        per_conn: dict[int, list[dict[str, Any]]] = {}
        for conn_id, msg in replies:
            per_conn.setdefault(conn_id, []).append(msg)
        for conn_id, msgs in per_conn.items():
            conn = self.conns.get(conn_id)
            if conn is not None:
                conn.send(msgs)
        self.schedule()

    # -- time and background ----------------------------------------------------------
    def _tick(self) -> None:
        self._ticker = self.loop.call_later(TICK, self._tick)
        self.engine.tick(time.monotonic())
        self.schedule()
        self.loop.call_soon(self._background)

    def _background(self) -> None:
        """A slice of background work, only when nothing else waits for the engine."""
        if self.stopping.is_set():
            return
        store = self.engine.store
        if (store is not None and self.committer.writing is not None
                and store.open_blocks() >= BACKGROUND_BLOCKS):
            # the open transaction already holds enough background changes: more now
            # would only make the next commit (and every answer waiting for it, such as
            # a read of a leaf the clone fill changed) longer; go on once the write in
            # flight is done
            self.loop.call_later(BACKGROUND_WAIT, self._background)
            return
        self.engine.now = time.monotonic()
        self._background_more = self.engine.background()
        self.schedule()

    async def run(self) -> None:
        """Serve until shutdown is requested and everything pending is durable."""
        self._ticker = self.loop.call_later(TICK, self._tick)
        try:
            await self.stopping.wait()
            while not self.committer.idle:
                await asyncio.sleep(0.01)
                self.collect()
                self.committer.kick()
        finally:
            if self._ticker is not None:
                self._ticker.cancel()
