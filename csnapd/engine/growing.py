"""GROW: taking an enlarged store or origin device into use while clients keep working.

Why its own module: the growth itself is a store operation (store/growth.py) that
changes memory and is made durable by the next group commit like any other, so the
engine only has to check the request, answer once the growth is durable, and tell
the origin's clients the new size (RESIZED, sent after the commit, so no client
writes past the old end before the store knows the new one).  Snapshot clients
hear nothing: a snapshot keeps the size it was taken with.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from csnap_client.protocol import messages as m
from csnapd.store import diff as sd
from csnapd.store.grow import plan_origin_growth

if TYPE_CHECKING:
    from csnapd.engine.conns import Conn
    from csnapd.engine.service import Engine
    from csnapd.store.store import Store

log = logging.getLogger("csnapd.engine")


def grow(engine: Engine, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
    """Do the growths a GROW request asks for; return the OK result.

    Raises GrowthRefused (the reason for the operator) before anything changed when
    either growth cannot be done, so a request for both is all or nothing.
    """
    store = engine.store
    want_store = bool(msg.get("store")) or "store_bytes" in msg
    want_origin = bool(msg.get("origin")) or "origin_bytes" in msg
    if want_origin:  # refuse before the store grows, not after
        plan_origin_growth(store.sb, store.origin.refresh_size(), msg.get("origin_bytes"))
    done = []
    if want_store:
        done.append(store.grow_store(msg.get("store_bytes")).as_dict())
    if want_origin:
        done.append(store.grow_origin(msg.get("origin_bytes")).as_dict())
    for g in done:
        if g["how"] != "unchanged":
            log.info("grew the %s from %d to %d %s (%s)", g["what"], g["old"], g["new"],
                     "chunks" if g["what"] == "store" else "bytes", g["how"])
    if any(g["what"] == "origin" and g["how"] != "unchanged" for g in done):
        f = store.sb
        notice = m.resized(f.origin_chunks, f.origin_bytes)
        for conn_id in engine.conns.origin_conns():
            engine._durable.append((conn_id, dict(notice)))
    f = store.sb
    return {"grown": done, "store_chunks": f.store_chunks, "store_bytes":
            f.store_chunks * f.chunk_size, "origin_bytes": f.origin_bytes,
            "origin_chunks": f.origin_chunks}


def volume_chunks(store: Store, slot: int | None) -> int:
    """The size in chunks of a volume: the origin now (None), or a snapshot as taken."""
    if slot is None:
        return store.origin_chunks
    return -(-store.snapshot_bytes(slot) // store.chunk_size)


def changes_past_base(store: Store, volume: int | None, base: int | None, start: int,
                      end: int, want: int) -> sd.ChangeScan:
    """QUERY_CHANGES against a base that may be smaller (a snapshot taken before the
    origin grew): chunks past the base's end did not exist in it, so all of them count
    as changed; below it, the tree decides (store/diff.py)."""
    base_end = volume_chunks(store, base)
    if start >= base_end:
        return sd.every_chunk(start, end, want)
    scan = sd.changed_chunks(store, volume, base, start, min(end, base_end), want)
    if scan.next is None and base_end < end:
        scan.next = base_end  # the rest is every chunk: the next request gets it
    return scan
