"""A small in-memory csnapd stand-in for client tests.

Speaks the wire protocol (data connections over TCP, control over a unix socket) using the
protocol package, keeps the snapshot metadata in dicts, and does copy-outs on the real
origin/store files so byte-level results can be checked. Test knobs: per-op reply delays
(to force out-of-order replies), injected errors, a log of received messages, pausing all
replies (to starve a client's lease), and ``restart()`` (drop every connection, new epoch,
locks forgotten).

High availability: ``add_node()`` opens another listener on the same state, a standby;
``set_leader(port)`` makes the node on ``port`` the leader (``None``: none is). A node that
does not lead answers every request, IDENTIFY included, with NOT_LEADER naming the
leader's address (``hint`` overrides it), as csnapd's standby does; the demoted leader's
open sessions get that too (or are closed, or get a NOT_LEADER notice first). A new
leader has a new epoch and knows no read locks. ``bounce = n``: the leader answers the
next ``n`` requests after IDENTIFY with NOT_LEADER naming itself (a leader that keeps
losing and winning its lease).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from csnap_client import protocol as P

AUTO = object()  # FakeServer.hint: name the real leader


class _NotLeader(Exception):
    """Answer this NOT_LEADER instead of handling the request."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply


@dataclass
class Snap:
    name: str
    tag: int
    created: float
    map: dict[int, int] = field(default_factory=dict)  # chunk -> store chunk


@dataclass
class Conn:
    writer: asyncio.StreamWriter
    port: int = 0  # the node (listener) this connection came in on
    volume: str | None = None  # "origin" or a snapshot name once identified
    client_id: int = 0
    locks: dict[int, set[int]] = field(default_factory=dict)
    broken: set[int] = field(default_factory=set)
    lock_time: dict[int, float] = field(default_factory=dict)
    acks: dict[int, asyncio.Future[None]] = field(default_factory=dict)


class FakeServer:
    def __init__(self, origin: str, store: str, chunk_size: int = 4096,
                 lease_ms: int = 2000) -> None:
        self.origin_path, self.store_path = origin, store
        self.cs = chunk_size
        self.origin_bytes = os.path.getsize(origin)
        self.chunks = (self.origin_bytes + chunk_size - 1) // chunk_size
        self.lease_ms = lease_ms
        self.snaps: dict[str, Snap] = {}
        self.refs: dict[int, set[str]] = {}
        self.next_store = 0
        self.free: list[int] = []
        self.epoch = 1
        self.uuid = "fake-store-uuid"
        self.conns: list[Conn] = []
        self.received: list[dict[str, Any]] = []
        self.arrivals: list[tuple[float, int, str]] = []  # (monotonic time, node port, op)
        self.delay: dict[str, float] = {}
        self.inject: dict[str, int] = {}  # op -> error code for the next such request
        self.hangup: set[str] = set()  # ops the server hangs up on (a poison request)
        self.paused = asyncio.Event()
        self.paused.set()
        self.written_since_start: set[int] = set()
        self.next_advice = 1
        self.server: asyncio.AbstractServer | None = None
        self.ctl_server: asyncio.AbstractServer | None = None
        self.port = 0
        self.nodes: dict[int, asyncio.AbstractServer] = {}  # further nodes (standbys)
        self.leader_port: int | None = None  # the leading node; the first one when None
        self.leader_chosen = False
        self.hint: Any = AUTO  # the leader address standbys name (AUTO: the real one)
        self.bounce = 0
        self.fd_origin = os.open(origin, os.O_RDWR)
        self.fd_store = os.open(store, os.O_RDWR)
        self.next_tag = 1

    # -------------------------------------------------------------- lifecycle

    async def start(self, port: int = 0, control: str | None = None) -> FakeServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        if not self.leader_chosen:
            self.leader_port = self.port
        if control is not None and self.ctl_server is None:
            self.ctl_server = await asyncio.start_unix_server(self._serve_control, control)
        return self

    async def stop_listening(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def drop_all(self) -> None:
        for c in list(self.conns):
            c.writer.transport.abort()
        self.conns.clear()

    async def restart(self, downtime: float = 0.0) -> None:
        """Simulate a crash + restart: connections and locks gone, new epoch."""
        await self.stop_listening()
        self.drop_all()
        self.epoch += 1
        self.written_since_start = set()
        await asyncio.sleep(downtime)
        await self.start(self.port)

    async def add_node(self) -> int:
        """Start another node on the same state (a standby until ``set_leader``)."""
        node = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = node.sockets[0].getsockname()[1]
        self.nodes[port] = node
        return port

    async def stop_node(self, port: int) -> None:
        """Stop the listener of an added node (its address refuses connections)."""
        node = self.nodes.pop(port)
        node.close()
        await node.wait_closed()

    def set_leader(self, port: int | None, *, close: bool = False,
                   notice: bool = False) -> None:
        """Make the node on ``port`` lead (None: no node leads): a new epoch, no read
        locks. Sessions on other nodes get NOT_LEADER from now on; ``close`` closes them,
        ``notice`` sends them an unsolicited NOT_LEADER first and then closes them."""
        self.leader_chosen = True
        if port != self.leader_port and port is not None:
            self.epoch += 1
            self.written_since_start = set()
        self.leader_port = port
        for c in list(self.conns):
            if c.port == port:
                continue
            c.locks.clear()
            c.broken.clear()
            for fut in c.acks.values():
                if not fut.done():
                    fut.set_result(None)
            if notice:
                self._send(c, self._not_leader(0))
            if close or notice:
                c.writer.close()
                self.conns.remove(c)

    def leader_address(self) -> str | None:
        """What a NOT_LEADER reply names as the leader."""
        if self.hint is not AUTO:
            return self.hint
        return None if self.leader_port is None else f"127.0.0.1:{self.leader_port}"

    def _not_leader(self, rid: int, leader: str | None | object = AUTO) -> dict[str, Any]:
        address = self.leader_address() if leader is AUTO else leader
        text = (f"this node is a standby; the leader is at {address}" if address
                else "this node is a standby and no leader is elected yet")
        return P.reply_error(rid, P.ErrorCode.NOT_LEADER, text, address)  # type: ignore[arg-type]

    async def close(self) -> None:
        for port in list(self.nodes):
            await self.stop_node(port)
        await self.stop_listening()
        self.drop_all()
        if self.ctl_server is not None:
            self.ctl_server.close()
            await self.ctl_server.wait_closed()
        os.close(self.fd_origin)
        os.close(self.fd_store)

    # -------------------------------------------------------------- plumbing

    def _send(self, conn: Conn, msg: dict[str, Any]) -> None:
        if not conn.writer.is_closing():
            conn.writer.write(P.encode(msg, P.MAX_SERVER_FRAME))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(writer, port=writer.get_extra_info("sockname")[1])
        self.conns.append(conn)
        framer = P.Framer()
        try:
            while data := await reader.read(65536):
                for msg in framer.feed_many(data):
                    self.received.append(msg)
                    self.arrivals.append((time.monotonic(), conn.port, str(msg.get("op"))))
                    if msg.get("op") in self.hangup:
                        writer.close()
                        return
                    asyncio.ensure_future(self._handle(conn, msg))
        except (P.FramingError, ConnectionError):
            pass
        finally:
            if conn in self.conns:
                self.conns.remove(conn)
            for fut in conn.acks.values():
                if not fut.done():
                    fut.set_result(None)
            writer.close()

    async def _handle(self, conn: Conn, msg: dict[str, Any]) -> None:
        try:
            P.validate(msg, P.CLIENT_REQUESTS)
            op = msg["op"]
            if op in self.delay:
                await asyncio.sleep(self.delay[op])
            await self.paused.wait()
            if conn.port != self.leader_port:
                raise _NotLeader(self._not_leader(msg["id"]))
            if self.bounce and op != "IDENTIFY":
                self.bounce -= 1
                raise _NotLeader(self._not_leader(msg["id"], f"127.0.0.1:{conn.port}"))
            if op in self.inject:
                raise P.BadRequest(self.inject.pop(op), "injected", msg["id"])
            reply = await getattr(self, "op_" + op.lower())(conn, msg)
        except P.BadRequest as exc:
            reply = P.reply_error(exc.request_id, exc.code, exc.reason)
        except _NotLeader as exc:
            reply = exc.reply
        await self.paused.wait()
        if conn in self.conns:
            self._send(conn, reply)

    def _fail(self, msg: dict[str, Any], code: int, text: str = "") -> None:
        raise P.BadRequest(code, text or P.default_text(code), msg["id"])

    def _snap_of(self, conn: Conn, msg: dict[str, Any]) -> Snap | None:
        if conn.volume is None:
            self._fail(msg, P.ErrorCode.NOT_IDENTIFIED)
        if conn.volume == P.ORIGIN:
            return None
        snap = self.snaps.get(conn.volume)
        if snap is None:
            self._fail(msg, P.ErrorCode.SNAPSHOT_DELETED)
        return snap

    def _chunks(self, msg: dict[str, Any]) -> list[int]:
        chunks = list(P.expand_ranges(msg["ranges"]))
        if chunks and chunks[-1] >= self.chunks:
            self._fail(msg, P.ErrorCode.OUT_OF_RANGE)
        return chunks

    def _alloc(self) -> int:
        if self.free:
            return self.free.pop()
        self.next_store += 1
        return self.next_store - 1

    def _copy(self, src_fd: int, src_chunk: int, dst_chunk: int) -> None:
        data = os.pread(src_fd, self.cs, src_chunk * self.cs)
        os.pwrite(self.fd_store, data.ljust(self.cs, b"\0"), dst_chunk * self.cs)

    # -------------------------------------------------------------- data ops

    async def op_identify(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        if conn.volume is not None:
            self._fail(msg, P.ErrorCode.ALREADY_IDENTIFIED)
        vol = msg["volume"]
        info = None
        if vol != P.ORIGIN:
            snap = next((s for s in self.snaps.values() if vol in (s.name, s.tag)), None)
            if snap is None:
                self._fail(msg, P.ErrorCode.UNKNOWN_SNAPSHOT)
            vol = snap.name
            info = P.snapshot_info(snap.name, snap.tag, snap.created)
        conn.volume, conn.client_id = vol, msg["client_id"]
        return P.identify_ok(msg["id"], chunk_size=self.cs, origin_chunks=self.chunks,
                             origin_bytes=self.origin_bytes, store_uuid=self.uuid,
                             server_epoch=self.epoch, lease_ms=self.lease_ms, snapshot=info)

    async def op_ping(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        self._snap_of(conn, msg) if conn.volume != P.ORIGIN else None
        return P.pong(msg["id"])

    async def op_query_write(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        snap = self._snap_of(conn, msg)
        chunks = self._chunks(msg)
        if snap is None:
            await self._wait_locks(set(chunks))
            for c in chunks:
                lacking = [s for s in self.snaps.values() if c not in s.map]
                if lacking:
                    dst = self._alloc()
                    self._copy(self.fd_origin, c, dst)
                    for s in lacking:
                        s.map[c] = dst
                    self.refs[dst] = {s.name for s in lacking}
                self.written_since_start.add(c)
            return P.write_ok(msg["id"])
        pairs = []
        for c in chunks:
            old = snap.map.get(c)
            if old is None or self.refs[old] != {snap.name}:
                dst = self._alloc()
                if old is None:
                    await self._wait_locks({c})
                    self._copy(self.fd_origin, c, dst)
                else:
                    self._copy(self.fd_store, old, dst)
                    self.refs[old].discard(snap.name)
                snap.map[c] = dst
                self.refs[dst] = {snap.name}
            pairs.append((c, snap.map[c]))
        return P.snapshot_write_ok(msg["id"], P.compress_mapping(pairs))

    async def _wait_locks(self, chunks: set[int]) -> None:
        """Origin writes wait for read locks; break them once their lease has run out."""
        while True:
            held = [(c, lid) for c in self.conns for lid, ch in c.locks.items()
                    if ch & chunks and lid not in c.broken]
            if not held:
                return
            now = time.monotonic()
            for c, lid in held:
                if now - c.lock_time[lid] > self.lease_ms / 1000:
                    c.broken.add(lid)
            await asyncio.sleep(0.005)

    async def op_query_snapshot_read(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        snap = self._snap_of(conn, msg)
        if snap is None:
            self._fail(msg, P.ErrorCode.BAD_REQUEST, "origin reads need no server")
        chunks = self._chunks(msg)
        origin = [c for c in chunks if c not in snap.map]
        store = [(c, snap.map[c]) for c in chunks if c in snap.map]
        if origin:
            conn.locks[msg["id"]] = set(origin)
            conn.lock_time[msg["id"]] = time.monotonic()
        return P.snapshot_read_ok(msg["id"], P.compress_ranges(origin),
                                  P.compress_mapping(store), self.lease_ms)

    async def op_finish_snapshot_read(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        lock = msg["lock"]
        if lock not in conn.locks:
            self._fail(msg, P.ErrorCode.UNKNOWN_LOCK)
        del conn.locks[lock]
        valid = lock not in conn.broken
        conn.broken.discard(lock)
        return P.finish_ok(msg["id"], valid)

    async def op_list_volumes(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        return P.volumes(msg["id"], [{"name": s.name, "tag": s.tag, "created": s.created,
                                      "squashed": False} for s in self.snaps.values()])

    async def op_detach(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        return P.detach_ok(msg["id"])

    async def op_ack_advice(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        fut = conn.acks.pop(msg["advice"], None)
        if fut is None:
            self._fail(msg, P.ErrorCode.BAD_REQUEST, "unknown advice")
        fut.set_result(None)
        return P.ack_ok(msg["id"])

    # -------------------------------------------------------------- admin

    async def _advise(self, conns: list[Conn], kind: str, name: str) -> None:
        waits = []
        for c in conns:
            aid = self.next_advice
            self.next_advice += 1
            fut = asyncio.get_running_loop().create_future()
            c.acks[aid] = fut
            waits.append(fut)
            self._send(c, P.advice(aid, kind, name, self.lease_ms))
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits), self.lease_ms / 1000 * 2)

    async def create_snapshot(self, name: str, tag: int | None = None) -> dict[str, Any]:
        if name in self.snaps or tag in {s.tag for s in self.snaps.values()}:
            raise P.BadRequest(P.ErrorCode.SNAPSHOT_EXISTS, name)
        if tag is None:
            tag = self.next_tag
        self.next_tag = max(self.next_tag, tag + 1)
        snap = Snap(name, tag, time.time())
        self.snaps[name] = snap
        await self._advise([c for c in self.conns if c.volume == P.ORIGIN],
                           "NEW_SNAPSHOT", name)
        return P.snapshot_info(name, tag, snap.created)

    async def delete_snapshot(self, ref: str | int) -> None:
        snap = next((s for s in self.snaps.values() if ref in (s.name, s.tag)), None)
        if snap is None:
            raise P.BadRequest(P.ErrorCode.UNKNOWN_SNAPSHOT, str(ref))
        await self._advise([c for c in self.conns if c.volume == snap.name],
                           "DELETE_SNAPSHOT", snap.name)
        del self.snaps[snap.name]
        for st in set(snap.map.values()):
            self.refs[st].discard(snap.name)
            if not self.refs[st]:
                del self.refs[st]
                self.free.append(st)

    async def _serve_control(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        framer = P.Framer()
        while data := await reader.read(65536):
            for msg in framer.feed_many(data):
                writer.write(P.encode(await self._control(msg)))
        writer.close()

    async def _control(self, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            P.validate(msg, P.CONTROL_REQUESTS)
            op, rid = msg["op"], msg["id"]
            if op == "CREATE_SNAPSHOT":
                return P.ok(rid, await self.create_snapshot(msg["name"], msg.get("tag")))
            if op == "DELETE_SNAPSHOT":
                return P.ok(rid, await self.delete_snapshot(msg["snapshot"]))
            if op == "LIST_SNAPSHOTS":
                return P.ok(rid, [{"name": s.name, "tag": s.tag, "created": s.created,
                                   "priority": 0} for s in self.snaps.values()])
            if op == "STATUS":
                return P.ok(rid, {"store": {"used_chunks": len(self.refs), "chunk_size": self.cs,
                                            "total_bytes": 1 << 20},
                                  "snapshots": [{"name": s.name, "unique": len(s.map)}
                                                for s in self.snaps.values()],
                                  "clients": len(self.conns)})
            return P.ok(rid, None)
        except P.BadRequest as exc:
            return P.reply_error(msg.get("id", 0) if isinstance(msg, dict) else 0,
                                 exc.code, exc.reason)
