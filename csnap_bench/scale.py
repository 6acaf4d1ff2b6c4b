"""Scale: lookups, memory and snapshot deletion on stores with many exceptions.

The stores are built through the store layer directly (no server). Going through csnapd would copy every chunk of data (10 million 4 KiB copy-outs are 40 GB of
writes), so the builder opens the store in-process and replaces the copier's ``queue`` with a
no-op: every metadata change (B-tree entries, allocation bitmaps, journal commits,
checkpoints) is real, only the chunk *data* copies are skipped. The result is a valid store
(csnap-check accepts it; the copied chunks simply read as zeros).

``stage_scale`` then serves a small (10k) and a large store (600k by default, 10M at full
size) with a real csnapd: random lookups of exceptions from 16 clients, csnapd's RSS
against ``--cache-size``, and the clone of a snapshot that owns most of them and the
deletion of a snapshot that owns up to 1M exceptions while other clients keep working
(their worst latency).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csnap_client.protocol import messages as m
from csnap_client.units import parse_size
from csnapd.store.paths import open_store

from .config import Config
from .harness import RawConn, ServerProc, log, make_files, proc_rss
from .workloads import MIB, Fresh, close_all, connect_many, point, snapshot_read_op

#: The longest a background delete may take before the benchmark stops waiting, seconds.
DELETE_LIMIT = 600.0


@dataclass
class BuiltStore:
    """A store file pair and what the builder put in it."""

    store: Path
    origin: Path
    chunk_size: int
    exceptions: int  # total exceptions in the tree
    keep_chunks: int  # chunks [0, keep_chunks) are exceptions of snapshot "keep"
    doomed_chunks: int  # chunks [keep_chunks, keep_chunks + doomed) belong only to "doomed"
    build_seconds: float


def build(directory: Path, exceptions: int, doomed: int, chunk_size: int = 4096,
          step: int = 4096, commit_every: int = 16) -> BuiltStore:
    """A store whose snapshot ``keep`` owns ``exceptions - doomed`` exceptions (origin
    first-touch writes) and whose snapshot ``doomed`` owns ``doomed`` more (snapshot writes
    to chunks it shared with the origin). Data copies are skipped (module docstring)."""
    doomed = min(doomed, exceptions)
    keep = exceptions - doomed
    origin_chunks = exceptions + 1024
    # Every exception takes a store chunk; metadata is roughly 40 bytes per exception.
    # The revert under load must also pass its up-front check, which counts one possible
    # copy-out per exception of the snapshot (an upper bound: store/revert.py), so the
    # (sparse) store has room for that many more.
    store_chunks = exceptions + keep + exceptions // 40 + 65536
    origin, store_path = make_files(directory, origin_chunks * chunk_size,
                                    store_chunks * chunk_size, chunk_size)
    t0 = time.perf_counter()
    store = open_store(str(store_path), str(origin), cache_size=256 << 20)
    try:
        store.copier.queue = lambda source, from_store, dest: None  # type: ignore[method-assign]
        # The tree is empty: count it now, so the counts are kept exact while building and
        # saved by close(), as a server that has been running keeps them; otherwise the
        # served store would spend its first minutes counting 10M exceptions.
        while store.count_step(1 << 16):
            pass
        store.create_snapshot("keep")
        store.commit()
        ops = 0
        for start in range(0, keep, step):
            store.origin_write([[start, min(step, keep - start)]])
            ops += 1
            if ops % commit_every == 0:
                store.commit()
        store.commit()
        doomed_entry = store.create_snapshot("doomed")
        store.commit()
        for start in range(keep, keep + doomed, step):
            store.snapshot_write(doomed_entry.slot, [[start, min(step, keep + doomed - start)]])
            ops += 1
            if ops % commit_every == 0:
                store.commit()
        store.commit()
    finally:
        store.close()
    return BuiltStore(store_path, origin, chunk_size, exceptions, keep, doomed,
                      time.perf_counter() - t0)


def remove(built: BuiltStore) -> None:
    """Delete the files of a built store."""
    for path in (built.store, built.origin):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def store_lookup_rate(built: BuiltStore, cache: int, seconds: float) -> float:
    """In-process (store layer, no server) random snapshot lookups per second, warm cache."""
    store = open_store(str(built.store), str(built.origin), readonly=True, cache_size=cache)
    try:
        slot = store.snaps.find("keep").slot
        rng = random.Random(3)
        hi = max(1, built.keep_chunks)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:  # warm up
            store.snapshot_lookup(slot, rng.randrange(hi))
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(256):
                store.snapshot_lookup(slot, rng.randrange(hi))
            n += 256
        return n / (time.perf_counter() - t0)
    finally:
        store.close()


async def scale_point(cfg: Config, built: BuiltStore, label: str,
                      with_delete: bool) -> dict[str, Any]:
    """Serve a built store: lookup rate (16 clients, random 1-chunk snapshot reads that all
    resolve to exceptions), csnapd RSS, and optionally the snapshot delete under load."""
    srv = ServerProc(built.store.parent, built.chunk_size, 0, 0,
                     server_args=("--cache-size", cfg.cache_size))
    srv.store, srv.origin = built.store, built.origin
    srv.start()
    result: dict[str, Any] = {"exceptions": built.exceptions,
                              "build_seconds": round(built.build_seconds, 1),
                              "build_rate_per_s": round(built.exceptions / built.build_seconds)}
    try:
        region = (0, built.keep_chunks)
        op = snapshot_read_op(region, region)
        await point(srv, cfg.seconds, f"warmup_{label}", "keep", 16, 1, op)
        res = await point(srv, cfg.seconds, f"lookup_{label}", "keep", 16, 1, op)
        result["lookup"] = res.as_dict()
        result["rss_bytes"] = proc_rss(srv.pid)
        result["cache_size_bytes"] = parse_size(cfg.cache_size)
        if with_delete:
            result["clone"] = await clone_under_load(srv, built)
            result["delete"] = await delete_under_load(srv, built)
            result["revert"] = await revert_under_load(srv, built)
    finally:
        srv.stop(timeout=600)
    result["store_layer_lookups_per_s"] = round(
        store_lookup_rate(built, parse_size(cfg.cache_size), cfg.seconds))
    return result


class StoreProbe:
    """Is background work still pending? Reads the committed state of a store that a
    running csnapd owns (read-only open: superblock + journal replay in memory; no lock)."""

    def __init__(self, built: BuiltStore) -> None:
        self.built = built

    def _ask(self, question: Callable[[Any], Any]) -> bool:
        try:
            store = open_store(str(self.built.store), readonly=True, cache_size=1 << 20)
        except Exception:  # noqa: BLE001 - racing the server's journal writes: try again
            return True
        try:
            return bool(question(store))
        finally:
            store.close()

    def deleting(self) -> bool:
        """True while the store still has snapshots being deleted (or the probe failed)."""
        return self._ask(lambda st: st.snaps.deleting_mask or st.snaps.in_pass_mask())

    def cloning(self) -> bool:
        """True while a clone is still being filled (or the probe failed)."""
        return self._ask(lambda st: st.cloning)

    def reverting(self) -> bool:
        """True while the origin is still being reverted (or the probe failed)."""
        return self._ask(lambda st: st.sb.revert_slot)


async def _under_load(srv: ServerProc, built: BuiltStore, what: str,
                      start: Callable[[Any], Awaitable[Any]], pending: Callable[[], bool],
                      origin_clients: bool = True) -> dict[str, Any]:
    """Run control call ``start(ctl)`` while other clients keep working, then wait until
    ``pending()`` (run off the loop) says the background work is done; the time to the
    answer, to the end, and the worst latency the other clients saw meanwhile."""
    readers = await connect_many(srv, 4, "keep")
    writers = await connect_many(srv, 2, "origin") if origin_clients else []
    pingers = await connect_many(srv, 2, "origin" if origin_clients else "keep")
    first_spare = built.keep_chunks + built.doomed_chunks
    spare = Fresh(first_spare, first_spare + 1024)
    samples: list[tuple[float, float, str]] = []  # (start, latency, kind)
    stop = asyncio.Event()
    rng = random.Random(5)

    async def work(conn: RawConn, kind: str) -> None:
        while not stop.is_set():
            if kind == "read":
                msg = m.query_snapshot_read(0, [[rng.randrange(max(1, built.keep_chunks)), 1]])
            elif kind == "write":
                try:
                    start = spare.take(1)
                except RuntimeError:
                    spare.next = first_spare  # rewrites from now on
                    start = spare.take(1)
                msg = m.query_write(0, [[start, 1]])
            else:
                msg = m.ping(0)
            t = time.perf_counter()
            reply = await conn.call(msg)
            samples.append((t, time.perf_counter() - t, kind))
            if reply["op"] == "ERROR":
                raise RuntimeError(f"{kind} failed during {what}: {reply}")
            await asyncio.sleep(0.001)

    tasks = [asyncio.ensure_future(work(c, k)) for cs, k in
             ((readers, "read"), (writers, "write"), (pingers, "ping")) for c in cs]
    loop = asyncio.get_running_loop()
    done_at: float | None = None
    t0 = time.perf_counter()
    acked = 0.0
    try:
        await asyncio.sleep(0.5)
        ctl = await srv.ctl()
        try:
            t0 = time.perf_counter()
            await start(ctl)
            acked = time.perf_counter() - t0
            while done_at is None and time.perf_counter() - t0 < DELETE_LIMIT:
                await asyncio.sleep(0.25)
                if not await loop.run_in_executor(None, pending):
                    done_at = time.perf_counter()
        finally:
            await ctl.close()
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_all(readers + writers + pingers)
    end = done_at if done_at is not None else time.perf_counter()
    lats = sorted(lat for t, lat, _ in samples if t0 <= t <= end)
    worst: dict[str, float] = {}
    for t, lat, kind in samples:
        if t0 <= t <= end and lat * 1e3 > worst.get(kind, 0.0):
            worst[kind] = round(lat * 1e3, 2)
    return {f"{what}_ack_seconds": round(acked, 3),
            "finished": done_at is not None,
            f"{what}_seconds": round(end - t0, 2),
            f"{what}_seconds_resolution": "0.25 s + one read-only probe of the store",
            "requests_during": len(lats),
            "worst_latency_ms": round(lats[-1] * 1e3, 2) if lats else None,
            "p99_latency_ms": round(lats[int(len(lats) * 0.99)] * 1e3, 2) if lats else None,
            "worst_latency_ms_by_kind": worst,
            "workers": ("4 snapshot readers (random 1-chunk lookups of 'keep'), 2 origin "
                        "first-touch writers, 2 pingers; 1 ms think time each")
            if origin_clients else ("4 snapshot readers (random 1-chunk lookups of 'keep'), "
                                    "2 pingers on 'keep' (a revert admits no origin "
                                    "client); 1 ms think time each"),
            "note": "completion is detected by opening the store read-only in the benchmark "
                    "process (journal replayed in memory), not by STATUS"}


async def delete_under_load(srv: ServerProc, built: BuiltStore) -> dict[str, Any]:
    """Delete snapshot ``doomed`` while other clients keep working; how long the background
    delete takes and the worst latency the others saw meanwhile."""
    out = await _under_load(srv, built, "delete", lambda ctl: ctl.delete("doomed"),
                            StoreProbe(built).deleting)
    return {"doomed_exceptions": built.doomed_chunks, **out}


async def revert_under_load(srv: ServerProc, built: BuiltStore) -> dict[str, Any]:
    """Revert the origin to snapshot ``keep`` (its ``keep_chunks`` exceptions are copied
    onto the origin; run after the clone, so no other snapshot needs copy-outs) while
    snapshot readers keep working."""
    out = await _under_load(srv, built, "revert", lambda ctl: ctl.revert("keep"),
                            StoreProbe(built).reverting, origin_clients=False)
    return {"snapshot_exceptions": built.keep_chunks, **out}


async def clone_under_load(srv: ServerProc, built: BuiltStore) -> dict[str, Any]:
    """Clone snapshot ``keep`` (which owns ``keep_chunks`` exceptions) while other clients
    keep working; the answer's time, the background fill's, and the worst latency."""
    out = await _under_load(srv, built, "clone",
                            lambda ctl: ctl.create("keep-clone", from_="keep"),
                            StoreProbe(built).cloning)
    return {"parent_exceptions": built.keep_chunks, **out}


async def stage_scale(cfg: Config, tmp: Path, out: dict[str, Any]) -> None:
    """Small vs large store built through the store layer directly."""
    sc: dict[str, Any] = {"built_via": "store layer directly (csnap_bench.scale), data copies "
                                       "skipped; metadata, journal and bitmaps are real",
                          "cache_size": cfg.cache_size}
    small = build(tmp / "small", cfg.small_exceptions, cfg.small_exceptions // 2)
    log(f"built {small.exceptions} exceptions in {small.build_seconds:.1f}s")
    sc["small"] = await scale_point(cfg, small, "small", with_delete=False)
    shutil.rmtree(tmp / "small", ignore_errors=True)
    log(f"building {cfg.scale_exceptions} exceptions through the store layer...")
    big = build(tmp / "big", cfg.scale_exceptions, cfg.delete_exceptions)
    log(f"built {big.exceptions} exceptions in {big.build_seconds:.1f}s "
        f"({big.exceptions / big.build_seconds:.0f}/s)")
    sc["large"] = await scale_point(cfg, big, "large", with_delete=True)
    shutil.rmtree(tmp / "big", ignore_errors=True)
    s_rate = sc["small"]["lookup"]["chunks_per_s"] or 1
    sc["lookup_ratio_large_vs_small"] = round(sc["large"]["lookup"]["chunks_per_s"] / s_rate, 3)
    sc["store_layer_ratio_large_vs_small"] = round(
        sc["large"]["store_layer_lookups_per_s"]
        / max(1, sc["small"]["store_layer_lookups_per_s"]), 3)
    d = sc["large"]["delete"]
    log(f"scale: lookups {sc['large']['lookup']['chunks_per_s']:.0f}/s at "
        f"{big.exceptions} vs {s_rate:.0f}/s at {small.exceptions}; RSS "
        f"{sc['large']['rss_bytes'] / MIB:.0f} MiB; delete of {d['doomed_exceptions']} took "
        f"{d['delete_seconds']}s, worst latency {d['worst_latency_ms']} ms")
    r = sc["large"]["revert"]
    log(f"scale: revert of the origin to a snapshot owning {r['snapshot_exceptions']} "
        f"exceptions answered in {r['revert_ack_seconds']}s, done in {r['revert_seconds']}s, "
        f"worst latency {r['worst_latency_ms']} ms")
    c = sc["large"]["clone"]
    log(f"scale: clone of a snapshot owning {c['parent_exceptions']} exceptions answered in "
        f"{c['clone_ack_seconds']}s, filled in {c['clone_seconds']}s, worst latency "
        f"{c['worst_latency_ms']} ms")
    out["scale"] = sc
