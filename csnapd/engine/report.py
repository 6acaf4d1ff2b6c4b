"""What the server tells operators: snapshot lists, status, per-snapshot usage, fill.

Usage (exclusive and shared chunks per snapshot) is kept exact by the store as the
exception map changes (store/usage.py); after an open it is counted once, a few leaves
per background slice, or on the spot at the first status of a store with up to
``SYNC_USAGE_LIMIT`` exceptions. Until then status says how far the count has come
(``usage_counted``). The projected time to full divides the free chunks by the copy-out
rate of the last ``RATE_WINDOW`` seconds, sampled at ticks.

Reads the store and the engine's tables; changes nothing but its own samples.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from csnapd.store import format as fmt
from csnapd.store.store import Store

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

#: Up to this many exceptions, status finishes counting usage on the spot.
SYNC_USAGE_LIMIT = 100_000
#: The copy-out rate behind the time-to-full projection is taken over this many seconds,
#: from samples at least SAMPLE_EVERY seconds apart.
RATE_WINDOW = 600.0
SAMPLE_EVERY = 5.0


def snap_dict(e: fmt.SnapEntry, parent: fmt.SnapEntry | None = None) -> dict[str, Any]:
    """One snapshot as the control protocol lists it (``parent``: the snapshot it is a
    clone of)."""
    return {"name": e.name, "tag": e.tag, "slot": e.slot, "created": e.created_ns / 1e9,
            "priority": e.priority, "squashed": e.squashed, "holds": e.use_count,
            "parent": parent.name if parent is not None else None}


class Reporter:
    """Status and listings for one engine, with the background usage scan's state."""

    def __init__(self, engine: EngineState) -> None:
        self.engine = engine
        self.samples: deque[tuple[float, int]] = deque()  # (time, copy-outs so far)

    def list_snapshots(self) -> list[dict[str, Any]]:
        snaps = self.engine.store.snaps
        out = [snap_dict(e, snaps.parent_of(e)) for e in snaps.visible()]
        fill = self.engine.store.fill
        for d in out:
            d["filling"] = fill.active and d["slot"] == fill.clone
        return out

    def volumes(self) -> list[dict[str, Any]]:
        """LIST_VOLUMES: what a data connection may identify as."""
        store = self.engine.store
        return [{**{k: d[k] for k in ("name", "tag", "created", "squashed")},
                 "bytes": store.snapshot_bytes(d["slot"])}  # its size (store/sizes.py)
                for d in self.list_snapshots()]

    def status(self) -> dict[str, Any]:
        eng = self.engine
        usage, usage_info = self._usage_now()
        snaps = []
        for d in self.list_snapshots():
            u = usage.get(d["slot"], {"unique": 0, "shared": 0})
            snaps.append({**d, "exclusive": u["unique"], "unique": u["unique"],
                          "shared": u["shared"]})
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
            "fill": self.fill(), **usage_info,
            **({"ha": eng.ha_status(), "role": "leader"} if eng.ha_status else {}),
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
        store = eng.store
        fill = store.fill.progress(store.sb.origin_chunks)
        rev = store.status()["revert"]
        if rev["active"]:
            ops.append({"operation": "revert", "snapshot": rev["snapshot"],
                        "progress": round(rev["fraction"], 4)})
        if fill["active"]:
            ops.append({"operation": "clone", "snapshot": store.snaps.entries[fill["clone"]].name,
                        "from": store.snaps.entries[fill["parent"]].name,
                        "progress": round(fill["fraction"], 4)})
        return ops

    # -- usage and fill ----------------------------------------------------------
    def _usage_now(self) -> tuple[dict[int, dict[str, int]], dict[str, Any]]:
        store = self.engine.store
        usage, counted = store.space_usage()
        if counted < 1.0 and store.sb.exceptions <= SYNC_USAGE_LIMIT:
            while store.count_step(256):
                pass
            usage, counted = store.space_usage()
        return usage, {"usage_counted": round(counted, 4)}

    def sample(self, now: float) -> None:
        """Remember the copy-out count now and then, for the fill rate (called at ticks)."""
        samples = self.samples
        if samples and now - samples[-1][0] < SAMPLE_EVERY:
            return
        samples.append((now, self.engine.store.stats["copyouts"]))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()

    def fill(self) -> dict[str, Any]:
        """Store fill, the recent copy-out rate and the time to full it projects.

        ``time_to_full_s`` is None while nothing was copied out in the window (or
        too little time has been sampled): at that rate the store never fills.
        """
        store = self.engine.store
        f = store.sb
        samples = list(self.samples)
        rate = 0.0
        if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
            (t0, c0), (t1, c1) = samples[0], samples[-1]
            rate = max(0, c1 - c0) / (t1 - t0)
        free = f.free_chunks
        return {"fill_ratio": round((f.store_chunks - free) / max(1, f.store_chunks), 6),
                "free_chunks": free, "copyout_rate": round(rate, 3),
                "rate_window_s": round(samples[-1][0] - samples[0][0], 1) if samples else 0.0,
                "time_to_full_s": round(free / rate, 1) if rate > 0 else None}
