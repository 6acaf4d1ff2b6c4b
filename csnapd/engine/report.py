"""What the server tells operators: snapshot lists, status, per-snapshot usage.

Usage (exclusive and shared chunks per snapshot) is counted on the spot for small
stores and, above ``SYNC_USAGE_LIMIT`` exceptions, by a background scan a few leaves
at a time (``scan_step``), so a status request never holds the server for a full walk;
the answer says how old the counts are.

Reads the store and the engine's tables; changes nothing.
"""

from __future__ import annotations

from typing import Any, Protocol

from csnapd.store import format as fmt
from csnapd.store.store import Store
from csnapd.store.walk import snapshot_usage

from .advice import AdviceFlow
from .conns import Conns
from .locks import LockTable


class EngineState(Protocol):
    """What the reporter reads of the engine (the engine module imports this one)."""

    store: Store
    locks: LockTable
    conns: Conns
    advice: AdviceFlow
    counters: dict[str, int]
    now: float

#: Up to this many exceptions, status counts usage on the spot; above, in the background.
SYNC_USAGE_LIMIT = 100_000
USAGE_MAX_AGE = 30.0


def snap_dict(e: fmt.SnapEntry) -> dict[str, Any]:
    """One snapshot as the control protocol lists it."""
    return {"name": e.name, "tag": e.tag, "slot": e.slot, "created": e.created_ns / 1e9,
            "priority": e.priority, "squashed": e.squashed, "holds": e.use_count}


class Reporter:
    """Status and listings for one engine, with the background usage scan's state."""

    def __init__(self, engine: EngineState) -> None:
        self.engine = engine
        self.usage: dict[int, dict[str, int]] = {}
        self.usage_at: float | None = None
        self.scan: tuple[int, dict[int, dict[str, int]]] | None = None

    def list_snapshots(self) -> list[dict[str, Any]]:
        return [snap_dict(e) for e in self.engine.store.snaps.visible()]

    def volumes(self) -> list[dict[str, Any]]:
        """LIST_VOLUMES: what a data connection may identify as."""
        return [{k: d[k] for k in ("name", "tag", "created", "squashed")}
                for d in self.list_snapshots()]

    def status(self) -> dict[str, Any]:
        eng = self.engine
        usage, usage_info = self._usage_now()
        snaps = [{**d, **usage.get(d["slot"], {"unique": 0, "shared": 0})}
                 for d in self.list_snapshots()]
        stats = eng.locks.stats()
        clients = [{"client_id": c.client_id, "volume": c.volume, "peer": c.peer}
                   for c in eng.conns.identified()]
        return {
            "store": eng.store.status(), "snapshots": snaps, "clients": clients,
            "locks": {"held_locks": stats.held_locks, "held_chunks": stats.held_chunks,
                      "queued_reads": stats.queued_reads, "waiting_writes": stats.waiting_writes,
                      "broken": eng.counters.get("locks_broken", 0)},
            "unproven_clients": self.unproven_clients(),
            "operations": self._operations(), "requests": dict(eng.counters),
            **usage_info,
        }

    def unproven_clients(self) -> list[dict[str, Any]]:
        """Disconnected clients whose grants stand (they may still write without asking).

        Each costs copy-outs at every snapshot create (origin exposure) or keeps a
        deleted snapshot's space (writer grants) until it comes back, or the
        operator fences its host and runs ``csnapctl forget-client``.
        """
        eng = self.engine
        grants = eng.store.grants
        writers = grants.writers()
        names = {e.slot: e.name for e in eng.store.snaps.entries}
        out = []
        for client in sorted(grants.clients() - set(eng.conns.by_client)):
            runs = grants.exposure(client)
            out.append({"client_id": client, "peer": eng.conns.peers.get(client, "unknown"),
                        "exposed_chunks": sum(n for _, n in runs),
                        "writes_snapshots": sorted(names.get(s, str(s)) for s, cs in
                                                   writers.items() if client in cs)})
        return out

    def _operations(self) -> list[dict[str, Any]]:
        eng, ops = self.engine, []
        adv = eng.advice.current
        if adv is not None:
            ops.append({"operation": adv.kind.lower(), "snapshot": adv.name,
                        "waiting_for_clients": len(adv.awaiting)})
        progress = eng.store.delete_progress()
        if progress["active"]:
            ops.append({"operation": "delete", "progress": round(progress["fraction"], 4)})
        return ops

    # -- usage ---------------------------------------------------------------
    def _usage_now(self) -> tuple[dict[int, dict[str, int]], dict[str, Any]]:
        eng = self.engine
        if eng.store.sb.exceptions <= SYNC_USAGE_LIMIT:
            return snapshot_usage(eng.store), {"usage_age_s": 0.0}
        stale = self.usage_at is None or eng.now - self.usage_at > USAGE_MAX_AGE
        if stale and self.scan is None:
            self.scan = (0, {})
        info: dict[str, Any] = {"usage_age_s": (None if self.usage_at is None
                                                 else round(eng.now - self.usage_at, 1))}
        if self.scan is not None:
            info["usage_scan_cursor"] = self.scan[0]
        return self.usage, info

    def scan_step(self, leaves: int) -> bool:
        """Count usage a few leaves further; True while the scan goes on."""
        if self.scan is None:
            return False
        store = self.engine.store
        cursor, acc = self.scan
        cursor, done = store.usage_step(cursor, leaves, acc)
        if done:
            self.usage, self.usage_at, self.scan = acc, self.engine.now, None
            return False
        self.scan = (cursor, acc)
        return True
