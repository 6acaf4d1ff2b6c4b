"""The server core: typed requests in, an outcome out; no sockets, no asyncio, no clock.

The I/O layer (``csnapd.net``) feeds each connection's :class:`Request` events from its
protocol session into ``handle(conn_id, request, now)``, plus ``open_conn``,
``close_conn``, ``tick`` and ``background``, all on the event loop. After any of them
``take()`` returns an :class:`Outcome`: replies that may go out **now**, replies that
must wait until every change made so far is **durable** (the I/O layer seals the store's
changes and has them written on the store thread, then sends those replies), connections
to close, and whether to shut down. Nothing that says "done", or that reveals a store
address, is ever in ``now``.

Requests are dispatched through a table of handlers, one per op. The concerns live in
their own modules: connections (``conns``), the snapshot create/delete advice flow
(``advice``), read locks (``locks``), the store-full policy (``space``), status and usage
(``report``), device checks (``devices``, ``watch``). Grants (``store.grants``) are what
make snapshot creation safe against stalled clients: a create copies out, for the new
snapshot, every chunk a client that did not acknowledge may still write.

Read locks have a fixed maximum hold time (``lock_lease``), counted from the grant and
never extended.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnap_client.protocol.session import Request
from csnapd.engine import locks as lk
from csnapd.engine.advice import DELETE_SNAPSHOT, NEW_CLONE, NEW_SNAPSHOT, Advice, AdviceFlow
from csnapd.engine.conns import Conn, Conns
from csnapd.engine.devices import DeviceVerifier
from csnapd.engine.growing import changes_past_base, grow, volume_chunks
from csnapd.engine.report import Reporter, snap_dict
from csnapd.engine.reverting import CLIENT as REVERT_CLIENT
from csnapd.engine.reverting import RevertFlow
from csnapd.engine.space import SpacePolicy
from csnapd.engine.watch import DeviceWatch
from csnapd.store import diff as sd
from csnapd.store import errors as se
from csnapd.store import format as fmt
from csnapd.store.grow import GrowthRefused
from csnapd.store.store import Store

log = logging.getLogger("csnapd.engine")

Out = tuple[int, dict[str, Any]]  # (connection id, message)

_STORE_ERRORS: dict[type[Exception], int] = {
    se.OutOfRange: ErrorCode.OUT_OF_RANGE,
    se.StoreFullError: ErrorCode.STORE_FULL,
    se.NoSuchSnapshot: ErrorCode.UNKNOWN_SNAPSHOT,
    se.SnapshotExists: ErrorCode.SNAPSHOT_EXISTS,
    se.SnapshotHeld: ErrorCode.SNAPSHOT_HELD,
    se.TooManySnapshots: ErrorCode.LIMIT_EXCEEDED,
    se.LimitError: ErrorCode.LIMIT_EXCEEDED,
    se.ReadOnlyError: ErrorCode.STORE_CORRUPT,
    se.CorruptionError: ErrorCode.STORE_CORRUPT,
    lk.LockLimitExceeded: ErrorCode.LIMIT_EXCEEDED,
    lk.DuplicateRequest: ErrorCode.DUPLICATE_ID,
    lk.InvalidRanges: ErrorCode.BAD_REQUEST,
    GrowthRefused: ErrorCode.BAD_REQUEST,
}
_HANDLED = tuple(_STORE_ERRORS)


def _code(exc: Exception) -> int:
    return next(c for e, c in _STORE_ERRORS.items() if isinstance(exc, e))


@dataclass(slots=True)
class Outcome:
    """What the I/O layer must do after the engine handled some input."""

    now: list[Out] = field(default_factory=list)
    durable: list[Out] = field(default_factory=list)
    close: set[int] = field(default_factory=set)
    shutdown: bool = False
    #: ``durable`` replies also wait for this store ticket: replies decided earlier (a
    #: write that waited for read locks, a delete whose clients were advised) depend on
    #: the transaction that held their change, whatever this batch did
    ticket: int = 0

    def __bool__(self) -> bool:
        return bool(self.now or self.durable or self.close or self.shutdown)


Handler = Callable[[Conn, Request, float], None]


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
        self.conns = Conns()
        self.advice = AdviceFlow()
        self.space = SpacePolicy(store, on_full, self.advice_timeout)
        self.report = Reporter(self)
        self.devices = DeviceVerifier(store)  # VERIFY_DEVICES (engine/devices.py)
        self.watch = DeviceWatch(store, now)  # store or origin replaced (engine/watch.py)
        self.stopped = ""  # why serving stopped for good (a device changed), or ""
        #: The HA election's view (role, epoch, lease left) for STATUS; None without HA.
        self.ha_status: Callable[[], dict[str, Any]] | None = None
        self.counters: dict[str, int] = {}
        self.now = now
        self.revoked = True  # no deletion waits for its clients to acknowledge
        self.revoke_until = 0.0  # a squashed snapshot's readers get one lease to notice
        self._now: list[Out] = []
        self._durable: list[Out] = []
        self._ticket = 0
        self.closing: set[int] = set()
        self.shutdown_requested = False
        self._data: dict[str, Handler] = {
            "IDENTIFY": self._identify, "QUERY_WRITE": self._query_write,
            "QUERY_SNAPSHOT_READ": self._snapshot_read, "QUERY_MAP": self._query_map,
            "FINISH_SNAPSHOT_READ": self._finish_read, "ACK_ADVICE": self._ack_advice,
            "DETACH": self._detach, "LIST_VOLUMES": self._list_volumes,
            "VERIFY_DEVICES": self._verify_devices, "PING": self._ping,
            "QUERY_CHANGES": self._query_changes,
        }
        self._control: dict[str, Handler] = {
            "LIST_SNAPSHOTS": self._list_snapshots, "STATUS": self._status,
            "SHUTDOWN": self._shutdown, "CREATE_SNAPSHOT": self._advise,
            "DELETE_SNAPSHOT": self._advise, "FORGET_CLIENT": self._forget_client,
            "HOLD_SNAPSHOT": self._hold, "RELEASE_SNAPSHOT": self._hold,
            "SET_SNAPSHOT": self._set_snapshot,
        }
        self._control["GROW"] = self._grow
        self._control["REVERT_SNAPSHOT"] = self._revert
        self.reverting = RevertFlow()
        self._privileged = frozenset({"SHUTDOWN", "CREATE_SNAPSHOT", "DELETE_SNAPSHOT",
                                      "FORGET_CLIENT", "HOLD_SNAPSHOT", "RELEASE_SNAPSHOT",
                                      "SET_SNAPSHOT", "GROW", "REVERT_SNAPSHOT"})

    # ================================================================== input
    def open_conn(self, conn_id: int, control: bool = False, peer: str = "",
                  privileged: bool = True) -> None:
        self.conns.open(conn_id, control, peer, privileged)

    def close_conn(self, conn_id: int, now: float) -> None:
        """Forget a connection: its read locks go, waiters proceed, it is not awaited."""
        conn = self.conns.close(conn_id)
        if conn is None:
            return
        self.devices.forget(conn_id)
        if conn.client_id is not None and self.conns.by_client.get(conn.client_id) is None:
            self._events(self.locks.drop_client(conn.client_id, now))
        self.space.dropped(conn_id)
        self.advice.dropped(conn_id)
        self._advance(now)

    def handle(self, conn_id: int, req: Request, now: float) -> None:
        """Process one request from a connection's session."""
        self.now = now
        conn = self.conns.get(conn_id)
        if conn is None:
            return
        self.counters[req.op] = self.counters.get(req.op, 0) + 1
        if self.stopped:
            return self._error(conn_id, req.id, ErrorCode.SHUTTING_DOWN,
                               f"csnapd is stopping: {self.stopped}")
        table = self._control if conn.control else self._data
        handler = table.get(req.op)
        if handler is None:
            where = "control" if conn.control else "data"
            return self._error(conn_id, req.id, ErrorCode.UNKNOWN_OP,
                               f"{req.op} is not a {where} request")
        if not conn.control and not conn.identified and req.op != "IDENTIFY":
            # the session lets nothing else through before IDENTIFY; this is the net
            return self._error(conn_id, req.id, ErrorCode.NOT_IDENTIFIED, "send IDENTIFY first")
        if conn.control and req.op in self._privileged and not conn.privileged:
            log.warning("refused %s from %s: only root or the server's user may", req.op,
                        conn.peer)
            return self._error(conn_id, req.id, ErrorCode.PERMISSION_DENIED,
                               f"{req.op} needs root or the server's own user")
        try:
            handler(conn, req, now)
        except _HANDLED as exc:
            if isinstance(exc, se.CorruptionError):
                log.error("store corruption: %s; refusing all changes from now on", exc)
                self.store.mark_corrupt(str(exc))
            self._error(conn_id, req.id, _code(exc), str(exc))
        except Exception as exc:  # a bug: answer it, keep serving everyone else
            self._internal_error(conn_id, req, exc)

    #: Requests that change no metadata: a bug in one harms nothing but its answer.
    _READ_ONLY = frozenset({"QUERY_SNAPSHOT_READ", "QUERY_MAP", "QUERY_CHANGES", "PING",
                            "LIST_VOLUMES", "LIST_SNAPSHOTS", "STATUS", "VERIFY_DEVICES"})

    def _internal_error(self, conn_id: int, req: Request, exc: Exception) -> None:
        """An unexpected exception in a handler: log it with its traceback, answer
        INTERNAL, and when the request may have half-changed metadata, refuse all further
        changes (the store's needs-check flag is set) rather than commit a broken state."""
        self.counters["internal_errors"] = self.counters.get("internal_errors", 0) + 1
        log.exception("internal error handling %s from connection %d", req.op, conn_id)
        text = f"internal error in {req.op}: {type(exc).__name__}: {exc} (see csnapd's log)"
        if req.op not in self._READ_ONLY and not self.store.failed:
            log.error("metadata may be half-changed: refusing changes until csnap-check runs")
            self.store.mark_corrupt(text)
        self._error(conn_id, req.id, ErrorCode.INTERNAL, text)

    def handle_message(self, conn_id: int, msg: dict[str, Any], now: float) -> None:
        """``handle`` for a plain message (tests and tools; the server uses sessions)."""
        ranges = tuple(map(tuple, msg["ranges"])) if "ranges" in msg and msg["op"] in (
            "QUERY_WRITE", "QUERY_SNAPSHOT_READ", "QUERY_MAP") else None
        self.handle(conn_id, Request(msg["op"], msg.get("id", 0), msg, ranges), now)

    def tick(self, now: float) -> None:
        """Expire read locks and advice deadlines; stop if a device was replaced."""
        self.now = now
        reason = None if self.stopped else self.watch.due(now)
        if reason:
            self.stop_serving(reason)
        self._events(self.locks.expire(now))
        self.report.sample(now)
        late = self.advice.overdue(now)
        if late:
            adv = self.advice.current
            log.warning("%s %s: disconnecting %d client(s) that did not acknowledge in time",
                        adv.kind, adv.name, len(late))
            for conn_id in late:
                self._disconnect(conn_id, now)
            self._advance(now)

    def background(self, budget_leaves: int = 4) -> bool:
        """A slice of background work (deletion, the space count after an open); True while
        more remains.

        Changes it makes are sealed and committed by the I/O layer like any others.
        """
        if self.stopped:
            return False
        more = self.store.count_step(4 * budget_leaves)
        if self.store.sb.revert_slot:
            more = self.reverting.step(self) or more
        if self.store.cloning:
            more = self._clone_step(budget_leaves) or more
        if self.revoked and self.store.deleting and self.now >= self.revoke_until:
            more = self.store.delete_step(budget_leaves) or more
            if self.space.waiters:
                self._retry_space(self.now)
        elif self.space.waiters and not self.space.coming(self.now):
            self._retry_space(self.now)  # nothing more is coming: squash or fail
        return more

    # ================================================================== output
    def take(self) -> Outcome:
        """What to do now (see the module docstring); the engine forgets it."""
        out = Outcome(self._now, self._durable, self.closing, self.shutdown_requested,
                      self._ticket)
        self._now, self._durable, self.closing, self._ticket = [], [], set(), 0
        return out

    def _later(self, conn_id: int, msg: dict[str, Any], ticket: int) -> None:
        """A durable reply to something decided in an earlier batch, at ``ticket``."""
        self._durable.append((conn_id, msg))
        self._ticket = max(self._ticket, ticket)

    def commit_failed(self, replies: list[Out], exc: BaseException) -> list[Out]:
        """A sealed commit failed: nothing in it is durable; every "done" becomes an error."""
        if isinstance(exc, se.FencedError):  # another server leads now: go there
            log.warning("not committed: %s", exc)
            return [(c, m.reply_error(msg["id"], ErrorCode.NOT_LEADER, f"not done: {exc}"))
                    for c, msg in replies if msg.get("id")]
        log.error("commit failed: %s", exc)
        if not self.store.failed:
            self.store.mark_corrupt(str(exc))
        code = ErrorCode.STORE_CORRUPT if isinstance(exc, se.StoreError) else ErrorCode.INTERNAL
        return [(c, m.reply_error(msg["id"], code, f"not done: {exc}"))
                for c, msg in replies if msg.get("id")]

    def flush(self, now: float) -> list[Out]:
        """Commit synchronously and return every reply (tests and single-threaded use)."""
        out = self.take()
        self.closing |= out.close
        try:
            if out.durable or self.store.has_changes():
                self.store.commit()
        except (se.StoreError, OSError) as exc:
            return out.now + self.commit_failed(out.durable, exc)
        return out.now + out.durable

    def _error(self, conn_id: int, rid: int, code: int, text: str) -> None:
        self._now.append((conn_id, m.reply_error(rid, code, text)))

    def _disconnect(self, conn_id: int, now: float) -> None:
        """Forget a connection here and have the I/O layer close its socket."""
        self.close_conn(conn_id, now)
        self.closing.add(conn_id)

    # ============================================================ data requests
    def _ping(self, conn: Conn, req: Request, now: float) -> None:
        self._now.append((conn.id, m.pong(req.id)))

    def _verify_devices(self, conn: Conn, req: Request, now: float) -> None:
        self._now.append((conn.id, self.devices.verify(conn.id, req.id, req.msg["origin"])))

    def _list_volumes(self, conn: Conn, req: Request, now: float) -> None:
        self._durable.append((conn.id, m.volumes(req.id, self.report.volumes())))

    def _finish_read(self, conn: Conn, req: Request, now: float) -> None:
        valid, events = self.locks.release(conn.client_id, req.msg["lock"],
                                           req.msg.get("ranges"), now)
        self._now.append((conn.id, m.finish_ok(req.id, valid)))
        self._events(events)

    def _ack_advice(self, conn: Conn, req: Request, now: float) -> None:
        self._now.append((conn.id, m.ack_ok(req.id)))
        adv = self.advice.current
        if adv is not None and self.advice.acked(conn.id, req.msg["advice"]):
            self._let_go(conn, adv)
            self._advance(now)

    def _detach(self, conn: Conn, req: Request, now: float) -> None:
        if self.store.grants.clear_client(conn.client_id):
            log.info("client %d detached: its grants are void", conn.client_id)
        self._durable.append((conn.id, m.detach_ok(req.id)))

    def _let_go(self, conn: Conn, adv: Advice) -> None:
        """An acknowledged advice: the client finished and dropped what it revokes."""
        grants = self.store.grants
        if adv.kind == NEW_SNAPSHOT and conn.slot is None:
            grants.clear_origin(conn.client_id)
        elif adv.kind == NEW_CLONE and conn.slot == adv.entry.slot:
            grants.clear_writer(conn.client_id, conn.slot)
        elif adv.kind == DELETE_SNAPSHOT and adv.entry is not None \
                and conn.slot == adv.entry.slot:
            grants.clear_writer(conn.client_id, conn.slot)

    # -- identify -------------------------------------------------------------
    def _identify(self, conn: Conn, req: Request, now: float) -> None:
        msg, rid = req.msg, req.id
        if conn.identified:
            return self._error(conn.id, rid, ErrorCode.ALREADY_IDENTIFIED, "already identified")
        if msg["version"] != m.PROTOCOL_VERSION:
            return self._error(conn.id, rid, ErrorCode.VERSION_MISMATCH,
                               f"server speaks protocol {m.PROTOCOL_VERSION}, "
                               f"not {msg['version']}")
        client = msg["client_id"]
        if msg.get("clean") and self.store.grants.clear_client(client):
            log.info("client %d came back clean: its earlier grants are void", client)
        volume, snap = msg["volume"], None
        if volume == "origin" and self.store.sb.revert_slot:
            p = self.store.status()["revert"]
            return self._error(conn.id, rid, ErrorCode.BUSY,
                               f"the origin is being reverted to snapshot {p['snapshot']!r} "
                               f"({100 * p['fraction']:.0f}% done); retry when it is done")
        if volume != "origin":
            snap = self._find_snapshot(volume)
            if snap is None:
                return self._error(conn.id, rid, ErrorCode.UNKNOWN_SNAPSHOT,
                                   f"no snapshot {volume!r}")
            if snap.squashed:
                return self._error(conn.id, rid, ErrorCode.SNAPSHOT_SQUASHED,
                                   f"snapshot {snap.name!r} was squashed to free store space")
        old = self.conns.by_client.get(client)
        if old is not None and old != conn.id:
            log.info("client %d reconnected; dropping its old connection", client)
            self._disconnect(old, now)  # its read locks go with it
        self.conns.bind(conn, client)
        conn.read_only = bool(msg.get("read_only", False))
        info = None
        if snap is not None:
            conn.slot, conn.snap_name = snap.slot, snap.name
            info = m.snapshot_info(snap.name, snap.tag, snap.created_ns / 1e9)
        f = self.store.sb
        size = f.origin_bytes if snap is None else self.store.snapshot_bytes(snap.slot)
        self._now.append((conn.id, m.identify_ok(
            rid, chunk_size=f.chunk_size, origin_chunks=-(-size // f.chunk_size),
            origin_bytes=size, store_uuid=f.uuid.hex(), server_epoch=self.epoch,
            lease_ms=int(self.lease * 1000), snapshot=info, read_only=conn.read_only,
            devices=self.devices.offer(conn.id))))
        if snap is None and self.store.grants.exposure(client):
            adv = self.advice.join(conn.id)  # it holds approvals: a create must hear from it
            if adv is not None:
                self._now.append((conn.id, m.advice(adv.advice_id, adv.kind, adv.name,
                                                    int(self.lease * 1000))))
        log.info("client %d identified for %s from %s", client, conn.volume, conn.peer)

    def _find_snapshot(self, ident: str | int) -> fmt.SnapEntry | None:
        for key in (ident, int(ident)) if isinstance(ident, str) and ident.isdigit() \
                else (ident,):
            try:
                return self.store.snaps.find(key)
            except se.NoSuchSnapshot:
                continue
        return None

    def _snapshot_gone(self, conn: Conn, rid: int) -> bool:
        """Refuse requests of a snapshot that was deleted or squashed."""
        entry = self.store.snaps.entries[conn.slot]
        if entry.state == fmt.SNAP_LIVE and entry.name == conn.snap_name and not entry.squashed:
            return False
        code = ErrorCode.SNAPSHOT_SQUASHED if entry.squashed else ErrorCode.SNAPSHOT_DELETED
        self._error(conn.id, rid, code, f"snapshot {conn.snap_name!r} is gone")
        return True

    # -- writes ---------------------------------------------------------------
    def _query_write(self, conn: Conn, req: Request, now: float) -> None:
        if conn.read_only:
            return self._error(conn.id, req.id, ErrorCode.READ_ONLY, "this identity is read-only")
        if conn.slot is None:
            self._origin_write(conn, req, now)
        else:
            self._snapshot_write(conn, req)

    def _origin_write(self, conn: Conn, req: Request, now: float) -> None:
        if self.advice.creating:
            return self.advice.hold(conn.id, req)
        try:
            self.store.origin_write(req.ranges)
        except se.StoreFullError as exc:
            if not self._make_room(exc, now):
                raise
            return self.space.park(conn.id, req)
        # Granted from now on, even if the reply must wait for read locks: the grant
        # is durable with the copy-out's commit, and a snapshot created later copies
        # these chunks out unless the client lets go first.
        self.store.grants.add_origin(conn.client_id, req.ranges)
        if self.locks.wait_write(conn.client_id, req.id, req.ranges,
                                 (req, self.store.change_ticket)):
            self._durable.append((conn.id, m.write_ok(req.id)))

    def _make_room(self, exc: se.StoreFullError, now: float) -> bool:
        """Store full: True if the write should wait for space (squashing if need be)."""
        if self.space.on_full != "squash":
            return False
        if self.space.coming(now):
            return True
        victim = self.space.victim(exc)
        if victim is None:
            return False
        self._squash(victim, now)
        return True

    def _retry_space(self, now: float) -> None:
        """Space came back, or none will: try the parked origin writes again."""
        for conn_id, req in self.space.take_waiters():
            self.handle(conn_id, req, now)

    def _squash(self, entry: fmt.SnapEntry, now: float) -> None:
        """Store full: sacrifice a snapshot so the origin write can go on."""
        log.warning("store full: squashing snapshot %s (tag %d, priority %d) so origin writes "
                    "can proceed; its space will be reclaimed", entry.name, entry.tag,
                    entry.priority)
        self.store.squash_snapshot(entry)
        self.counters["squashed"] = self.counters.get("squashed", 0) + 1
        for conn_id in self.conns.of_slot(entry.slot):
            self._now.append((conn_id, m.reply_error(
                0, ErrorCode.SNAPSHOT_SQUASHED,
                f"snapshot {entry.name!r} was squashed to free store space")))
            self._disconnect(conn_id, now)
        self.revoke_until = max(self.revoke_until, now + self.lease)
        self.space.squashed(now)

    def _snapshot_write(self, conn: Conn, req: Request) -> None:
        if self._snapshot_gone(conn, req.id):
            return
        if self.advice.cloning(conn.slot):
            return self.advice.hold(conn.id, req)  # decided once the clone exists
        if conn.slot == self.store.sb.revert_slot - 1:
            return self._error(conn.id, req.id, ErrorCode.BUSY,
                               f"the origin is being reverted to snapshot {conn.snap_name!r}: "
                               "it takes no writes until the revert is done")
        pairs = self.store.snapshot_write(conn.slot, req.ranges)
        self.store.grants.add_writer(conn.client_id, conn.slot)
        self._durable.append((conn.id, m.snapshot_write_ok(req.id, m.compress_mapping(pairs))))

    # -- reads ----------------------------------------------------------------
    def _snapshot_read(self, conn: Conn, req: Request, now: float) -> None:
        rid = req.id
        if conn.slot is None:  # origin reads need no server (protocol.md)
            return self._error(conn.id, rid, ErrorCode.BAD_REQUEST,
                               "QUERY_SNAPSHOT_READ needs a snapshot volume")
        if self._snapshot_gone(conn, rid):
            return
        origin, store = self._read_map(conn.slot, req.ranges)
        if not origin:
            return self._durable.append((conn.id, self._read_reply(rid, origin, store)))
        if self.locks.held_lock_count(conn.client_id) >= self.MAX_READ_LOCKS:
            return self._error(conn.id, rid, ErrorCode.LIMIT_EXCEEDED,
                               f"more than {self.MAX_READ_LOCKS} read locks held; finish some")
        if self.locks.held_chunks + m.count_chunks(origin) > self.MAX_TOTAL_LOCKED:
            return self._error(conn.id, rid, ErrorCode.BUSY,
                               "too many chunks read-locked server-wide; retry later")
        result = self.locks.acquire_read(conn.client_id, rid, origin, now, req)
        if isinstance(result, lk.ReadGrant):
            self._durable.append((conn.id, self._read_reply(rid, origin, store)))

    def _query_map(self, conn: Conn, req: Request, now: float) -> None:
        if conn.slot is None:
            return self._error(conn.id, req.id, ErrorCode.UNKNOWN_OP,
                               "QUERY_MAP needs a snapshot volume")
        if not self._snapshot_gone(conn, req.id):
            _, store = self._read_map(conn.slot, req.ranges)
            self._durable.append((conn.id, m.map_ok(req.id, store)))

    def _query_changes(self, conn: Conn, req: Request, now: float) -> None:
        """Chunks whose copy differs between this volume and ``base`` (store/diff.py).

        Bounded per request (entries scanned and chunks reported); the reply reveals
        store state, so it waits for durability like MAP_OK.
        """
        msg, rid = req.msg, req.id
        if conn.slot is not None and self._snapshot_gone(conn, rid):
            return
        limit = volume_chunks(self.store, conn.slot)  # a snapshot may predate a growth
        start, want = msg["start"], msg.get("max_chunks", m.MAX_CHANGE_CHUNKS)
        if start > limit:
            return self._error(conn.id, rid, ErrorCode.OUT_OF_RANGE,
                               f"start {start} is past the end of the volume ({limit} chunks)")
        if want < 1:
            return self._error(conn.id, rid, ErrorCode.BAD_REQUEST, "max_chunks must be >= 1")
        end = limit if msg.get("count") is None else min(limit, start + msg["count"])
        want = min(want, m.MAX_CHANGE_CHUNKS)
        base = msg["base"]
        if base is None:
            scan = sd.every_chunk(start, end, want)
        else:
            slot = None
            if base != m.ORIGIN:
                entry = self._find_snapshot(base)
                if entry is None:
                    return self._error(conn.id, rid, ErrorCode.UNKNOWN_SNAPSHOT,
                                       f"no snapshot {base!r}")
                if entry.squashed or entry.state != fmt.SNAP_LIVE:
                    return self._error(conn.id, rid, ErrorCode.SNAPSHOT_SQUASHED,
                                       f"snapshot {entry.name!r} was squashed")
                slot = entry.slot
            scan = changes_past_base(self.store, conn.slot, slot, start, end, want)
        self._durable.append((conn.id, m.changes(rid, scan.ranges, scan.next)))

    def _read_map(self, slot: int, ranges: Any) -> tuple[list, list]:
        pairs = self.store.snapshot_map(slot, ranges)
        origin = m.compress_ranges(c for c, s in pairs if s is None)
        store = m.compress_mapping((c, s) for c, s in pairs if s is not None)
        return origin, store

    def _read_reply(self, rid: int, origin: list, store: list) -> dict[str, Any]:
        return m.snapshot_read_ok(rid, origin, store, int(self.locks.lease * 1000)
                                  if self.locks.lease else 0)

    # -- lock events ----------------------------------------------------------
    def _events(self, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, lk.WriteReady) and ev.client == REVERT_CLIENT:
                self.reverting.unblocked(ev.write_id)
            elif isinstance(ev, lk.WriteReady):
                conn = self.conns.of_client(ev.client)
                if conn is None or ev.payload is None:
                    continue
                req, ticket = ev.payload
                if self.advice.creating:
                    # approving it now would let it write a chunk the new snapshot
                    # shares: decide again once the snapshot exists
                    self.advice.hold(conn.id, req)
                else:  # its copy-out was in the transaction of that ticket
                    self._later(conn.id, m.write_ok(ev.write_id), ticket)
            elif isinstance(ev, lk.ReadGranted):
                self._granted(ev)
            elif isinstance(ev, lk.LockBroken):
                self.counters["locks_broken"] = self.counters.get("locks_broken", 0) + 1
                log.warning("read lock %s of client %s broken: held past its %.1fs maximum "
                            "hold time", ev.lock_id, ev.client, self.locks.lease or 0.0)

    def _granted(self, ev: lk.ReadGranted) -> None:
        """A queued read got its lock: the writes it waited for copied some chunks out."""
        conn = self.conns.of_client(ev.client)
        if conn is None or ev.payload is None:
            return
        origin, store = self._read_map(conn.slot, ev.payload.ranges)
        locked = set(m.expand_ranges([list(r) for r in ev.ranges]))
        moved = m.compress_ranges(sorted(c for c in m.expand_ranges([[a, n] for a, n, _ in store])
                                         if c in locked))
        if moved:
            _, events = self.locks.release(ev.client, ev.lock_id, moved)
            self._events(events)
        self._durable.append((conn.id, self._read_reply(ev.lock_id, origin, store)))

    # ========================================================= control requests
    def _list_snapshots(self, conn: Conn, req: Request, now: float) -> None:
        self._durable.append((conn.id, m.ok(req.id, self.report.list_snapshots())))

    def _status(self, conn: Conn, req: Request, now: float) -> None:
        self._now.append((conn.id, m.ok(req.id, self.status())))

    def _shutdown(self, conn: Conn, req: Request, now: float) -> None:
        self.shutdown_requested = True
        self._now.append((conn.id, m.ok(req.id, "shutting down")))

    def _forget_client(self, conn: Conn, req: Request, now: float) -> None:
        """The operator vouches that a client can write no more (its host is fenced)."""
        client = req.msg["client_id"]
        if client in self.conns.by_client:
            return self._error(conn.id, req.id, ErrorCode.BAD_REQUEST,
                               f"client {client} is connected; it lets go of its grants by "
                               "itself")
        found = self.store.grants.clear_client(client)
        if found:
            log.warning("operator released every grant of client %d (from %s): its cached "
                        "approvals are now void", client, self.conns.peers.get(client, "unknown"))
        self._durable.append((conn.id, m.ok(req.id, {"client_id": client, "forgotten": found})))

    def _hold(self, conn: Conn, req: Request, now: float) -> None:
        """HOLD_SNAPSHOT / RELEASE_SNAPSHOT: the answer is durable with the new use count."""
        ident = req.msg["snapshot"]
        entry = self._find_snapshot(ident)
        if entry is None:
            raise se.NoSuchSnapshot(f"no snapshot {ident!r}")
        if req.op == "HOLD_SNAPSHOT":
            self.store.hold_snapshot(entry.name)
        else:
            self.store.release_snapshot(entry.name)
        log.info("snapshot %s: %s, %d hold(s) now", entry.name,
                 "held" if req.op == "HOLD_SNAPSHOT" else "released", entry.use_count)
        self._durable.append((conn.id, m.ok(req.id, snap_dict(entry))))

    def _set_snapshot(self, conn: Conn, req: Request, now: float) -> None:
        """SET_SNAPSHOT: rename and/or change the priority, in one transaction.

        Connections already identified to the snapshot keep it (they are bound to
        its slot; ``_snapshot_gone`` compares the name to spot a reused slot, so theirs
        is updated); new ones must use the new name, or the unchanged tag.
        """
        ident = req.msg["snapshot"]
        entry = self._find_snapshot(ident)
        if entry is None:
            raise se.NoSuchSnapshot(f"no snapshot {ident!r}")
        old = entry.name
        self.store.set_snapshot(entry.name, req.msg.get("name"), req.msg.get("priority"))
        for conn_id in self.conns.of_slot(entry.slot):
            held = self.conns.get(conn_id)
            if held is not None:
                held.snap_name = entry.name  # the same snapshot: not "gone"
        log.info("snapshot %s (tag %d): name %s, priority %d", old, entry.tag, entry.name,
                 entry.priority)
        self._durable.append((conn.id, m.ok(req.id, snap_dict(entry))))

    def _revert(self, conn: Conn, req: Request, now: float) -> None:
        """REVERT_SNAPSHOT: recorded durably, then done in the background (reverting.py)."""
        self._durable.append((conn.id, m.ok(req.id, self.reverting.start(
            self, req.msg["snapshot"]))))

    def _grow(self, conn: Conn, req: Request, now: float) -> None:
        """GROW: the answer is durable with the new geometry (engine/growing.py)."""
        self._durable.append((conn.id, m.ok(req.id, grow(self, conn, req.msg))))

    # -- the advice flow --------------------------------------------------------
    def _advise(self, conn: Conn, req: Request, now: float) -> None:
        if self.advice.busy:
            self.advice.enqueue(conn.id, req)
        else:
            self._start_advice(conn.id, req, now)

    def _start_advice(self, conn_id: int, req: Request, now: float) -> None:
        try:
            if req.op == "CREATE_SNAPSHOT" and req.msg.get("from") is not None:
                adv = self._begin_clone(conn_id, req, now)
            elif req.op == "CREATE_SNAPSHOT":
                adv = self._begin_create(conn_id, req, now)
            else:
                adv = self._begin_delete(conn_id, req, now)
        except _HANDLED as exc:
            self._error(conn_id, req.id, _code(exc), str(exc))
            return self._next_advice(now)
        self.advice.begin(adv)
        about = adv.entry.name if adv.kind == NEW_CLONE else adv.name
        msg = m.advice(adv.advice_id, adv.kind, about, int(self.lease * 1000))
        self._now.extend((c, msg) for c in adv.awaiting)
        log.info("%s %s: waiting for %d client(s) to acknowledge", adv.kind, adv.name,
                 len(adv.awaiting))
        self._advance(now)

    def _begin_create(self, conn_id: int, req: Request, now: float) -> Advice:
        name = req.msg["name"]
        if any(e.name == name for e in self.store.snaps.visible()):
            raise se.SnapshotExists(f"a snapshot named {name!r} exists")
        return Advice(self.advice.new_id(), NEW_SNAPSHOT, name, (conn_id, req.id),
                      now + self.advice_timeout, set(self.conns.origin_conns()),
                      tag=req.msg.get("tag"), priority=req.msg.get("priority") or 0)

    def _begin_clone(self, conn_id: int, req: Request, now: float) -> Advice:
        """A clone: the parent's connections drop the store addresses they cached."""
        name, ident = req.msg["name"], req.msg["from"]
        if any(e.name == name for e in self.store.snaps.visible()):
            raise se.SnapshotExists(f"a snapshot named {name!r} exists")
        parent = self._find_snapshot(ident)
        if parent is None:
            raise se.NoSuchSnapshot(f"no snapshot {ident!r} to clone")
        if parent.squashed:
            raise se.LimitError(f"snapshot {parent.name!r} was squashed: there is nothing "
                                "to clone")
        awaiting = {c for c in self.conns.of_slot(parent.slot)
                    if not self.conns.get(c).read_only}
        return Advice(self.advice.new_id(), NEW_CLONE, name, (conn_id, req.id),
                      now + self.advice_timeout, awaiting, entry=parent,
                      tag=req.msg.get("tag"), priority=req.msg.get("priority") or 0)

    def _begin_delete(self, conn_id: int, req: Request, now: float) -> Advice:
        ident = req.msg["snapshot"]
        entry = self._find_snapshot(ident)
        if entry is None:
            raise se.NoSuchSnapshot(f"no snapshot {ident!r}")
        self.store.delete_snapshot(entry.name)
        self.revoked = False
        return Advice(self.advice.new_id(), DELETE_SNAPSHOT, entry.name, (conn_id, req.id),
                      now + self.advice_timeout, set(self.conns.of_slot(entry.slot)),
                      entry=entry, ticket=self.store.change_ticket)

    def _advance(self, now: float) -> None:
        """Complete the current advice if nobody is awaited any more, then start the next."""
        adv = self.advice.take_ready()
        if adv is None:
            return
        conn_id, rid = adv.reply_to
        if adv.kind in (NEW_SNAPSHOT, NEW_CLONE):
            try:
                if adv.kind == NEW_CLONE:
                    entry = self._clone(adv)
                    self._durable.append((conn_id, m.ok(rid, snap_dict(entry, adv.entry))))
                    log.info("created clone %s of %s (tag %d, slot %d); sharing its copies "
                             "in the background", entry.name, adv.entry.name, entry.tag,
                             entry.slot)
                else:
                    entry = self._create(adv)
                    self._durable.append((conn_id, m.ok(rid, snap_dict(entry))))
                    log.info("created snapshot %s (tag %d, slot %d)", entry.name, entry.tag,
                             entry.slot)
            except _HANDLED as exc:
                self._error(conn_id, rid, _code(exc), str(exc))
            for held_conn, req in self.advice.release_held():
                self.handle(held_conn, req, now)
        else:
            self.revoked = True
            self._later(conn_id, m.ok(rid, {"deleted": adv.name}), adv.ticket)
            log.info("deleted snapshot %s; freeing its chunks in the background", adv.name)
        self._next_advice(now)

    def _next_advice(self, now: float) -> None:
        while not self.advice.busy:
            queued = self.advice.next_queued()
            if queued is None:
                return
            conn_id, req = queued
            if self.conns.get(conn_id) is not None:
                self._start_advice(conn_id, req, now)

    def _create(self, adv: Advice) -> fmt.SnapEntry:
        """Make the snapshot; first give it its own copy of every exposed chunk.

        Clients that did not acknowledge (or are not even connected) may still write
        the chunks approved to them without asking. Copying those chunks for the new
        snapshot before it exists for anyone means a late write can only change the
        origin. The copies may take several commits, so the snapshot is CREATING
        (invisible) until the last one; a crash before that leaves it to be deleted at
        the next open.
        """
        store, grants = self.store, self.store.grants
        exposed = [(c, runs) for c in grants.exposed_clients() if (runs := grants.exposure(c))]
        if not exposed:
            return store.create_snapshot(adv.name, adv.tag, adv.priority)
        union = sorted(r for _, runs in exposed for r in runs)
        chunks = sum(n for _, n in union)
        log.warning("snapshot %s: %d client(s) may still write %d approved chunk(s) without "
                    "asking (%s); copying them for the snapshot first", adv.name, len(exposed),
                    chunks, ", ".join(f"client {c} from {self.conns.peers.get(c, 'unknown')}"
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

    def _clone(self, adv: Advice) -> fmt.SnapEntry:
        """Make the clone, unless a client may still write the parent without asking.

        A writer that did not acknowledge (stalled, or gone without detaching) keeps
        store addresses it may write at any later moment; once those chunks are shared
        with the clone such a write would change it. So the clone is refused, naming
        the clients, until they come back clean, detach, or are forgotten.
        """
        parent = adv.entry
        if parent.state != fmt.SNAP_LIVE or parent.squashed:
            raise se.NoSuchSnapshot(f"snapshot {parent.name!r} went away")
        writers = sorted(self.store.grants.writers().get(parent.slot, ()))
        if writers:
            who = ", ".join(f"client {c} from {self.conns.peers.get(c, 'unknown')}"
                            for c in writers[:8])
            raise se.SnapshotHeld(
                f"cannot clone {parent.name!r} now: {len(writers)} client(s) may still write "
                f"it without asking ({who}); they let go when they reconnect or detach, or "
                "'csnapctl forget-client ID' once their host is fenced")
        return self.store.clone_snapshot(adv.name, parent.name, adv.tag, adv.priority)

    def _clone_step(self, budget_leaves: int) -> bool:
        """A slice of the clone fill; logs when it is done."""
        fill = self.store.fill
        name = self.store.snaps.entries[fill.clone].name
        more = self.store.clone_step(budget_leaves)
        if not more:
            log.info("clone %s: all of its parent's copies are shared; fill done", name)
        return more

    # ============================================================== stopping
    def stop_serving(self, reason: str) -> None:
        """A device is not the one this server opened: never change anything again.

        The store is detached first (it writes nothing from now on, not even a flag:
        the device may be someone else's), then every request still waiting is answered
        SHUTTING_DOWN naming the reason, and the server is asked to shut down (the
        daemon then exits non-zero).
        """
        log.error("%s; refusing all changes and stopping", reason)
        self.stopped = reason
        self.store.detach(reason)
        text = f"not done: csnapd is stopping: {reason}"
        waiting = [(c, msg["id"]) for c, msg in self._durable if msg.get("id")]
        waiting += [(c, req.id) for c, req in self.advice.release_held()]
        waiting += [(c, req.id) for c, req in self.space.take_waiters()]
        while (queued := self.advice.next_queued()) is not None:
            waiting.append((queued[0], queued[1].id))
        if self.advice.current is not None:
            waiting.append(self.advice.current.reply_to)
            self.advice.current = None
        for client, rid, _req in self.locks.pending():
            conn = self.conns.of_client(client)
            if conn is not None:
                waiting.append((conn.id, rid))
        for client in list(self.conns.by_client):
            self.locks.drop_client(client)
        self._durable = []
        for conn_id, rid in waiting:
            self._error(conn_id, rid, ErrorCode.SHUTTING_DOWN, text)
        self.shutdown_requested = True

    # ============================================================== reporting
    def list_snapshots(self) -> list[dict[str, Any]]:
        return self.report.list_snapshots()

    def status(self) -> dict[str, Any]:
        return self.report.status()

    def unproven_clients(self) -> list[dict[str, Any]]:
        return self.report.unproven_clients()
