"""The server core: requests in, replies out, no sockets and no asyncio.

The net layer feeds validated messages with ``handle(conn, msg, now)`` and
calls ``flush(now)`` once per batch; ``flush`` commits the store (one journal
transaction for the whole batch: group commit) and only then returns the
replies that needed it, so no reply saying "done" leaves before its changes
are durable.  A release may produce replies for other connections (origin
writes that were waiting on the released read lock).

Everything here runs on the single store thread, so it needs no locking.

Snapshot creation follows the original design: every origin connection is
sent a NEW_SNAPSHOT advice, must finish the writes it holds approval for,
drop its cache of unique chunks and acknowledge; new origin queries wait
meanwhile.  A connection that does not acknowledge within the advice timeout
is disconnected.  Safety never depends on that client behaving afterwards: the
store's grant table (store/grants.py) remembers every origin chunk approved
to a client that has not let go of its approvals, and the new snapshot gets
its own copy of each of those chunks before the create completes, so a late
write by a stalled client can only reach the origin.  Deleting a snapshot
revokes its clients the same way; its chunks are never freed while a client
that may still write them (a writer grant) has not let go.

Read locks have a fixed maximum hold time (``lock_lease``), counted from the
grant and never extended: a reader that keeps its connection alive but never
finishes cannot block origin writes for longer than that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnapd.engine import locks as lk
from csnapd.engine.devices import DeviceVerifier
from csnapd.engine.watch import DeviceWatch
from csnapd.store import errors as se
from csnapd.store import format as fmt
from csnapd.store.store import Store
from csnapd.store.walk import snapshot_usage

log = logging.getLogger("csnapd.engine")

Out = tuple[int, dict[str, Any]]  # (connection id, message)


@dataclass
class Conn:
    """One data or control connection."""

    id: int
    control: bool = False
    peer: str = ""
    client_id: int | None = None
    slot: int | None = None  # None: origin (or not identified yet)
    snap_name: str = ""
    identified: bool = False
    read_only: bool = False
    privileged: bool = True  # control connections: may change snapshots or stop the server


@dataclass
class Advice:
    """A snapshot create or delete waiting for connections to acknowledge."""

    advice_id: int
    kind: str
    name: str
    reply_to: tuple[int, int]
    deadline: float
    awaiting: set[int] = field(default_factory=set)
    entry: fmt.SnapEntry | None = None
    tag: int | None = None
    priority: int = 0


_STORE_ERRORS: list[tuple[type[Exception], int]] = [
    (se.OutOfRange, ErrorCode.OUT_OF_RANGE),
    (se.StoreFullError, ErrorCode.STORE_FULL),
    (se.NoSuchSnapshot, ErrorCode.UNKNOWN_SNAPSHOT),
    (se.SnapshotExists, ErrorCode.SNAPSHOT_EXISTS),
    (se.TooManySnapshots, ErrorCode.LIMIT_EXCEEDED),
    (se.LimitError, ErrorCode.LIMIT_EXCEEDED),
    (se.ReadOnlyError, ErrorCode.STORE_CORRUPT),
    (se.CorruptionError, ErrorCode.STORE_CORRUPT),
    (lk.LockLimitExceeded, ErrorCode.LIMIT_EXCEEDED),
    (lk.DuplicateRequest, ErrorCode.DUPLICATE_ID),
    (lk.InvalidRanges, ErrorCode.BAD_REQUEST),
]


class Engine:
    """Sans-IO request handling over one open store."""

    #: Read locks one client may hold at once (protocol MAX_READ_LOCKS).
    MAX_READ_LOCKS = m.MAX_READ_LOCKS
    #: Chunks one client may hold locked (or queue for) at once.
    MAX_CLIENT_LOCKED = 1 << 18
    #: Chunks all clients together may hold locked: bounds the lock table's memory.
    MAX_TOTAL_LOCKED = 1 << 21

    def __init__(self, store: Store, *, epoch: int = 1, lease: float = 10.0,
                 lock_lease: float = 30.0, advice_timeout: float | None = None,
                 now: float = 0.0, on_full: str = "squash") -> None:
        self.store, self.epoch, self.lease = store, epoch, lease
        self.advice_timeout = advice_timeout if advice_timeout is not None else 2 * lease
        self.locks = lk.LockTable(lease=lock_lease, max_client_chunks=self.MAX_CLIENT_LOCKED)
        self.conns: dict[int, Conn] = {}
        self.by_client: dict[int, int] = {}
        self._after_commit: list[Out] = []
        self._now_out: list[Out] = []
        self.closing: set[int] = set()
        self._waiting_writes: dict[tuple[int, int], dict[str, Any]] = {}
        self._space_waiters: list[tuple[int, dict[str, Any]]] = []
        self._queued_reads: dict[tuple[int, int], tuple[int, int, list[list[int]]]] = {}
        self._advice: Advice | None = None
        self._advice_queue: list[tuple[int, dict[str, Any]]] = []
        self._held_origin: list[tuple[int, dict[str, Any]]] = []
        self._next_advice = 1
        self.revoked = True  # no deletion waits for revocation
        self.shutdown_requested = False
        self.counters: dict[str, int] = {}
        if on_full not in ("squash", "fail"):
            raise ValueError("on_full must be 'squash' or 'fail'")
        self.on_full = on_full
        self.now = now
        self.revoke_until = 0.0
        self._held_wait_until = 0.0  # writers of a squashed snapshot may still let go
        self._usage: dict[int, dict[str, int]] = {}
        self._usage_at: float | None = None
        self._scan: tuple[int, dict[int, dict[str, int]]] | None = None
        self.peers: dict[int, str] = {}  # client id -> address it last came from
        self.devices = DeviceVerifier(store)  # VERIFY_DEVICES (engine/devices.py)
        self.watch = DeviceWatch(store, now)  # store or origin replaced (engine/watch.py)
        self.stopped = ""  # why serving stopped for good (a device changed), or ""

    # ------------------------------------------------------------------
    # connections
    def open_conn(self, conn_id: int, control: bool = False, peer: str = "",
                  privileged: bool = True) -> None:
        self.conns[conn_id] = Conn(conn_id, control=control, peer=peer, privileged=privileged)

    def close_conn(self, conn_id: int, now: float) -> None:
        """Forget a connection: its read locks go, waiters proceed."""
        conn = self.conns.pop(conn_id, None)
        if conn is None:
            return
        self.devices.forget(conn_id)
        if conn.client_id is not None and self.by_client.get(conn.client_id) == conn_id:
            del self.by_client[conn.client_id]
            self._events(self.locks.drop_client(conn.client_id, now))
        for key in [k for k in self._waiting_writes if k[0] == conn_id]:
            del self._waiting_writes[key]
        for key in [k for k in self._queued_reads if k[0] == conn_id]:
            del self._queued_reads[key]
        self._held_origin = [(c, msg) for c, msg in self._held_origin if c != conn_id]
        self._space_waiters = [(c, msg) for c, msg in self._space_waiters if c != conn_id]
        if self._advice and conn_id in self._advice.awaiting:
            self._advice.awaiting.discard(conn_id)
            self._advance_advice(now)

    def _disconnect(self, conn_id: int, now: float) -> None:
        """Forget a connection here and have the net layer close its socket."""
        self.close_conn(conn_id, now)
        self.closing.add(conn_id)

    # ------------------------------------------------------------------
    # dispatch
    def handle(self, conn_id: int, msg: dict[str, Any], now: float) -> None:
        """Process one validated request (replies come out of ``flush``)."""
        self.now = now
        conn = self.conns.get(conn_id)
        if conn is None:
            return
        op, rid = msg["op"], msg.get("id", 0)
        self.counters[op] = self.counters.get(op, 0) + 1
        if self.stopped:
            self._error(conn_id, rid, ErrorCode.SHUTTING_DOWN,
                        f"csnapd is stopping: {self.stopped}")
            return
        try:
            if conn.control:
                self._control(conn, op, msg, now)
            elif op == "IDENTIFY":
                self._identify(conn, msg)
            elif not conn.identified:
                self._error(conn_id, rid, ErrorCode.NOT_IDENTIFIED, "send IDENTIFY first")
            else:
                self._data(conn, op, msg, now)
        except tuple(e for e, _ in _STORE_ERRORS) as exc:
            code = next(c for e, c in _STORE_ERRORS if isinstance(exc, e))
            if isinstance(exc, se.CorruptionError):
                log.error("store corruption: %s; refusing all changes from now on", exc)
                self.store.mark_corrupt(str(exc))
            self._error(conn_id, rid, code, str(exc))

    def _data(self, conn: Conn, op: str, msg: dict[str, Any], now: float) -> None:
        rid = msg["id"]
        if op == "PING":
            self._now_out.append((conn.id, m.pong(rid)))
        elif op == "QUERY_WRITE":
            if conn.slot is None:
                self._origin_write(conn, msg, now)
            else:
                self._snapshot_write(conn, msg)
        elif op == "QUERY_SNAPSHOT_READ":
            if conn.slot is None:  # origin reads need no server (protocol.md)
                self._error(conn.id, rid, ErrorCode.BAD_REQUEST,
                            "QUERY_SNAPSHOT_READ needs a snapshot volume")
            else:
                self._snapshot_read(conn, msg, now)
        elif op == "QUERY_MAP":
            if conn.slot is None:
                self._error(conn.id, rid, ErrorCode.UNKNOWN_OP, "QUERY_MAP needs a snapshot volume")
            elif not self._snapshot_gone(conn, rid):
                _, store = self._read_map(conn.slot, msg["ranges"])
                self._after_commit.append((conn.id, m.map_ok(rid, store)))
        elif op == "VERIFY_DEVICES":
            self._now_out.append((conn.id, self.devices.verify(conn.id, rid, msg["origin"])))
        elif op == "LIST_VOLUMES":
            self._now_out.append((conn.id, m.volumes(rid, [
                {k: d[k] for k in ("name", "tag", "created", "squashed")}
                for d in self.list_snapshots()])))
        elif op == "FINISH_SNAPSHOT_READ":
            valid, events = self.locks.release(conn.client_id, msg["lock"], msg.get("ranges"), now)
            self._now_out.append((conn.id, m.finish_ok(rid, valid)))
            self._events(events)
        elif op == "ACK_ADVICE":
            self._now_out.append((conn.id, m.ack_ok(rid)))
            adv = self._advice
            if adv and adv.advice_id == msg["advice"] and conn.id in adv.awaiting:
                self._let_go(conn, adv)
                adv.awaiting.discard(conn.id)
                self._advance_advice(now)
        elif op == "DETACH":
            if self.store.grants.clear_client(conn.client_id):
                log.info("client %d detached: its grants are void", conn.client_id)
            self._after_commit.append((conn.id, m.detach_ok(rid)))
        else:
            self._error(conn.id, rid, ErrorCode.UNKNOWN_OP, f"{op} is not a data request")

    def _error(self, conn_id: int, rid: int, code: int, text: str) -> None:
        self._now_out.append((conn_id, m.reply_error(rid, code, text)))

    def _let_go(self, conn: Conn, adv: Advice) -> None:
        """An acknowledged advice: the client finished and dropped what it revokes."""
        grants = self.store.grants
        if adv.kind == "NEW_SNAPSHOT" and conn.slot is None:
            grants.clear_origin(conn.client_id)
        elif adv.kind == "DELETE_SNAPSHOT" and adv.entry is not None \
                and conn.slot == adv.entry.slot:
            grants.clear_writer(conn.client_id, conn.slot)

    # ------------------------------------------------------------------
    # identify
    def _identify(self, conn: Conn, msg: dict[str, Any]) -> None:
        rid = msg["id"]
        if conn.identified:
            self._error(conn.id, rid, ErrorCode.ALREADY_IDENTIFIED, "already identified")
            return
        if msg["version"] != m.PROTOCOL_VERSION:
            self._error(conn.id, rid, ErrorCode.VERSION_MISMATCH,
                        f"server speaks protocol {m.PROTOCOL_VERSION}, not {msg['version']}")
            return
        if msg.get("clean") and self.store.grants.clear_client(msg["client_id"]):
            log.info("client %d came back clean: its earlier grants are void", msg["client_id"])
        volume, snap = msg["volume"], None
        if volume != "origin":
            snap = self._find_snapshot(volume)
            if snap is None:
                return self._error(conn.id, rid, ErrorCode.UNKNOWN_SNAPSHOT,
                                   f"no snapshot {volume!r}")
            if snap.squashed:
                return self._error(conn.id, rid, ErrorCode.SNAPSHOT_SQUASHED,
                                   f"snapshot {snap.name!r} was squashed to free store space")
        old = self.by_client.get(msg["client_id"])
        if old is not None and old != conn.id:
            log.info("client %d reconnected; dropping its old connection", msg["client_id"])
            self._disconnect(old, 0.0)
        conn.client_id, conn.identified = msg["client_id"], True
        conn.read_only = bool(msg.get("read_only", False))
        self.by_client[conn.client_id] = conn.id
        self.peers[conn.client_id] = conn.peer
        info = None
        if snap is not None:
            conn.slot, conn.snap_name = snap.slot, snap.name
            info = m.snapshot_info(snap.name, snap.tag, snap.created_ns / 1e9)

        f = self.store.sb
        self._now_out.append((conn.id, m.identify_ok(
            rid, chunk_size=f.chunk_size, origin_chunks=f.origin_chunks,
            origin_bytes=f.origin_bytes, store_uuid=f.uuid.hex(), server_epoch=self.epoch,
            lease_ms=int(self.lease * 1000), snapshot=info, read_only=conn.read_only,
            devices=self.devices.offer(conn.id))))
        if snap is None:
            self._join_advice(conn)
        log.info("client %d identified for %s from %s", conn.client_id,
                 conn.snap_name or "origin", conn.peer)

    def _join_advice(self, conn: Conn) -> None:
        """An origin client that still holds approvals arrives during a create: advise it."""
        adv = self._advice
        if adv is None or adv.kind != "NEW_SNAPSHOT" or \
                not self.store.grants.exposure(conn.client_id):
            return
        adv.awaiting.add(conn.id)
        self._now_out.append((conn.id, m.advice(adv.advice_id, adv.kind, adv.name,
                                                int(self.lease * 1000))))

    def _find_snapshot(self, ident: str | int) -> fmt.SnapEntry | None:
        try:
            return self.store.snaps.find(ident)
        except se.NoSuchSnapshot:
            if isinstance(ident, str) and ident.isdigit():
                try:
                    return self.store.snaps.find(int(ident))
                except se.NoSuchSnapshot:
                    return None
            return None

    def _snapshot_gone(self, conn: Conn, rid: int) -> bool:
        """Refuse requests of a snapshot that was deleted or squashed."""
        entry = self.store.snaps.entries[conn.slot]
        if entry.state == fmt.SNAP_LIVE and entry.name == conn.snap_name and not entry.squashed:
            return False
        code = ErrorCode.SNAPSHOT_SQUASHED if entry.squashed else ErrorCode.SNAPSHOT_DELETED
        self._error(conn.id, rid, code, f"snapshot {conn.snap_name!r} is gone")
        return True

    # ------------------------------------------------------------------
    # origin writes
    def _origin_write(self, conn: Conn, msg: dict[str, Any], now: float) -> None:
        if conn.read_only:
            self._error(conn.id, msg["id"], ErrorCode.READ_ONLY, "this identity is read-only")
            return
        if self._advice is not None and self._advice.kind == "NEW_SNAPSHOT":
            self._held_origin.append((conn.id, msg))
            return
        rid, ranges = msg["id"], msg["ranges"]
        try:
            self.store.origin_write(ranges)
        except se.StoreFullError as exc:
            if not self._make_room(exc, now):
                raise
            self._space_waiters.append((conn.id, msg))
            return
        # Granted from now on, even if the reply must wait for read locks: the
        # grant is durable with the copy-out's commit, and a snapshot created
        # later copies these chunks out unless the client lets go first.
        self.store.grants.add_origin(conn.client_id, ranges)
        if self.locks.wait_write(conn.client_id, rid, ranges):
            self._approve(conn.id, msg)
        else:
            self._waiting_writes[(conn.id, rid)] = msg

    def _approve(self, conn_id: int, msg: dict[str, Any]) -> None:
        """WRITE_OK: from now on the client may write these chunks without asking."""
        self._after_commit.append((conn_id, m.write_ok(msg["id"])))

    def _make_room(self, exc: se.StoreFullError, now: float) -> bool:
        """Store full under ``--on-full squash``: True if the write should wait for space.

        Space that deletes and earlier squashes will free comes back through the
        background pass; only when none is coming is another snapshot squashed:
        the lowest priority, then the oldest, of those that need the copy.
        """
        if self.on_full != "squash":
            return False
        if self._space_coming(now):
            return True  # freed chunks are on their way
        victims = self.store.snapshots_needing(exc.chunk) if exc.chunk is not None else []
        if not victims:
            return False
        self._squash(min(victims, key=lambda e: (e.priority, e.created_ns)), now)
        return True

    def _space_coming(self, now: float) -> bool:
        """Will deletes or squashes already decided free space soon?

        A pass that still runs will.  So may a squashed snapshot whose writers were
        just cut off: its chunks are held until they let go, which a live client does
        when it reconnects (for up to the advice timeout).
        """
        if self.store.deleting:
            return True
        return bool(self.store.held_deleting) and now < self._held_wait_until

    def _retry_space_waiters(self, now: float) -> None:
        """Space came back (a delete pass slice ran): try the parked origin writes again."""
        waiters, self._space_waiters = self._space_waiters, []
        for conn_id, msg in waiters:
            self.handle(conn_id, msg, now)

    def _squash(self, entry: fmt.SnapEntry, now: float) -> None:
        """Store full: sacrifice a snapshot so the origin write can go on."""
        log.warning("store full: squashing snapshot %s (tag %d, priority %d) so origin writes "
                    "can proceed; its space will be reclaimed", entry.name, entry.tag,
                    entry.priority)
        self.store.squash_snapshot(entry)
        self.counters["squashed"] = self.counters.get("squashed", 0) + 1
        for conn in list(self.conns.values()):
            if conn.slot == entry.slot and not conn.control:
                self._now_out.append((conn.id, m.reply_error(
                    0, ErrorCode.SNAPSHOT_SQUASHED,
                    f"snapshot {entry.name!r} was squashed to free store space")))
                self._disconnect(conn.id, now)
        # a cut-off client of that snapshot stops using its cache after one lease
        self.revoke_until = max(self.revoke_until, now + self.lease)
        self._held_wait_until = max(self._held_wait_until, now + self.advice_timeout)

    # ------------------------------------------------------------------
    # snapshot I/O
    def _snapshot_write(self, conn: Conn, msg: dict[str, Any]) -> None:
        rid = msg["id"]
        if conn.read_only:
            return self._error(conn.id, rid, ErrorCode.READ_ONLY, "this identity is read-only")
        if self._snapshot_gone(conn, rid):
            return
        pairs = self.store.snapshot_write(conn.slot, msg["ranges"])
        self.store.grants.add_writer(conn.client_id, conn.slot)
        self._after_commit.append((conn.id, m.snapshot_write_ok(rid, m.compress_mapping(pairs))))

    def _snapshot_read(self, conn: Conn, msg: dict[str, Any], now: float) -> None:
        rid = msg["id"]
        if self._snapshot_gone(conn, rid):
            return
        origin, store = self._read_map(conn.slot, msg["ranges"])
        if not origin:
            self._after_commit.append((conn.id, self._read_reply(rid, origin, store)))
            return
        if self.locks.held_lock_count(conn.client_id) >= self.MAX_READ_LOCKS:
            return self._error(conn.id, rid, ErrorCode.LIMIT_EXCEEDED,
                               f"more than {self.MAX_READ_LOCKS} read locks held; finish some")
        if self.locks.held_chunks + m.count_chunks(origin) > self.MAX_TOTAL_LOCKED:
            return self._error(conn.id, rid, ErrorCode.BUSY,
                               "too many chunks read-locked server-wide; retry later")
        result = self.locks.acquire_read(conn.client_id, rid, origin, now)
        if isinstance(result, lk.ReadGrant):
            self._after_commit.append((conn.id, self._read_reply(rid, origin, store)))
        else:
            self._queued_reads[(conn.id, rid)] = (conn.id, conn.slot, msg["ranges"])

    def _read_map(self, slot: int, ranges: list[list[int]]) -> tuple[list, list]:
        pairs = self.store.snapshot_map(slot, ranges)
        origin = m.compress_ranges(c for c, s in pairs if s is None)
        store = m.compress_mapping((c, s) for c, s in pairs if s is not None)
        return origin, store

    def _read_reply(self, rid: int, origin: list, store: list) -> dict[str, Any]:
        return m.snapshot_read_ok(rid, origin, store, int(self.locks.lease * 1000)
                                  if self.locks.lease else 0)

    # ------------------------------------------------------------------
    # lock events
    def _events(self, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, lk.WriteReady):
                conn_id = self.by_client.get(ev.client)
                msg = self._waiting_writes.pop((conn_id, ev.write_id), None)
                if msg is None:
                    continue
                if self._advice is not None and self._advice.kind == "NEW_SNAPSHOT":
                    # approving it now would let it write a chunk the new snapshot
                    # shares: decide again once the snapshot exists
                    self._held_origin.append((conn_id, msg))
                else:
                    self._approve(conn_id, msg)
            elif isinstance(ev, lk.ReadGranted):
                self._granted(ev)
            elif isinstance(ev, lk.LockBroken):
                self.counters["locks_broken"] = self.counters.get("locks_broken", 0) + 1
                log.warning("read lock %s of client %s broken: held past its %.1fs maximum "
                            "hold time", ev.lock_id, ev.client, self.locks.lease or 0.0)

    def _granted(self, ev: lk.ReadGranted) -> None:
        conn_id = self.by_client.get(ev.client)
        queued = self._queued_reads.pop((conn_id, ev.lock_id), None)
        if queued is None:
            return
        _, slot, ranges = queued
        origin, store = self._read_map(slot, ranges)
        locked = set(m.expand_ranges([list(r) for r in ev.ranges]))
        moved = m.compress_ranges(sorted(c for c in m.expand_ranges([[a, n] for a, n, _ in store])
                                         if c in locked))
        if moved:
            _, events = self.locks.release(ev.client, ev.lock_id, moved)
            self._events(events)
        self._after_commit.append((conn_id, self._read_reply(ev.lock_id, origin, store)))

    # ------------------------------------------------------------------
    # control socket
    def _control(self, conn: Conn, op: str, msg: dict[str, Any], now: float) -> None:
        rid = msg["id"]
        if op in ("SHUTDOWN", "CREATE_SNAPSHOT", "DELETE_SNAPSHOT", "FORGET_CLIENT") \
                and not conn.privileged:
            log.warning("refused %s from %s: only root or the server's user may", op, conn.peer)
            self._error(conn.id, rid, ErrorCode.PERMISSION_DENIED,
                        f"{op} needs root or the server's own user")
            return
        if op == "LIST_SNAPSHOTS":
            self._now_out.append((conn.id, m.ok(rid, self.list_snapshots())))
        elif op == "STATUS":
            self._now_out.append((conn.id, m.ok(rid, self.status())))
        elif op == "SHUTDOWN":
            self.shutdown_requested = True
            self._now_out.append((conn.id, m.ok(rid, "shutting down")))
        elif op == "FORGET_CLIENT":
            self._forget_client(conn, msg)
        elif op in ("CREATE_SNAPSHOT", "DELETE_SNAPSHOT"):
            if self._advice is not None:
                self._advice_queue.append((conn.id, msg))
            else:
                self._start_advice(conn.id, msg, now)
        else:
            self._error(conn.id, rid, ErrorCode.UNKNOWN_OP, f"{op} is not a control request")

    def _forget_client(self, conn: Conn, msg: dict[str, Any]) -> None:
        """The operator vouches that a client can write no more (its host is fenced)."""
        client = msg["client_id"]
        if client in self.by_client:
            self._error(conn.id, msg["id"], ErrorCode.BAD_REQUEST,
                        f"client {client} is connected; it lets go of its grants by itself")
            return
        found = self.store.grants.clear_client(client)
        if found:
            log.warning("operator released every grant of client %d (from %s): its cached "
                        "approvals are now void", client, self.peers.get(client, "unknown"))
        self._after_commit.append((conn.id, m.ok(msg["id"], {"client_id": client,
                                                             "forgotten": found})))

    def _start_advice(self, conn_id: int, msg: dict[str, Any], now: float) -> None:
        rid = msg["id"]
        try:
            if msg["op"] == "CREATE_SNAPSHOT":
                self._begin_create(conn_id, msg, now)
            else:
                self._begin_delete(conn_id, msg, now)
        except tuple(e for e, _ in _STORE_ERRORS) as exc:
            code = next(c for e, c in _STORE_ERRORS if isinstance(exc, e))
            self._error(conn_id, rid, code, str(exc))
            self._next_queued_advice(now)

    def _begin_create(self, conn_id: int, msg: dict[str, Any], now: float) -> None:
        name = msg["name"]
        if any(e.name == name for e in self.store.snaps.visible()):
            raise se.SnapshotExists(f"a snapshot named {name!r} exists")
        adv = Advice(self._next_advice, "NEW_SNAPSHOT", name, (conn_id, msg["id"]),
                     now + self.advice_timeout, tag=msg.get("tag"),
                     priority=msg.get("priority") or 0)
        adv.awaiting = {c.id for c in self.conns.values()
                        if c.identified and c.slot is None and not c.control}
        self._send_advice(adv)

    def _begin_delete(self, conn_id: int, msg: dict[str, Any], now: float) -> None:
        ident = msg["snapshot"]
        entry = self._find_snapshot(ident)
        if entry is None:
            raise se.NoSuchSnapshot(f"no snapshot {ident!r}")
        self.store.delete_snapshot(entry.name)
        adv = Advice(self._next_advice, "DELETE_SNAPSHOT", entry.name, (conn_id, msg["id"]),
                     now + self.advice_timeout, entry=entry)
        adv.awaiting = {c.id for c in self.conns.values() if c.slot == entry.slot}
        self.revoked = False
        self._send_advice(adv)

    def _send_advice(self, adv: Advice) -> None:
        self._next_advice += 1
        self._advice = adv
        msg = m.advice(adv.advice_id, adv.kind, adv.name, int(self.lease * 1000))
        for conn_id in adv.awaiting:
            self._now_out.append((conn_id, msg))
        log.info("%s %s: waiting for %d client(s) to acknowledge", adv.kind, adv.name,
                 len(adv.awaiting))
        self._advance_advice(0.0)

    def _advance_advice(self, now: float) -> None:
        adv = self._advice
        if adv is None or adv.awaiting:
            return
        self._advice = None
        conn_id, rid = adv.reply_to
        if adv.kind == "NEW_SNAPSHOT":
            try:
                entry = self._create(adv)
                self._after_commit.append((conn_id, m.ok(rid, self._snap_dict(entry))))
                log.info("created snapshot %s (tag %d, slot %d)", entry.name, entry.tag, entry.slot)
            except tuple(e for e, _ in _STORE_ERRORS) as exc:
                code = next(c for e, c in _STORE_ERRORS if isinstance(exc, e))
                self._error(conn_id, rid, code, str(exc))
            held, self._held_origin = self._held_origin, []
            for held_conn, msg in held:
                self.handle(held_conn, msg, now)
        else:
            self.revoked = True
            self._after_commit.append((conn_id, m.ok(rid, {"deleted": adv.name})))
            log.info("deleted snapshot %s; freeing its chunks in the background", adv.name)
        self._next_queued_advice(now)

    def _create(self, adv: Advice) -> fmt.SnapEntry:
        """Make the snapshot; first give it its own copy of every exposed chunk.

        Clients that did not acknowledge (or are not even connected) may still
        write the chunks approved to them without asking.  Copying those chunks
        for the new snapshot before it exists for anyone means a late write can
        only change the origin.  The copies may take several commits, so the
        snapshot is CREATING (invisible) until the last one; a crash before that
        leaves it to be deleted at the next open.
        """
        store, grants = self.store, self.store.grants
        exposed = [(c, grants.exposure(c)) for c in grants.exposed_clients()]
        exposed = [(c, runs) for c, runs in exposed if runs]
        if not exposed:
            return store.create_snapshot(adv.name, adv.tag, adv.priority)
        union: list[tuple[int, int]] = sorted(r for _, runs in exposed for r in runs)
        chunks = sum(n for _, n in union)
        log.warning("snapshot %s: %d client(s) may still write %d approved chunk(s) without "
                    "asking (%s); copying them for the snapshot first", adv.name, len(exposed),
                    chunks, ", ".join(f"client {c} from {self.peers.get(c, 'unknown')}"
                                      for c, _ in exposed[:8]))
        entry = store.create_snapshot(adv.name, adv.tag, adv.priority, creating=True)
        try:
            for start, count in union:
                store.origin_write([(start, count)], extra=1 << entry.slot)
        except se.StoreFullError as exc:
            store.abandon_create()
            raise se.StoreFullError(
                f"cannot create {adv.name!r}: no room to copy the {chunks} chunk(s) that "
                f"unresponsive clients may still write ({exc})") from None
        store.make_live(entry)
        self.counters["cutoff_copies"] = self.counters.get("cutoff_copies", 0) + chunks
        return entry

    def _next_queued_advice(self, now: float) -> None:
        if self._advice is None and self._advice_queue:
            conn_id, msg = self._advice_queue.pop(0)
            if conn_id in self.conns:
                self._start_advice(conn_id, msg, now)

    # ------------------------------------------------------------------
    # time and batches
    def tick(self, now: float) -> None:
        """Expire leases and advice deadlines; stop if a device was replaced."""
        self.now = now
        reason = None if self.stopped else self.watch.due(now)
        if reason:
            self.stop_serving(reason)
        self._events(self.locks.expire(now))
        adv = self._advice
        if adv is not None and now >= adv.deadline and adv.awaiting:
            log.warning("%s %s: disconnecting %d client(s) that did not acknowledge in time",
                        adv.kind, adv.name, len(adv.awaiting))
            for conn_id in list(adv.awaiting):
                self._disconnect(conn_id, now)
            self._advance_advice(now)

    def flush(self, now: float) -> list[Out]:
        """Commit the batch; return every reply that may now be sent."""
        out, self._now_out = self._now_out, []
        done, self._after_commit = self._after_commit, []
        try:
            if done or self.store.has_changes():
                self.store.commit()
        except (se.StoreError, OSError) as exc:
            # nothing in this batch is durable: every "done" becomes an error
            log.error("commit failed: %s", exc)
            if not self.store.failed:
                self.store.mark_corrupt(str(exc))
            code = (ErrorCode.STORE_CORRUPT if isinstance(exc, se.StoreError)
                    else ErrorCode.INTERNAL)
            done = [(conn_id, m.reply_error(msg["id"], code, f"not done: {exc}"))
                    for conn_id, msg in done if msg.get("id")]
        out.extend(done)
        return out

    def stop_serving(self, reason: str) -> None:
        """A device is not the one this server opened: never change anything again.

        Runs on the store thread, so no commit is in progress. The store is detached
        first (it writes nothing from now on, not even a flag: the device may be someone
        else's), then every request still waiting is answered SHUTTING_DOWN naming the
        reason, and the server is asked to shut down (the daemon then exits non-zero).
        """
        log.error("%s; refusing all changes and stopping", reason)
        self.stopped = reason
        self.store.detach(reason)
        text = f"not done: csnapd is stopping: {reason}"
        waiting = [(c, msg["id"]) for c, msg in self._after_commit if msg.get("id")]
        waiting += list(self._waiting_writes) + list(self._queued_reads)
        waiting += [(c, msg["id"]) for c, msg in
                    self._held_origin + self._advice_queue + self._space_waiters]
        if self._advice is not None:
            waiting.append(self._advice.reply_to)
        self._after_commit, self._held_origin, self._advice_queue = [], [], []
        self._space_waiters = []
        self._waiting_writes.clear()
        self._queued_reads.clear()
        self._advice = None
        for conn_id, rid in waiting:
            self._error(conn_id, rid, ErrorCode.SHUTTING_DOWN, text)
        self.shutdown_requested = True

    def background(self, budget_leaves: int = 4) -> bool:
        """Run a slice of background work (deletion, usage scan); True while more remains."""
        more = False
        if self.stopped:
            return False
        if self._scan is not None:
            more = self._scan_step(4 * budget_leaves)
        if self.revoked and self.store.deleting and self.now >= self.revoke_until:
            more = self.store.delete_step(budget_leaves) or more
            self.store.commit()
            if self._space_waiters:
                self._retry_space_waiters(self.now)
        elif self._space_waiters and not self._space_coming(self.now):
            self._retry_space_waiters(self.now)  # nothing more is coming: squash or fail
        return more or bool(self._after_commit or self._now_out)

    def _scan_step(self, leaves: int) -> bool:
        """Count per-snapshot usage a few leaves at a time (large stores)."""
        cursor, acc = self._scan
        cursor, done = self.store.usage_step(cursor, leaves, acc)
        if done:
            self._usage, self._usage_at, self._scan = acc, self.now, None
            return False
        self._scan = (cursor, acc)
        return True

    # ------------------------------------------------------------------
    # reporting
    def _snap_dict(self, e: fmt.SnapEntry) -> dict[str, Any]:
        return {"name": e.name, "tag": e.tag, "slot": e.slot, "created": e.created_ns / 1e9,
                "priority": e.priority, "squashed": e.squashed}

    def list_snapshots(self) -> list[dict[str, Any]]:
        return [self._snap_dict(e) for e in self.store.snaps.visible()]

    #: Up to this many exceptions, status counts usage on the spot; above, in the background.
    SYNC_USAGE_LIMIT = 100_000
    USAGE_MAX_AGE = 30.0

    def _usage_now(self) -> tuple[dict[int, dict[str, int]], dict[str, Any]]:
        if self.store.sb.exceptions <= self.SYNC_USAGE_LIMIT:
            return snapshot_usage(self.store), {"usage_age_s": 0.0}
        stale = self._usage_at is None or self.now - self._usage_at > self.USAGE_MAX_AGE
        if stale and self._scan is None:
            self._scan = (0, {})
        info: dict[str, Any] = {"usage_age_s": (None if self._usage_at is None
                                                 else round(self.now - self._usage_at, 1))}
        if self._scan is not None:
            info["usage_scan_cursor"] = self._scan[0]
        return self._usage, info

    def status(self) -> dict[str, Any]:
        usage, usage_info = self._usage_now()
        snaps = []
        for d in self.list_snapshots():
            u = usage.get(d["slot"], {"unique": 0, "shared": 0})
            snaps.append({**d, **u})
        stats = self.locks.stats()
        clients = [{"client_id": c.client_id, "volume": c.snap_name or "origin", "peer": c.peer}
                   for c in self.conns.values() if c.identified]
        return {
            "store": self.store.status(), "snapshots": snaps, "clients": clients,
            "locks": {"held_locks": stats.held_locks, "held_chunks": stats.held_chunks,
                      "queued_reads": stats.queued_reads, "waiting_writes": stats.waiting_writes,
                      "broken": self.counters.get("locks_broken", 0)},
            "unproven_clients": self.unproven_clients(),
            "operations": self._operations(), "requests": dict(self.counters),
            **usage_info,
        }

    def unproven_clients(self) -> list[dict[str, Any]]:
        """Disconnected clients whose grants stand (they may still write without asking).

        Each costs copy-outs at every snapshot create (origin exposure) or keeps a
        deleted snapshot's space (writer grants) until it comes back, or the
        operator fences its host and runs ``csnapctl forget-client``.
        """
        grants, out = self.store.grants, []
        writers = grants.writers()
        names = {e.slot: e.name for e in self.store.snaps.entries}
        for client in sorted(grants.clients() - set(self.by_client)):
            runs = grants.exposure(client)
            out.append({"client_id": client, "peer": self.peers.get(client, "unknown"),
                        "exposed_chunks": sum(n for _, n in runs),
                        "writes_snapshots": sorted(names.get(s, str(s)) for s, cs in
                                                   writers.items() if client in cs)})
        return out

    def _operations(self) -> list[dict[str, Any]]:
        ops = []
        if self._advice is not None:
            ops.append({"operation": self._advice.kind.lower(), "snapshot": self._advice.name,
                        "waiting_for_clients": len(self._advice.awaiting)})
        progress = self.store.delete_progress()
        if progress["active"]:
            ops.append({"operation": "delete", "progress": round(progress["fraction"], 4)})
        return ops
