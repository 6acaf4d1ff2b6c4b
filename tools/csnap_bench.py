"""csnap-bench: measure csnapd on temporary files and compare with raw I/O and qcow2.

Starts its own csnapd processes (subprocesses, on sparse files in a temporary directory),
runs the workloads of docs/performance.md, prints a table and writes JSON (``--json``).
``--quick`` is a < 30 s smoke run (CI); the default run takes about 3 minutes on 2 cores;
``--scale-exceptions 10000000`` runs the large-store part at full size (several minutes).

Server-side figures come from a raw-protocol asyncio client (one process, uvloop, one
request in flight per connection: closed loop); the table shows the CPU used by csnapd
and by this client process so it is visible which side is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import csnap_client
from csnap_bench import scale
from csnap_bench.harness import (
    RawConn,
    Result,
    ServerProc,
    proc_rss,
    run_closed_loop,
)
from csnap_client.protocol import messages as m
from csnap_client.units import parse_size
from csnap_client.version import add_version_option
from tools import nbd_bench

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


@dataclass
class Config:
    """Sizes and durations of one run."""

    mode: str
    seconds: float  # duration of one measured point
    clients: list[int]
    batches: list[int]  # chunks per message
    snap_counts: list[int]
    scale_exceptions: int
    delete_exceptions: int
    small_exceptions: int
    cache_size: str
    baseline_seconds: float
    qemu_writes: int
    lib_seconds: float
    skip: set[str] = field(default_factory=set)


def make_config(args: argparse.Namespace) -> Config:
    """The configuration for ``--quick`` or the default run, with overrides applied."""
    if args.quick:
        cfg = Config("quick", 0.25, [1, 16], [1, 64], [1, 16], 20_000, 10_000, 10_000,
                     args.cache_size, 0.2, 2000, 0.25)
    else:
        cfg = Config("default", 1.0, [1, 4, 16, 64], [1, 64], [1, 64, 1024], 600_000,
                     300_000, 10_000, args.cache_size, 0.5, 4000, 1.0)
    if args.seconds:
        cfg.seconds = args.seconds
    if args.scale_exceptions:
        cfg.scale_exceptions = args.scale_exceptions
        cfg.delete_exceptions = min(1_000_000, args.scale_exceptions // 2)
        cfg.mode += "+scale"
    if args.delete_exceptions:
        cfg.delete_exceptions = args.delete_exceptions
    cfg.skip = set(args.skip or [])
    return cfg


class Fresh:
    """Hands out never-written chunk ranges of one origin."""

    def __init__(self, start: int, limit: int) -> None:
        self.next, self.limit = start, limit

    def take(self, n: int) -> int:
        """The first chunk of ``n`` fresh consecutive chunks."""
        start = self.next
        if start + n > self.limit:
            raise RuntimeError("benchmark origin exhausted: raise the origin size")
        self.next += n
        return start


def log(text: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------- machine and baselines

def machine_info(directory: Path) -> dict[str, Any]:
    """nproc, CPU model, memory, the file system of the benchmark files."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    fs = ""
    try:
        out = subprocess.run(["df", "-T", str(directory)], capture_output=True, text=True)
        fs = out.stdout.splitlines()[-1]
    except (OSError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_bytes": mem,
            "loadavg_at_start": list(os.getloadavg()),
            "python": platform.python_version(), "kernel": platform.release(),
            "filesystem": fs}


def baseline_copy(directory: Path, src: Path, chunk: int, seconds: float) -> float:
    """MB/s of chunk-by-chunk pread (from ``src``, the benchmark origin, in a region never
    written, as the server's copy-outs read it) + pwrite (to a fresh scratch file in the same
    directory) for ``seconds``, then one fdatasync, which is counted."""
    dst = directory / f"copy-{chunk}.scratch"
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(64):
                data = os.pread(sfd, chunk, (1 << 30) + done * chunk)
                os.pwrite(dfd, data, done * chunk)
                done += 1
        os.fdatasync(dfd)
        return done * chunk / (time.perf_counter() - t0) / 1e6
    finally:
        os.close(sfd)
        os.close(dfd)
        dst.unlink()


def baseline_fdatasync(directory: Path, seconds: float) -> float:
    """fdatasync calls per second (each after a 4 KiB pwrite) on the benchmark file system."""
    path = directory / "sync.scratch"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        buf, n, t0 = b"x" * 4096, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            os.pwrite(fd, buf, (n % 256) * 4096)
            os.fdatasync(fd)
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()


def baseline_write(path: Path, size: int, region: int, seconds: float) -> tuple[float, list[int]]:
    """MB/s of plain os.pwrite of ``size`` bytes at random aligned offsets in
    ``[0, region)`` of ``path`` (no sync: the client library's writes are not synced either);
    also returns the offsets used."""
    fd = os.open(path, os.O_RDWR)
    rng = random.Random(7)
    buf = os.urandom(size)
    offsets = [rng.randrange(region // size) * size for _ in range(4096)]
    try:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            os.pwrite(fd, buf, offsets[n % len(offsets)])
            n += 1
        return n * size / (time.perf_counter() - t0) / 1e6, offsets
    finally:
        os.close(fd)


# --------------------------------------------------------------------- raw workloads

async def connect_many(srv: ServerProc, n: int, volume: str | int = "origin") -> list[RawConn]:
    """``n`` identified raw connections."""
    return list(await asyncio.gather(*(srv.connect(volume) for _ in range(n))))


def close_all(conns: list[RawConn]) -> None:
    """Close raw connections."""
    for c in conns:
        c.close()


async def point(srv: ServerProc, cfg: Config, name: str, volume: str, clients: int, k: int,
                op_factory: Any, chunk_bytes: int = 0, seconds: float | None = None
                ) -> Result:
    """One measured point: ``clients`` connections to ``volume``, ``k`` chunks per message."""
    conns = await connect_many(srv, clients, volume)
    try:
        op = op_factory(conns, k)
        res = await run_closed_loop(name, clients, op, seconds or cfg.seconds, k, srv.pid,
                                    chunk_bytes=chunk_bytes)
    finally:
        close_all(conns)
    d = res.as_dict()
    log(f"  {name:<28} c={clients:<3} k={k:<3} {d['ops_per_s']:>10.0f} ops/s "
        f"{d['chunks_per_s']:>10.0f} chunks/s p50 {d['p50_ms']:.2f} ms p99 {d['p99_ms']:.2f} ms "
        f"srv {d['server_cpu']:.2f} cli {d['client_cpu']:.2f}")
    return res


def first_touch_op(fresh: Fresh) -> Any:
    """QUERY_WRITE of never-written origin chunks (each needs a copy-out)."""
    def factory(conns: list[RawConn], k: int) -> Any:
        async def op(w: int, seq: int) -> int:
            reply = await conns[w].call(m.query_write(0, [[fresh.take(k), k]]))
            if reply["op"] != "WRITE_OK":
                raise RuntimeError(f"first-touch write failed: {reply}")
            return k
        return op
    return factory


def rewrite_op(region: tuple[int, int]) -> Any:
    """QUERY_WRITE of origin chunks already unique (metadata lookup only)."""
    lo, hi = region

    def factory(conns: list[RawConn], k: int) -> Any:
        rng = random.Random(k)

        async def op(w: int, seq: int) -> int:
            start = lo + rng.randrange(max(1, (hi - lo - k) // k)) * k
            reply = await conns[w].call(m.query_write(0, [[start, k]]))
            if reply["op"] != "WRITE_OK":
                raise RuntimeError(f"rewrite failed: {reply}")
            return k
        return op
    return factory


def snapshot_read_op(exc_region: tuple[int, int], origin_region: tuple[int, int]) -> Any:
    """Alternately: a read of chunks the snapshot has in the store (exceptions), and a read
    of chunks it shares with the origin (read lock, then FINISH_SNAPSHOT_READ)."""
    def factory(conns: list[RawConn], k: int) -> Any:
        rng = random.Random(k + 1)

        async def op(w: int, seq: int) -> int:
            lo, hi = exc_region if seq % 2 == 0 else origin_region
            start = lo + rng.randrange(max(1, (hi - lo - k) // k)) * k
            c = conns[w]
            reply = await c.call(m.query_snapshot_read(0, [[start, k]]))
            if reply["op"] != "SNAPSHOT_READ_OK":
                raise RuntimeError(f"snapshot read failed: {reply}")
            if reply["origin"]:
                fin = await c.call(m.finish_snapshot_read(0, reply["id"]))
                if fin["op"] != "FINISH_OK":
                    raise RuntimeError(f"finish failed: {fin}")
            return k
        return op
    return factory


def snapshot_write_op(fresh: Fresh) -> Any:
    """QUERY_WRITE on a snapshot connection for chunks it still shares (unsharing)."""
    def factory(conns: list[RawConn], k: int) -> Any:
        async def op(w: int, seq: int) -> int:
            reply = await conns[w].call(m.query_write(0, [[fresh.take(k), k]]))
            if reply["op"] != "SNAPSHOT_WRITE_OK":
                raise RuntimeError(f"snapshot write failed: {reply}")
            return k
        return op
    return factory


def ping_op() -> Any:
    """PING/PONG round trips."""
    def factory(conns: list[RawConn], k: int) -> Any:
        async def op(w: int, seq: int) -> int:
            await conns[w].call(m.ping(0))
            return 0
        return op
    return factory


async def status(srv: ServerProc) -> dict[str, Any]:
    """The server's STATUS (walks the tree: keep it off timed paths)."""
    ctl = await srv.ctl()
    try:
        return await ctl.status()
    finally:
        await ctl.close()


async def create_snapshots(srv: ServerProc, names: list[str]) -> None:
    """Create snapshots, up to 128 requests in flight."""
    ctl = await srv.ctl()
    try:
        for i in range(0, len(names), 128):
            await asyncio.gather(*(ctl.create(n) for n in names[i:i + 128]))
    finally:
        await ctl.close()


# --------------------------------------------------------------------- client library

async def library_rewrites(srv: ServerProc, size: int, offsets: list[int], region: int,
                           seconds: float) -> dict[str, Any]:
    """Origin rewrites through csnap_client.Volume whose unique cache already covers the
    region (no message per write): MB/s and latency."""
    vol = await csnap_client.connect("127.0.0.1", srv.port, "origin", origin=str(srv.origin),
                                     store=str(srv.store))
    try:
        step = 1 * MIB
        zero = bytes(step)
        for off in range(0, region, step):  # approvals for the whole region, cached
            await vol.write(off, zero)
        buf = os.urandom(size)
        lats: list[float] = []
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            t = time.perf_counter()
            await vol.write(offsets[n % len(offsets)], buf)
            lats.append(time.perf_counter() - t)
            n += 1
        el = time.perf_counter() - t0
        await vol.flush()
    finally:
        await vol.close()
    lats.sort()
    return {"write_size": size, "ops_per_s": round(n / el, 1), "mb_per_s": round(n * size / el / 1e6, 2),
            "p50_ms": round(lats[len(lats) // 2] * 1e3, 4),
            "p99_ms": round(lats[int(len(lats) * 0.99)] * 1e3, 4)}


async def library_first_touch(srv: ServerProc, fresh: Fresh, clients: int, seconds: float
                              ) -> Result:
    """First-touch 1-chunk origin writes through csnap_client.Volume (query + data write)."""
    vols = [await csnap_client.connect("127.0.0.1", srv.port, "origin", origin=str(srv.origin),
                                       store=str(srv.store)) for _ in range(clients)]
    cs = srv.chunk_size
    buf = os.urandom(cs)
    try:
        async def op(w: int, seq: int) -> int:
            await vols[w].write(fresh.take(1) * cs, buf)
            return 1
        res = await run_closed_loop("lib_first_touch_4k", clients, op, seconds, 1, srv.pid,
                                    chunk_bytes=cs)
    finally:
        for v in vols:
            await v.close()
    res.notes = "client library: QUERY_WRITE + pwrite of the data (not synced)"
    return res


# --------------------------------------------------------------------- stages

async def stage_4k(cfg: Config, tmp: Path, out: dict[str, Any]) -> None:
    """Workloads 1-6 on a 4 KiB-chunk store, plus the group-commit ratio and baselines."""
    wl = out["workloads"]
    cs = 4 * KIB
    srv = ServerProc(tmp / "s4k", cs, 16 * GIB, 16 * GIB)
    srv.start()
    try:
        await create_snapshots(srv, ["s1"])
        chunks = srv.origin_bytes // cs
        fresh = Fresh(0, chunks // 2)
        # (1) first touch
        log("first-touch origin writes, 4 KiB chunks (one live snapshot)")
        pts = []
        for k in cfg.batches:
            for c in cfg.clients:
                before = await status(srv) if (c == 16 and k == 1) else None
                res = await point(srv, cfg, "first_touch_4k", "origin", c, k,
                                  first_touch_op(fresh), cs)
                if before is not None:
                    after = await status(srv)
                    ops = after["store"]["ops_committed"] - before["store"]["ops_committed"]
                    commits = after["store"]["commits"] - before["store"]["commits"]
                    flushes = after["store"]["flushes"] - before["store"]["flushes"]
                    out["group_commit"] = {
                        "clients": 16, "chunks_per_msg": 1, "acked_ops": res.ops,
                        "ops_committed": ops, "commits": commits, "flushes": flushes,
                        "ops_per_commit": round(ops / max(1, commits), 2),
                        "ops_per_fsync": round(ops / max(1, flushes), 2),
                        "source": "csnapctl status: store.ops_committed / store.commits"}
                pts.append(res.as_dict())
        wl["first_touch_4k"] = pts
        unique_region = (0, fresh.next)
        # (2) rewrites of unique chunks: raw protocol
        if unique_region[1] < 4096:  # make sure the region is big enough for random picks
            await point(srv, cfg, "prefill", "origin", 4, 64, first_touch_op(fresh), cs)
            unique_region = (0, fresh.next)
        log(f"rewrites of unique chunks (region of {unique_region[1]} chunks)")
        wl["rewrite_unique_raw"] = [
            (await point(srv, cfg, "rewrite_unique_raw", "origin", c, k,
                         rewrite_op(unique_region))).as_dict()
            for k in cfg.batches for c in cfg.clients]
        # (2b) client library with its unique cache vs raw pwrite
        region = min(unique_region[1] * cs, 64 * MIB)
        lib = []
        for size in (4 * KIB, 64 * KIB):
            raw_mb, offsets = baseline_write(srv.origin, size, region, cfg.baseline_seconds)
            r = await library_rewrites(srv, size, offsets, region, cfg.lib_seconds)
            r["raw_pwrite_mb_per_s"] = round(raw_mb, 2)
            r["ratio_to_raw"] = round(r["mb_per_s"] / raw_mb, 3)
            log(f"  library cached rewrite {size // KIB} KiB: {r['mb_per_s']} MB/s vs raw "
                f"pwrite {raw_mb:.1f} MB/s")
            lib.append(r)
        wl["rewrite_cached_library"] = lib
        # (3) snapshot reads: half exceptions, half origin with lock + release
        origin_region = (chunks // 2, chunks // 2 + 65536)
        log("snapshot reads (half store, half origin with lock + finish)")
        wl["snapshot_read"] = [
            (await point(srv, cfg, "snapshot_read", "s1", c, k,
                         snapshot_read_op(unique_region, origin_region))).as_dict()
            for k in cfg.batches for c in cfg.clients]
        # (4) snapshot writes (unsharing from the origin)
        log("snapshot writes (unsharing)")
        sfresh = Fresh(chunks // 2 + 65536, chunks)
        wl["snapshot_write_4k"] = [
            (await point(srv, cfg, "snapshot_write_4k", "s1", c, k,
                         snapshot_write_op(sfresh), cs)).as_dict()
            for k in cfg.batches for c in cfg.clients]
        # (6) protocol ceiling
        log("PING round trips")
        wl["ping"] = [(await point(srv, cfg, "ping", "origin", c, 1, ping_op())).as_dict()
                      for c in cfg.clients]
        # library first touch for reference
        if "library" not in cfg.skip:
            res = await library_first_touch(srv, fresh, 16, cfg.lib_seconds)
            wl["lib_first_touch_4k"] = [res.as_dict()]
            log(f"  library first touch, 16 clients: {res.as_dict()['chunks_per_s']} chunks/s")
        # baselines on the same files
        b = out["baselines"]
        b["copy_mb_per_s_4k"] = round(baseline_copy(srv.directory, srv.origin, cs,
                                                     cfg.baseline_seconds), 2)
        b["fdatasync_per_s"] = round(baseline_fdatasync(srv.directory, cfg.baseline_seconds), 1)
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
        pts = []
        for k in cfg.batches:
            for c in cfg.clients:
                pts.append((await point(srv, cfg, "first_touch_64k", "origin", c, k,
                                        first_touch_op(fresh), cs)).as_dict())
        out["workloads"]["first_touch_64k"] = pts
        out["baselines"]["copy_mb_per_s_64k"] = round(
            baseline_copy(srv.directory, srv.origin, cs, cfg.baseline_seconds), 2)
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
            res = await point(srv, cfg, f"first_touch_{n}_snaps", "origin", 16, 1,
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


def store_lookup_rate(built: scale.BuiltStore, cache: int, seconds: float) -> float:
    """In-process (store layer, no server) random snapshot lookups per second, warm cache."""
    from csnapd.store.paths import open_store
    store = open_store(str(built.store), str(built.origin), readonly=True, cache_size=cache)
    try:
        slot = store.snaps.find("keep").slot
        rng = random.Random(3)
        hi = max(1, built.keep_chunks)
        n, t0 = 0, time.perf_counter()
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


async def scale_point(cfg: Config, built: scale.BuiltStore, label: str,
                      with_delete: bool) -> dict[str, Any]:
    """Serve a built store: lookup rate (16 clients, random 1-chunk snapshot reads that all
    resolve to exceptions), csnapd RSS, and optionally the snapshot delete under load."""
    srv = ServerProc(built.store.parent, built.chunk_size, 0, 0,
                     server_args=("--cache-size", cfg.cache_size))
    srv.store, srv.origin = built.store, built.origin
    srv.start()
    result: dict[str, Any] = {"exceptions": built.exceptions, "build_seconds":
                              round(built.build_seconds, 1),
                              "build_rate_per_s": round(built.exceptions / built.build_seconds)}
    try:
        region = (0, built.keep_chunks)
        op = snapshot_read_op(region, region)
        await point(srv, cfg, f"warmup_{label}", "keep", 16, 1, op, seconds=cfg.seconds)
        res = await point(srv, cfg, f"lookup_{label}", "keep", 16, 1, op)
        result["lookup"] = res.as_dict()
        result["rss_bytes"] = proc_rss(srv.pid)
        result["cache_size_bytes"] = parse_size(cfg.cache_size)
        if with_delete:
            result["delete"] = await delete_under_load(srv, built)
    finally:
        srv.stop(timeout=600)
    result["store_layer_lookups_per_s"] = round(
        store_lookup_rate(built, parse_size(cfg.cache_size), cfg.seconds))
    return result


async def delete_under_load(srv: ServerProc, built: scale.BuiltStore) -> dict[str, Any]:
    """Delete snapshot ``doomed`` while other clients keep working; how long the background
    delete takes and the worst latency the others saw meanwhile."""
    readers = await connect_many(srv, 4, "keep")
    writers = await connect_many(srv, 2, "origin")
    pingers = await connect_many(srv, 2, "origin")
    spare = Fresh(built.keep_chunks + built.doomed_chunks, built.keep_chunks
                  + built.doomed_chunks + 1024)
    samples: list[tuple[float, float, str]] = []  # (start, latency, kind)
    stop = asyncio.Event()
    rng = random.Random(5)

    async def loop(conn: RawConn, kind: str) -> None:
        while not stop.is_set():
            if kind == "read":
                msg = m.query_snapshot_read(0, [[rng.randrange(max(1, built.keep_chunks)), 1]])
            elif kind == "write":
                try:
                    start = spare.take(1)
                except RuntimeError:
                    spare.next = built.keep_chunks + built.doomed_chunks  # rewrites from now
                    start = spare.take(1)
                msg = m.query_write(0, [[start, 1]])
            else:
                msg = m.ping(0)
            t = time.perf_counter()
            reply = await conn.call(msg)
            samples.append((t, time.perf_counter() - t, kind))
            if reply["op"] == "ERROR":
                raise RuntimeError(f"{kind} failed during delete: {reply}")
            await asyncio.sleep(0.001)

    tasks = [asyncio.ensure_future(loop(c, k)) for cs, k in
             ((readers, "read"), (writers, "write"), (pingers, "ping")) for c in cs]
    probe = DeleteProbe(built)
    loop_ = asyncio.get_running_loop()
    done_at: float | None = None
    try:
        await asyncio.sleep(0.5)
        ctl = await srv.ctl()
        try:
            t_del = time.perf_counter()
            await ctl.delete("doomed")
            acked = time.perf_counter() - t_del
            while done_at is None and time.perf_counter() - t_del < DELETE_LIMIT:
                await asyncio.sleep(0.25)
                if not await loop_.run_in_executor(None, probe.deleting):
                    done_at = time.perf_counter()
        finally:
            await ctl.close()
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        close_all(readers + writers + pingers)
    end = done_at if done_at is not None else time.perf_counter()
    lats = sorted(lat for t, lat, _ in samples if t_del <= t <= end)
    return {"doomed_exceptions": built.doomed_chunks,
            "delete_ack_seconds": round(acked, 3),
            "finished": done_at is not None,
            "delete_seconds": round(end - t_del, 2),
            "delete_seconds_resolution": "0.25 s + one read-only probe of the store",
            "requests_during": len(lats),
            "worst_latency_ms": round(lats[-1] * 1e3, 2) if lats else None,
            "p99_latency_ms": round(lats[int(len(lats) * 0.99)] * 1e3, 2) if lats else None,
            "workers": "4 snapshot readers (random 1-chunk lookups of 'keep'), 2 origin "
                       "first-touch writers, 2 pingers; 1 ms think time each",
            "note": "completion is detected by opening the store read-only in the benchmark "
                    "process (journal replayed in memory), not by STATUS, which walks the "
                    "whole tree on the server"}


DELETE_LIMIT = 600.0


class DeleteProbe:
    """Is a snapshot deletion still pending? Reads the committed state of a store that a
    running csnapd owns (read-only open: superblock + journal replay in memory; no lock)."""

    def __init__(self, built: scale.BuiltStore) -> None:
        self.built = built

    def deleting(self) -> bool:
        """True while the store still has snapshots being deleted (or the probe failed)."""
        from csnapd.store.paths import open_store
        try:
            store = open_store(str(self.built.store), readonly=True, cache_size=1 << 20)
        except Exception:  # noqa: BLE001 - racing the server's journal writes: try again
            return True
        try:
            return bool(store.snaps.deleting_mask or store.snaps.in_pass_mask())
        finally:
            store.close()


async def stage_scale(cfg: Config, tmp: Path, out: dict[str, Any]) -> None:
    """(7) scale: small vs large store built through the store layer directly."""
    sc: dict[str, Any] = {"built_via": "store layer directly (csnap_bench.scale), data copies "
                                       "skipped; metadata, journal and bitmaps are real",
                          "cache_size": cfg.cache_size}
    small = scale.build(tmp / "small", cfg.small_exceptions, cfg.small_exceptions // 2)
    log(f"built {small.exceptions} exceptions in {small.build_seconds:.1f}s")
    sc["small"] = await scale_point(cfg, small, "small", with_delete=False)
    shutil.rmtree(tmp / "small", ignore_errors=True)
    log(f"building {cfg.scale_exceptions} exceptions through the store layer...")
    big = scale.build(tmp / "big", cfg.scale_exceptions, cfg.delete_exceptions)
    log(f"built {big.exceptions} exceptions in {big.build_seconds:.1f}s "
        f"({big.exceptions / big.build_seconds:.0f}/s)")
    sc["large"] = await scale_point(cfg, big, "large", with_delete=True)
    shutil.rmtree(tmp / "big", ignore_errors=True)
    s_rate = sc["small"]["lookup"]["chunks_per_s"] or 1
    sc["lookup_ratio_large_vs_small"] = round(sc["large"]["lookup"]["chunks_per_s"] / s_rate, 3)
    sc["store_layer_ratio_large_vs_small"] = round(
        sc["large"]["store_layer_lookups_per_s"] / max(1, sc["small"]["store_layer_lookups_per_s"]),
        3)
    d = sc["large"]["delete"]
    log(f"scale: lookups {sc['large']['lookup']['chunks_per_s']:.0f}/s at "
        f"{big.exceptions} vs {s_rate:.0f}/s at {small.exceptions}; RSS "
        f"{sc['large']['rss_bytes'] / MIB:.0f} MiB; delete of {d['doomed_exceptions']} took "
        f"{d['delete_seconds']}s, worst latency {d['worst_latency_ms']} ms")
    out["scale"] = sc


def stage_qemu(cfg: Config, tmp: Path, out: dict[str, Any]) -> None:
    """qemu-img bench: first-touch 4 KiB writes into a qcow2 image with an internal snapshot
    taken just before; compared with csnap first touch at 4 KiB (16 clients, 1 chunk/msg)."""
    qemu = shutil.which("qemu-img")
    if qemu is None:
        note = "qemu-img not found (scripts/install-system-deps.sh installs qemu-utils); skipped"
        log(note)
        out["qemu"] = {"skipped": note}
        return
    img = tmp / "peer.qcow2"
    n = cfg.qemu_writes
    cluster = 64 * KIB
    size = n * cluster
    try:
        subprocess.run([qemu, "create", "-q", "-f", "qcow2", str(img), str(size)], check=True)
        # fill every cluster so the snapshot owns real data, then snapshot
        subprocess.run([qemu, "bench", "-f", "qcow2", "-w", "-q", "-c", str(n), "-s",
                        str(cluster), "-d", "16", str(img)], check=True, capture_output=True)
        subprocess.run([qemu, "snapshot", "-c", "before", str(img)], check=True)
        results = {}
        for label, extra in (("no_flush", []), ("flush_each", ["--flush-interval=1",
                                                              "-d", "1"])):
            if label == "flush_each":
                subprocess.run([qemu, "snapshot", "-c", "again", str(img)], check=True)
            cmd = [qemu, "bench", "-f", "qcow2", "-w", "-q", "-c", str(n), "-s", "4096",
                   "-S", str(cluster), *(extra or ["-d", "16"]), str(img)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            el = time.perf_counter() - t0
            results[label] = {"writes": n, "seconds": round(el, 3),
                              "writes_per_s": round(n / el, 1), "command": " ".join(cmd)}
        ft = next((p for p in out["workloads"].get("first_touch_4k", [])
                   if p["clients"] == 16 and p["chunks_per_msg"] == 1), None)
        if ft is None:
            ft = next(iter(out["workloads"].get("first_touch_4k", [])), None)
        csnap_rate = ft["chunks_per_s"] if ft else 0.0
        out["qemu"] = {
            "qemu_img": subprocess.run([qemu, "--version"], capture_output=True,
                                       text=True).stdout.splitlines()[0],
            "method": "qcow2 (64 KiB clusters) filled, internal snapshot, then 4 KiB writes one "
                      "per cluster (-S 65536: every write is a first touch needing a COW); "
                      "qemu-img bench is sequential, not random",
            **results,
            "csnap_first_touch_4k_16_clients_chunks_per_s": csnap_rate,
            "ratio_csnap_vs_qemu_no_flush": round(csnap_rate / results["no_flush"]["writes_per_s"], 3),
            "ratio_csnap_vs_qemu_flush_each": round(
                csnap_rate / results["flush_each"]["writes_per_s"], 3),
        }
        log(f"qemu-img bench: {results['no_flush']['writes_per_s']:.0f} first-touch writes/s "
            f"(no flush), {results['flush_each']['writes_per_s']:.0f}/s (flush each); csnap "
            f"{csnap_rate:.0f} durable/s")
    except subprocess.CalledProcessError as exc:
        out["qemu"] = {"skipped": f"qemu-img failed: {exc}"}
        log(f"qemu-img failed: {exc}")
    finally:
        img.unlink(missing_ok=True)


# --------------------------------------------------------------------- targets and output

def _pt(out: dict[str, Any], wl: str, clients: int, k: int) -> dict[str, Any] | None:
    return next((p for p in out["workloads"].get(wl, [])
                 if p["clients"] == clients and p["chunks_per_msg"] == k), None)


def evaluate_targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of docs/performance.md, each with its measured figure and met/missed."""
    t: list[dict[str, Any]] = []

    def add(name: str, target: str, value: Any, met: bool | None, detail: str = "") -> None:
        if value is None or value == {}:
            met = None  # not measured in this run
        t.append({"target": name, "wanted": target, "value": value, "met": met,
                  "detail": detail})

    b = out["baselines"]
    p = _pt(out, "first_touch_4k", 16, 1)
    add("first_touch_4k_16_clients", ">= 12000 chunks/s", p and p["chunks_per_s"],
        p is not None and p["chunks_per_s"] >= 12000)
    best64 = max((q["mb_per_s"] or 0 for q in out["workloads"].get("first_touch_64k", [])),
                 default=0)
    raw = b.get("copy_mb_per_s_64k") or 0
    add("first_touch_64k_vs_copy", ">= 70% of raw copy", round(best64 / raw, 3) if raw else None,
        bool(raw) and best64 / raw >= 0.7, f"best {best64} MB/s vs raw copy {raw} MB/s")
    q1 = _pt(out, "rewrite_unique_raw", 16, 1)
    add("metadata_queries_1_chunk_16_clients", ">= 75000 msgs/s", q1 and q1["ops_per_s"],
        q1 is not None and q1["ops_per_s"] >= 75000)
    q64 = _pt(out, "rewrite_unique_raw", 16, 64)
    add("metadata_queries_64_chunks_16_clients", ">= 500000 chunks/s",
        q64 and q64["chunks_per_s"], q64 is not None and q64["chunks_per_s"] >= 500000)
    g = out.get("group_commit", {})
    add("acked_ops_per_fsync_16_clients", ">= 16", g.get("ops_per_fsync"),
        g.get("ops_per_fsync", 0) >= 16,
        f"{g.get('ops_per_commit')} ops per commit; a commit with copy-outs does 2 fsyncs")
    lib = out["workloads"].get("rewrite_cached_library", [])
    worst = min((r["ratio_to_raw"] for r in lib), default=None)
    add("cached_rewrites_vs_raw_write", ">= 90%", worst, worst is not None and worst >= 0.9,
        "; ".join(f"{r['write_size'] // KIB} KiB: {r['mb_per_s']} vs {r['raw_pwrite_mb_per_s']}"
                  " MB/s" for r in lib))
    sc = out["workloads"].get("snapshot_count", [])
    costs = {d["live_snapshots"]: d["cost_vs_1"] for d in sc}
    worst_cost = max((v for k, v in costs.items() if k > 1), default=None)
    add("first_touch_cost_many_snapshots", "<= 1.2x cost at 1", costs,
        worst_cost is not None and worst_cost <= 1.2 and max(costs) >= 1024,
        "" if max(costs, default=0) >= 1024 else "only measured up to "
        f"{max(costs, default=0)} snapshots in this mode")
    s = out.get("scale", {})
    if s:
        full = s["large"]["exceptions"] >= 10_000_000
        ratio = s["lookup_ratio_large_vs_small"]
        add("lookup_rate_large_vs_10k", ">= 50% at 10M exceptions", ratio,
            ratio >= 0.5 if full else None,
            f"measured at {s['large']['exceptions']} exceptions" + ("" if full else
                                                                     " (not 10M: indicative)"))
        rss, cache = s["large"]["rss_bytes"], s["large"]["cache_size_bytes"]
        add("rss_vs_cache", "<= cache + 100 MB", f"{rss / MIB:.0f} MiB (cache {cache / MIB:.0f}"
            " MiB)", rss <= cache + 100 * MIB if full else None,
            "" if full else "not at 10M: indicative")
        d = s["large"]["delete"]
        add("worst_latency_during_delete", "<= 100 ms", d["worst_latency_ms"],
            d["finished"] and d["worst_latency_ms"] is not None and d["worst_latency_ms"] <= 100
            if d["doomed_exceptions"] >= 1_000_000 else None,
            f"deleting {d['doomed_exceptions']} exceptions took {d['delete_seconds']} s")
    return t


def print_table(out: dict[str, Any]) -> None:
    """The human-readable results."""
    hdr = (f"{'workload':<24} {'cli':>4} {'k':>3} {'ops/s':>10} {'chunks/s':>10} {'MB/s':>8} "
           f"{'p50 ms':>8} {'p99 ms':>8} {'srv cpu':>7} {'cli cpu':>7}")
    print(hdr)
    print("-" * len(hdr))
    for name, pts in out["workloads"].items():
        for p in pts:
            if "clients" not in p:
                continue
            mb = f"{p['mb_per_s']:.1f}" if p.get("mb_per_s") else "-"
            label = name if "live_snapshots" not in p else f"first_touch_{p['live_snapshots']}snaps"
            print(f"{label:<24} {p['clients']:>4} {p['chunks_per_msg']:>3} {p['ops_per_s']:>10.0f} "
                  f"{p['chunks_per_s']:>10.0f} {mb:>8} {p['p50_ms']:>8.2f} {p['p99_ms']:>8.2f} "
                  f"{p['server_cpu']:>7.2f} {p['client_cpu']:>7.2f}")
    for r in out["workloads"].get("rewrite_cached_library", []):
        print(f"library cached rewrite {r['write_size'] // KIB} KiB: {r['mb_per_s']} MB/s, "
              f"p50 {r['p50_ms']} ms (raw pwrite {r['raw_pwrite_mb_per_s']} MB/s, "
              f"ratio {r['ratio_to_raw']})")
    print(f"baselines: {json.dumps(out['baselines'])}")
    mach = out["machine"]
    print(f"machine: {mach['nproc']} x {mach['cpu_model']}; load average at start "
          f"{mach['loadavg_at_start'][0]:.2f}, at end {mach['loadavg_at_end'][0]:.2f} "
          "(other processes compete with the benchmark when these exceed ~0.5)")
    if out.get("group_commit"):
        g = out["group_commit"]
        print(f"group commit (16 clients, first touch): {g['ops_per_commit']} acked ops per "
              f"commit, {g['ops_per_fsync']} per fsync")
    s = out.get("scale")
    if s:
        for key in ("small", "large"):
            x = s[key]
            print(f"scale {key}: {x['exceptions']} exceptions, server lookups "
                  f"{x['lookup']['chunks_per_s']:.0f}/s (p99 {x['lookup']['p99_ms']} ms), store "
                  f"layer {x['store_layer_lookups_per_s']}/s, RSS {x['rss_bytes'] / MIB:.0f} MiB")
        d = s["large"]["delete"]
        print(f"delete {d['doomed_exceptions']} exceptions: {d['delete_seconds']} s, worst "
              f"latency of other clients {d['worst_latency_ms']} ms (p99 {d['p99_latency_ms']})")
    q = out.get("qemu", {})
    if "skipped" in q:
        print(f"qemu: {q['skipped']}")
    elif q:
        print(f"qemu-img first-touch 4K writes/s: {q['no_flush']['writes_per_s']} (no flush), "
              f"{q['flush_each']['writes_per_s']} (flush each); csnap/qemu = "
              f"{q['ratio_csnap_vs_qemu_no_flush']} / {q['ratio_csnap_vs_qemu_flush_each']}")
    n = out.get("nbd", {})
    if "skipped" in n:
        print(f"nbd: {n['skipped']}")
    elif n:
        for name, r in n["results"].items():
            print(f"nbdcopy {name}: csnap-nbd {r['csnap_MiBps']} MiB/s vs qemu-nbd raw "
                  f"{r['raw_MiBps']} MiB/s, ratio {r['ratio']}")
    print()
    for t in out["targets"]:
        state = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"[{state:>6}] {t['target']}: {t['value']} (want {t['wanted']}) {t['detail']}")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="csnap-bench", description=__doc__.split("\n\n")[0])
    add_version_option(p)
    p.add_argument("--quick", action="store_true", help="smoke run, under 30 seconds")
    p.add_argument("--json", default="bench-results.json", help="results file "
                   "(default bench-results.json)")
    p.add_argument("--scale-exceptions", type=int, default=0, metavar="N",
                   help="exceptions in the large store (default 600000; 20000 with --quick); "
                        "10000000 for the full-size run (several minutes to build)")
    p.add_argument("--delete-exceptions", type=int, default=0, metavar="N",
                   help="exceptions owned by the snapshot deleted under load (default "
                        "min(1000000, scale/2))")
    p.add_argument("--seconds", type=float, default=0.0, help="seconds per measured point")
    p.add_argument("--cache-size", default="64M", help="csnapd --cache-size for the scale "
                   "part (default 64M)")
    p.add_argument("--dir", default=None, help="directory for the temporary files (default: "
                   "a new directory under $TMPDIR)")
    p.add_argument("--only", action="append", choices=["4k", "64k", "snapcount", "scale",
                                                       "qemu", "nbd"],
                   help="run only these stages (repeatable)")
    p.add_argument("--skip", action="append", choices=["library"], help="skip a part")
    return p


def stage_nbd(cfg: Config, tmp: Path, out: dict[str, Any]) -> None:
    """nbdcopy through csnap-nbd, as a ratio to nbdcopy against qemu-nbd on a raw file."""
    missing = [t for t in ("nbdcopy", "qemu-nbd") if shutil.which(t) is None]
    if missing:
        out["nbd"] = {"skipped": f"{', '.join(missing)} not installed "
                                 "(scripts/install-system-deps.sh installs them)"}
        return
    size = (16 << 20) if cfg.mode == "quick" else (128 << 20)
    work = tmp / "nbd"
    work.mkdir()
    try:
        rows = nbd_bench.bench(work, size, 64 << 10)
    except Exception as exc:  # noqa: BLE001 - a failed stage is reported, never fatal
        logs = {p.name: p.read_text()[-400:] for p in work.glob("*.log")}
        out["nbd"] = {"skipped": f"nbd benchmark failed: {exc}", "logs": logs}
        print(f"nbd stage failed: {exc}", file=sys.stderr)
        return
    out["nbd"] = {"bytes": size, "chunk_size": 64 << 10, "results": rows}
    print("nbdcopy through csnap-nbd vs qemu-nbd raw (ratio):",
          ", ".join(f"{k} {v['ratio']}" for k, v in rows.items()))


async def run(cfg: Config, tmp: Path, only: set[str]) -> dict[str, Any]:
    """Every stage; returns the JSON document."""
    out: dict[str, Any] = {"version": 1, "mode": cfg.mode, "machine": machine_info(tmp),
                           "config": {k: (sorted(v) if isinstance(v, set) else v)
                                      for k, v in cfg.__dict__.items()},
                           "client": "one Python process (uvloop), closed loop, one request "
                                     "in flight per connection",
                           "baselines": {}, "workloads": {}, "group_commit": {}, "scale": {},
                           "qemu": {}, "nbd": {}}
    t0 = time.perf_counter()
    if not only or "4k" in only:
        await stage_4k(cfg, tmp, out)
    if not only or "64k" in only:
        await stage_64k(cfg, tmp, out)
    if not only or "snapcount" in only:
        await stage_snapcount(cfg, tmp, out)
    if not only or "qemu" in only:
        stage_qemu(cfg, tmp, out)
    if not only or "nbd" in only:
        stage_nbd(cfg, tmp, out)
    if not only or "scale" in only:
        await stage_scale(cfg, tmp, out)
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    out["machine"]["loadavg_at_end"] = list(os.getloadavg())
    out["targets"] = evaluate_targets(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``csnap-bench``."""
    args = build_parser().parse_args(argv)
    cfg = make_config(args)
    base = Path(args.dir) if args.dir else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="csnap-bench-", dir=base))
    try:
        try:
            import uvloop
            out = uvloop.run(run(cfg, tmp, set(args.only or [])))
        except ImportError:
            out = asyncio.run(run(cfg, tmp, set(args.only or [])))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(out)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nresults written to {args.json} ({out['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
