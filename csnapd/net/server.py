"""The asyncio layer: sockets in, engine calls, sockets out.

This is the only package that imports asyncio.  It parses frames, validates
messages, and hands them to the engine in batches on the single store thread
(so disk work and fsync never block the event loop); each batch ends with one
commit (group commit) and the replies are written after it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import socket
import ssl
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from csnap_client.protocol import (
    CLIENT_REQUESTS,
    CONTROL_REQUESTS,
    BadRequest,
    ErrorCode,
    Framer,
    FramingError,
    auth,
    encode,
)
from csnap_client.protocol import (
    messages as m,
)
from csnapd.engine.service import Engine
from csnapd.metrics import RequestMetrics, outcome_of

log = logging.getLogger("csnapd.net")
MAX_FRAME = 1 << 20
MAX_SERVER_FRAME = 2 << 20
TICK = 0.2
#: Longest a write batch waits for the clients just answered to send their next request,
#: so that they share the next commit (group commit), in seconds.
MAX_GROUP_WAIT = 0.002


@dataclass
class Limits:
    """Per-connection limits: one client cannot exhaust the server or block others."""

    max_inflight: int = 256  # unanswered requests per connection
    max_connections: int = 1024
    identify_timeout: float = 10.0  # a data connection must identify within this
    frame_timeout: float = 30.0  # a started frame must complete within this


class Connection(asyncio.Protocol):
    """One client or control connection."""

    def __init__(self, server: Server, control: bool) -> None:
        self.server, self.control = server, control
        self.id = next(server.ids)
        self.framer = Framer(max_frame_size=MAX_FRAME)
        self.transport: asyncio.Transport | None = None
        self.accept = CONTROL_REQUESTS if control else CLIENT_REQUESTS
        self.pending = 0
        self.identified = control
        self.peer = "control"
        self._frame_timer: asyncio.TimerHandle | None = None
        self.nonce: bytes | None = None  # set when the server requires authentication
        self.proof: bytes | None = None
        self.started: dict[int, tuple[str, float]] = {}  # request id -> (op, arrival)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        privileged = True
        if self.control:
            uid = peer_uid(transport)
            privileged = uid in (0, os.getuid())
            self.peer = f"uid {uid}"
        else:
            self.peer = str(transport.get_extra_info("peername"))
        if len(self.server.conns) >= self.server.limits.max_connections:
            log.warning("refusing connection from %s: %d connections open", self.peer,
                        len(self.server.conns))
            self.send([m.reply_error(0, ErrorCode.BUSY, "too many connections")])
            transport.close()
            return
        self.server.conns[self.id] = self
        self.server.submit(("open", self.id, self.control, self.peer, privileged))
        if not self.control:
            loop.call_later(self.server.limits.identify_timeout, self._identify_deadline)
            if self.server.secret is not None:
                self.nonce = auth.new_nonce()
                self.send([m.challenge(self.nonce)])

    def _identify_deadline(self) -> None:
        if not self.identified and self.transport and not self.transport.is_closing():
            log.warning("closing connection %d from %s: no IDENTIFY within %.1fs", self.id,
                        self.peer, self.server.limits.identify_timeout)
            self.transport.close()

    def _frame_deadline(self) -> None:
        if self.framer.buffered and self.transport and not self.transport.is_closing():
            log.warning("closing connection %d from %s: frame incomplete after %.1fs", self.id,
                        self.peer, self.server.limits.frame_timeout)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            msgs = self.framer.feed_many(data)
        except FramingError as exc:
            log.warning("connection %d from %s: framing error, closing: %s", self.id,
                        self.peer, exc)
            self.send([m.reply_error(0, ErrorCode.BAD_REQUEST, f"framing error: {exc}")])
            self.transport.close()
            return
        self._watch_partial_frame()
        for msg in msgs:
            try:
                m.validate(msg, accept=self.accept)
            except BadRequest as exc:
                self.send([m.reply_error(exc.request_id, exc.code, exc.reason)])
                continue
            if self.nonce is not None and not self._authenticate(msg):
                return
            if msg["op"] == "PING" and self.identified:
                self._pong(msg["id"])
                continue
            if self.pending >= self.server.limits.max_inflight:
                self.send([m.reply_error(msg.get("id", 0), ErrorCode.LIMIT_EXCEEDED,
                                         f"more than {self.pending} requests in flight")])
                continue
            self.pending += 1
            if self.server.metrics is not None and msg.get("id"):
                self.started[msg["id"]] = (msg["op"], time.monotonic())
            self.server.submit(("msg", self.id, msg))

    def _authenticate(self, msg: dict[str, Any]) -> bool:
        """Check the challenge answer in IDENTIFY; refuse and close on anything else."""
        secret, nonce = self.server.secret, self.nonce
        proof = msg.get("auth") if msg["op"] == "IDENTIFY" else None
        if proof is not None and auth.verify(
                auth.client_proof(secret, nonce, proof["cnonce"], msg["client_id"],
                                  msg["volume"]), proof["mac"]):
            self.nonce = None
            self.proof = auth.server_proof(secret, nonce, proof["cnonce"], msg["client_id"])
            return True
        why = "authentication failed" if proof is not None else "authentication required"
        log.warning("refusing connection %d from %s: %s", self.id, self.peer, why)
        self.send([m.reply_error(msg.get("id", 0), ErrorCode.AUTH_FAILED, why)])
        self.transport.close()
        return False

    def _pong(self, rid: int) -> None:
        """PING needs no store: answer it on the event loop."""
        self.transport.write(encode(m.pong(rid)))
        if self.server.metrics is not None:
            self.server.metrics.observe("PING", "ok", 0.0)

    def _watch_partial_frame(self) -> None:
        if self.framer.buffered:
            if self._frame_timer is None:
                loop = asyncio.get_running_loop()
                self._frame_timer = loop.call_later(self.server.limits.frame_timeout,
                                                    self._frame_deadline)
        elif self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None

    def pause_writing(self) -> None:
        """The client is not reading its replies: stop reading its requests."""
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._frame_timer is not None:
            self._frame_timer.cancel()
        self.started.clear()
        if self.server.conns.pop(self.id, None) is not None:
            self.server.submit(("close", self.id))

    def send(self, msgs: list[dict[str, Any]]) -> None:
        metrics = self.server.metrics
        for msg in msgs:
            if msg.get("id"):
                self.pending = max(0, self.pending - 1)
                started = self.started.pop(msg["id"], None)
                if started is not None and metrics is not None:
                    metrics.observe(started[0], outcome_of(msg), time.monotonic() - started[1])
            if msg["op"] == "IDENTIFY_OK":
                self.identified = True
                if self.proof is not None:
                    msg["auth"] = self.proof
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(encode(msg, max_frame_size=MAX_SERVER_FRAME)
                                          for msg in msgs))


def peer_uid(transport: asyncio.BaseTransport) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    sock = transport.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1]
    except OSError:
        return -1


class Server:
    """Owns the listeners and runs engine batches on the store thread."""

    def __init__(self, engine: Engine, limits: Limits | None = None,
                 secret: bytes | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.engine = engine
        self.limits = limits or Limits()
        self.secret = secret
        self.ssl_context = ssl_context
        self.metrics: RequestMetrics | None = None  # set by the daemon with --metrics
        self.ids = itertools.count(1)
        self.conns: dict[int, Connection] = {}
        self.inbox: collections.deque[tuple] = collections.deque()
        self.wake = asyncio.Event()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.listeners: list[asyncio.AbstractServer] = []
        self.stopping = asyncio.Event()
        self.batches = 0
        self.arrived = 0  # data messages received (event-loop thread only)
        self.group_target = 1 << 62
        self.group_full = asyncio.Event()

    def submit(self, item: tuple) -> None:
        self.inbox.append(item)
        if item[0] == "msg":
            self.arrived += 1
            if self.arrived >= self.group_target:
                self.group_full.set()
        self.wake.set()

    async def _gather_group(self, answered: int, batch_time: float) -> None:
        """Group commit: give the clients we just answered a moment to come back.

        Under load, clients answered by one commit send their next request while the
        next batch is already running, so the clients split into groups that never
        share an fsync.  Waiting at most as long as the last batch took (and never
        more than MAX_GROUP_WAIT) lets them meet in the same commit.
        """
        self.group_target = self.arrived + answered
        self.group_full.clear()
        try:
            await asyncio.wait_for(self.group_full.wait(), min(batch_time, MAX_GROUP_WAIT))
        except TimeoutError:
            pass
        self.group_target = 1 << 62

    async def listen_tcp(self, host: str, port: int) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: Connection(self, False), host, port,
                                       reuse_address=True, ssl=self.ssl_context)
        self.listeners.append(srv)
        return srv

    async def listen_unix(self, path: str) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        srv = await loop.create_unix_server(lambda: Connection(self, True), path)
        self.listeners.append(srv)
        return srv

    async def run(self) -> None:
        """Process batches until shutdown is requested and the inbox drains."""
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(self._ticker())
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                started = time.monotonic()
                commits = self.engine.store.stats["commits"]
                out, closing, more = await loop.run_in_executor(self.worker, self._process)
                batch_time = time.monotonic() - started
                answered = self._dispatch(out, closing)
                if (answered > 1 and self.engine.store.stats["commits"] != commits
                        and not self.stopping.is_set()):
                    await self._gather_group(answered, batch_time)
                if more:
                    self.wake.set()
                if self.engine.shutdown_requested and not self.stopping.is_set():
                    self.stopping.set()
                if self.stopping.is_set() and not self.inbox:
                    break
        finally:
            ticker.cancel()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.submit(("tick",))

    def _process(self) -> tuple[list, set[int], bool]:
        """One batch on the store thread: everything queued, then one commit.

        The inbox is drained a second time just before the commit, so requests
        that arrived while this batch was being worked on share its commit.
        """
        engine, now = self.engine, time.monotonic()
        self.batches += 1
        self._drain(engine, now)
        self._drain(engine, now)
        out = engine.flush(now)
        closing, engine.closing = set(engine.closing), set()
        more = False
        if not self.inbox and not self.stopping.is_set():
            more = engine.background()
        return out, closing, more

    def _drain(self, engine: Engine, now: float) -> None:
        inbox = self.inbox
        while inbox:
            item = inbox.popleft()
            kind = item[0]
            if kind == "msg":
                engine.handle(item[1], item[2], now)
            elif kind == "open":
                engine.open_conn(item[1], control=item[2], peer=item[3], privileged=item[4])
            elif kind == "close":
                engine.close_conn(item[1], now)
            elif kind == "tick":
                engine.tick(now)

    def _dispatch(self, out: list, closing: set[int]) -> int:
        """Send the replies; return how many data connections got one."""
        per_conn: dict[int, list] = {}
        for conn_id, msg in out:
            per_conn.setdefault(conn_id, []).append(msg)
        for conn_id, msgs in per_conn.items():
            conn = self.conns.get(conn_id)
            if conn is not None:
                conn.send(msgs)
        for conn_id in closing:
            conn = self.conns.get(conn_id)
            if conn is not None and conn.transport is not None:
                conn.transport.close()
        return sum(1 for c in per_conn if c in self.conns and not self.conns[c].control)

    async def stop_listening(self) -> None:
        for srv in self.listeners:
            srv.close()
        for srv in self.listeners:
            await srv.wait_closed()

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            if conn.transport is not None:
                conn.transport.close()
