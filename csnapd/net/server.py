"""The asyncio layer: sockets in, engine calls, sockets out.

This is the only package that imports asyncio.  It parses frames, validates
messages, and hands them to the engine in batches on the single store thread
(so disk work and fsync never block the event loop); each batch ends with one
commit (group commit) and the replies are written after it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from csnap_client.protocol import (
    CLIENT_REQUESTS,
    CONTROL_REQUESTS,
    BadRequest,
    ErrorCode,
    Framer,
    FramingError,
    encode,
)
from csnap_client.protocol import (
    messages as m,
)
from csnapd.engine.service import Engine

log = logging.getLogger("csnapd.net")
MAX_FRAME = 1 << 20
MAX_SERVER_FRAME = 2 << 20
TICK = 0.2


class Connection(asyncio.Protocol):
    """One client or control connection."""

    def __init__(self, server: Server, control: bool) -> None:
        self.server, self.control = server, control
        self.id = next(server.ids)
        self.framer = Framer(max_frame_size=MAX_FRAME)
        self.transport: asyncio.Transport | None = None
        self.accept = CONTROL_REQUESTS if control else CLIENT_REQUESTS

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or "control"
        self.server.conns[self.id] = self
        self.server.submit(("open", self.id, self.control, str(peer)))

    def data_received(self, data: bytes) -> None:
        try:
            msgs = self.framer.feed_many(data)
        except FramingError as exc:
            log.warning("connection %d: framing error, closing: %s", self.id, exc)
            self.send([m.reply_error(0, ErrorCode.BAD_REQUEST, f"framing error: {exc}")])
            self.transport.close()
            return
        for msg in msgs:
            try:
                m.validate(msg, accept=self.accept)
            except BadRequest as exc:
                self.send([m.reply_error(exc.request_id, exc.code, exc.reason)])
                continue
            self.server.submit(("msg", self.id, msg))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.pop(self.id, None)
        self.server.submit(("close", self.id))

    def send(self, msgs: list[dict[str, Any]]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(encode(msg, max_frame_size=MAX_SERVER_FRAME)
                                          for msg in msgs))


class Server:
    """Owns the listeners and runs engine batches on the store thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ids = itertools.count(1)
        self.conns: dict[int, Connection] = {}
        self.inbox: list[tuple] = []
        self.wake = asyncio.Event()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.listeners: list[asyncio.AbstractServer] = []
        self.stopping = asyncio.Event()
        self.batches = 0

    def submit(self, item: tuple) -> None:
        self.inbox.append(item)
        self.wake.set()

    async def listen_tcp(self, host: str, port: int) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: Connection(self, False), host, port,
                                       reuse_address=True)
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
                batch, self.inbox = self.inbox, []
                out, closing, more = await loop.run_in_executor(self.worker, self._process, batch)
                self._dispatch(out, closing)
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

    def _process(self, batch: list[tuple]) -> tuple[list, set[int], bool]:
        engine, now = self.engine, time.monotonic()
        self.batches += 1
        for item in batch:
            kind = item[0]
            if kind == "msg":
                engine.handle(item[1], item[2], now)
            elif kind == "open":
                engine.open_conn(item[1], control=item[2], peer=item[3])
            elif kind == "close":
                engine.close_conn(item[1], now)
            elif kind == "tick":
                engine.tick(now)
        out = engine.flush(now)
        closing, engine.closing = set(engine.closing), set()
        more = False
        if not self.inbox and not self.stopping.is_set():
            more = engine.background()
        return out, closing, more

    def _dispatch(self, out: list, closing: set[int]) -> None:
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

    async def stop_listening(self) -> None:
        for srv in self.listeners:
            srv.close()
        for srv in self.listeners:
            await srv.wait_closed()

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            if conn.transport is not None:
                conn.transport.close()
