"""The throughput stages: csnapd at several client counts and message sizes.

``stage_4k``: first touch, rewrites, the client library, snapshot reads and writes and PING
on a 4 KiB-chunk store, plus group commit and the raw baselines; ``stage_64k``: first touch
with 64 KiB chunks and the raw copy baseline at that size; ``stage_snapcount``: first-touch
cost with 1, 64 and 1024 live snapshots. Each stage starts its own csnapd.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from . import baselines
from .config import Config
from .harness import ServerProc, log
from .workloads import (
    GIB,
    KIB,
    MIB,
    Fresh,
    create_snapshots,
    first_touch_op,
    library_first_touch,
    library_rewrites,
    ping_op,
    point,
    rewrite_op,
    snapshot_read_op,
    snapshot_write_op,
    status,
)


async def _group_commit(srv: ServerProc, cfg: Config, fresh: Fresh) -> tuple[Any, dict]:
    """The 16-client, 1-chunk first-touch point with the commit counters around it."""
    before = await status(srv)
    res = await point(srv, cfg.seconds, "first_touch_4k", "origin", 16, 1,
                      first_touch_op(fresh), srv.chunk_size)
    after = await status(srv)
    d = {k: after["store"][k] - before["store"][k]
         for k in ("ops_committed", "commits", "flushes")}
    return res, {"clients": 16, "chunks_per_msg": 1, "acked_ops": res.ops, **d,
                 "ops_per_commit": round(d["ops_committed"] / max(1, d["commits"]), 2),
                 "ops_per_fsync": round(d["ops_committed"] / max(1, d["flushes"]), 2),
                 "source": "csnapctl status: store.ops_committed / store.commits, "
                           "/ store.flushes"}


async def stage_4k(cfg: Config, tmp: Path, out: dict[str, Any]) -> None:
    """Throughput workloads on a 4 KiB-chunk store, group commit and the raw baselines."""
    wl = out["workloads"]
    cs = 4 * KIB
    srv = ServerProc(tmp / "s4k", cs, 16 * GIB, 16 * GIB)
    srv.start()
    try:
        await create_snapshots(srv, ["s1"])
        chunks = srv.origin_bytes // cs
        fresh = Fresh(0, chunks // 2)
        log("first-touch origin writes, 4 KiB chunks (one live snapshot)")
        pts = []
        for k in cfg.batches:
            for c in cfg.clients:
                if c == 16 and k == 1:
                    res, out["group_commit"] = await _group_commit(srv, cfg, fresh)
                else:
                    res = await point(srv, cfg.seconds, "first_touch_4k", "origin", c, k,
                                      first_touch_op(fresh), cs)
                pts.append(res.as_dict())
        wl["first_touch_4k"] = pts
        if fresh.next < 4096:  # make sure the region is big enough for random picks
            await point(srv, cfg.seconds, "prefill", "origin", 4, 64, first_touch_op(fresh), cs)
        unique = (0, fresh.next)
        log(f"rewrites of unique chunks (region of {unique[1]} chunks)")
        wl["rewrite_unique_raw"] = [
            (await point(srv, cfg.seconds, "rewrite_unique_raw", "origin", c, k,
                         rewrite_op(unique))).as_dict()
            for k in cfg.batches for c in cfg.clients]
        region = min(unique[1] * cs, 64 * MIB)
        lib = []
        for size in (4 * KIB, 64 * KIB):
            raw_mb, offsets = baselines.pwrite_mb_per_s(srv.origin, size, region,
                                                        cfg.baseline_seconds)
            r = await library_rewrites(srv, size, offsets, region, cfg.lib_seconds)
            r["raw_pwrite_mb_per_s"] = round(raw_mb, 2)
            r["ratio_to_raw"] = round(r["mb_per_s"] / raw_mb, 3)
            log(f"  library cached rewrite {size // KIB} KiB: {r['mb_per_s']} MB/s vs raw "
                f"pwrite {raw_mb:.1f} MB/s")
            lib.append(r)
        wl["rewrite_cached_library"] = lib
        shared = (chunks // 2, chunks // 2 + 65536)
        log("snapshot reads (half store, half origin with lock + finish)")
        wl["snapshot_read"] = [
            (await point(srv, cfg.seconds, "snapshot_read", "s1", c, k,
                         snapshot_read_op(unique, shared))).as_dict()
            for k in cfg.batches for c in cfg.clients]
        log("snapshot writes (unsharing)")
        sfresh = Fresh(chunks // 2 + 65536, chunks)
        wl["snapshot_write_4k"] = [
            (await point(srv, cfg.seconds, "snapshot_write_4k", "s1", c, k,
                         snapshot_write_op(sfresh), cs)).as_dict()
            for k in cfg.batches for c in cfg.clients]
        log("PING round trips")
        wl["ping"] = [(await point(srv, cfg.seconds, "ping", "origin", c, 1,
                                   ping_op())).as_dict() for c in cfg.clients]
        if "library" not in cfg.skip:
            res = await library_first_touch(srv, fresh, 16, cfg.lib_seconds)
            wl["lib_first_touch_4k"] = [res.as_dict()]
            log(f"  library first touch, 16 clients: {res.as_dict()['chunks_per_s']} chunks/s")
        b = out["baselines"]
        b["copy_mb_per_s_4k"] = round(baselines.copy_mb_per_s(
            srv.directory, srv.origin, cs, cfg.baseline_seconds), 2)
        b["fdatasync_per_s"] = round(baselines.fdatasync_per_s(srv.directory,
                                                               cfg.baseline_seconds), 1)
        b["raw_pwrite_mb_per_s_4k"] = lib[0]["raw_pwrite_mb_per_s"]
        b["raw_pwrite_mb_per_s_64k"] = lib[1]["raw_pwrite_mb_per_s"]
        log(f"baselines: copy 4K {b['copy_mb_per_s_4k']} MB/s, fdatasync "
            f"{b['fdatasync_per_s']}/s")
    finally:
        srv.stop()
        shutil.rmtree(srv.directory, ignore_errors=True)


async def stage_64k(cfg: Config, tmp: Path, out: dict[str, Any]) -> None:
    """First-touch writes with 64 KiB chunks, and the raw copy baseline at 64 KiB."""
    cs = 64 * KIB
    srv = ServerProc(tmp / "s64k", cs, 64 * GIB, 64 * GIB)
    srv.start()
    try:
        await create_snapshots(srv, ["s1"])
        fresh = Fresh(0, srv.origin_bytes // cs // 2)
        log("first-touch origin writes, 64 KiB chunks")
        out["workloads"]["first_touch_64k"] = [
            (await point(srv, cfg.seconds, "first_touch_64k", "origin", c, k,
                         first_touch_op(fresh), cs)).as_dict()
            for k in cfg.batches for c in cfg.clients]
        out["baselines"]["copy_mb_per_s_64k"] = round(
            baselines.copy_mb_per_s(srv.directory, srv.origin, cs, cfg.baseline_seconds), 2)
        log(f"baseline copy 64K: {out['baselines']['copy_mb_per_s_64k']} MB/s")
    finally:
        srv.stop()
        shutil.rmtree(srv.directory, ignore_errors=True)


async def stage_snapcount(cfg: Config, tmp: Path, out: dict[str, Any]) -> None:
    """First-touch cost (16 clients, 1 chunk/msg) with 1, 64 and 1024 live snapshots, on a
    store made for 1024 snapshots (64 KiB chunks: 1024 snapshots need 32 KiB blocks)."""
    cs = 64 * KIB
    srv = ServerProc(tmp / "snaps", cs, 16 * GIB, 32 * GIB,
                     init_args=("--max-snapshots", str(max(cfg.snap_counts))))
    srv.start()
    pts = []
    try:
        fresh = Fresh(0, srv.origin_bytes // cs)
        have = 0
        for n in cfg.snap_counts:
            t0 = time.perf_counter()
            await create_snapshots(srv, [f"n{i}" for i in range(have, n)])
            made = time.perf_counter() - t0
            have = n
            res = await point(srv, cfg.seconds, f"first_touch_{n}_snaps", "origin", 16, 1,
                              first_touch_op(fresh), cs)
            d = res.as_dict()
            d["live_snapshots"] = n
            d["create_seconds"] = round(made, 3)
            pts.append(d)
        base = pts[0]["chunks_per_s"] or 1
        for d in pts:
            d["cost_vs_1"] = round(base / max(d["chunks_per_s"], 1e-9), 3)
    finally:
        srv.stop()
        shutil.rmtree(srv.directory, ignore_errors=True)
    out["workloads"]["snapshot_count"] = pts
