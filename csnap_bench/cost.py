"""Per-query cost of csnapd against the ideal server, in the same run.

Four workloads, 4 KiB chunks, one live snapshot, one chunk per query, each at 16
connections and at 1 connection (one request in flight per connection, closed loop):

1. ``rewrite_unique``: origin QUERY_WRITE of chunks already copied out for the snapshot
   (metadata lookup, nothing to commit);
2. ``exception_read``: snapshot QUERY_SNAPSHOT_READ of chunks the snapshot has in the store
   (SNAPSHOT_READ_OK from the store map, no lock);
3. ``origin_read``: snapshot QUERY_SNAPSHOT_READ of chunks shared with the origin (a read
   lock) and its FINISH_SNAPSHOT_READ; one query = both round trips;
4. ``first_touch``: origin QUERY_WRITE of never-written chunks (copy-out + durable commit).

For every point the same client drives csnapd and then the ideal server (csnap_bench.ideal),
``cost_reps`` times, alternating; the report gives the medians and their ratio.

* **server CPU per query** = utime + stime of the server process (/proc/PID/stat, all
  threads) over the point / queries answered;
* **store bytes per copy-out** (first touch) = csnapd's ``write_bytes`` (/proc/PID/io: the
  bytes its writes dirtied, i.e. what its store writes send to the block layer, counted
  again each time a page is written after a flush; the store is the only file csnapd
  writes) / copy-outs (STATUS ``store.copyouts``). The store file's allocation growth
  (``st_blocks``) is reported beside it: it counts new blocks only, so it misses journal and
  metadata blocks written in place, and is a lower bound. ``wchar`` is not used: it also
  counts the reply bytes written to sockets;
* **acknowledged operations per fsync** = queries answered / ``store.flushes`` (csnapd
  counts one per fdatasync of the store).
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from .config import Config
from .harness import ServerProc, allocated_bytes, log, proc_cpu_seconds, proc_io, run_closed_loop
from .ideal import IdealProc
from .workloads import (
    GIB,
    KIB,
    Fresh,
    OpFactory,
    Served,
    close_all,
    connect_many,
    create_snapshots,
    exception_read_op,
    first_touch_op,
    origin_read_op,
    prefill,
    rewrite_op,
    status,
)

CONNECTIONS = (16, 1)
WORKLOADS = ("rewrite_unique", "exception_read", "origin_read", "first_touch")
METADATA_ONLY = WORKLOADS[:3]
#: CPU-per-query targets: csnapd / ideal server.
TARGETS = {("metadata", 16): 2.0, ("metadata", 1): 3.0, ("first_touch", 16): 6.0,
           ("first_touch", 1): 6.0}
OPS_PER_FSYNC_TARGET = 16
BYTES_PER_COPYOUT_TARGET = 8 * KIB


async def measure(server: Served, name: str, volume: str, conns: int, factory: OpFactory,
                  seconds: float, store: Path | None = None) -> dict[str, Any]:
    """One point: connect, then count the server's CPU and I/O over the closed loop only."""
    cs = await connect_many(server, conns, volume)
    try:
        pid = server.pid
        before = await status(server) if isinstance(server, ServerProc) else None
        cpu0, io0 = proc_cpu_seconds(pid), proc_io(pid)
        alloc0 = allocated_bytes(store) if store else 0
        res = await run_closed_loop(name, conns, factory(cs, 1), seconds, 1, pid)
        cpu1, io1 = proc_cpu_seconds(pid), proc_io(pid)
        alloc1 = allocated_bytes(store) if store else 0
        after = await status(server) if isinstance(server, ServerProc) else None
    finally:
        await close_all(cs)
    d = res.as_dict()
    q = max(1, res.ops)
    row: dict[str, Any] = {
        "queries": res.ops, "seconds": d["seconds"], "queries_per_s": d["ops_per_s"],
        "p50_ms": d["p50_ms"], "p99_ms": d["p99_ms"], "server_cpu_s": round(cpu1 - cpu0, 3),
        "server_cpu_us_per_query": round((cpu1 - cpu0) / q * 1e6, 2),
        "server_cores": d["server_cpu"], "client_cores": d["client_cpu"],
        "write_bytes": io1.get("write_bytes", 0) - io0.get("write_bytes", 0),
    }
    if before is not None and after is not None:
        b, a = before["store"], after["store"]
        delta = {k: a.get(k, 0) - b.get(k, 0)
                 for k in ("copyouts", "commits", "flushes", "ops_committed", "checkpoints")}
        row.update(delta)
        row["store_allocated_bytes"] = alloc1 - alloc0
        if delta["copyouts"]:
            row["write_bytes_per_copyout"] = round(row["write_bytes"] / delta["copyouts"])
            row["allocated_bytes_per_copyout"] = round((alloc1 - alloc0) / delta["copyouts"])
        if delta["flushes"]:
            row["acked_ops_per_fsync"] = round(res.ops / delta["flushes"], 2)
        if delta["commits"]:
            row["ops_per_commit"] = round(delta["ops_committed"] / delta["commits"], 2)
    return row


def _summary(name: str, conns: int, csnapd: list[dict[str, Any]],
             ideal: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the repetitions, their ratio, and the durable-write figures."""
    med = statistics.median
    c_us = med(r["server_cpu_us_per_query"] for r in csnapd)
    i_us = med(r["server_cpu_us_per_query"] for r in ideal)
    out: dict[str, Any] = {
        "workload": name, "connections": conns,
        "csnapd_cpu_us_per_query": round(c_us, 2), "ideal_cpu_us_per_query": round(i_us, 2),
        "cpu_ratio": round(c_us / i_us, 2) if i_us else None,
        "csnapd_queries_per_s": round(med(r["queries_per_s"] for r in csnapd), 1),
        "ideal_queries_per_s": round(med(r["queries_per_s"] for r in ideal), 1),
        "csnapd_p99_ms": round(med(r["p99_ms"] for r in csnapd), 3),
        "ideal_p99_ms": round(med(r["p99_ms"] for r in ideal), 3),
        "ideal_write_bytes": sum(r["write_bytes"] for r in ideal),
        "messages_per_query": 2 if name == "origin_read" else 1,
        "reps": {"csnapd": csnapd, "ideal": ideal},
    }
    queries = sum(r["queries"] for r in csnapd) or 1
    out["csnapd_commits_per_query"] = round(sum(r.get("commits", 0) for r in csnapd) / queries, 3)
    out["csnapd_fsyncs_per_query"] = round(sum(r.get("flushes", 0) for r in csnapd) / queries, 3)
    kind = "first_touch" if name == "first_touch" else "metadata"
    out["cpu_ratio_target"] = TARGETS[(kind, conns)]
    copyouts = sum(r.get("copyouts", 0) for r in csnapd)
    if name == "first_touch" and copyouts:
        out["copyouts"] = copyouts
        out["write_bytes_per_copyout"] = round(sum(r["write_bytes"] for r in csnapd) / copyouts)
        out["allocated_bytes_per_copyout"] = round(
            sum(r["store_allocated_bytes"] for r in csnapd) / copyouts)
        flushes = sum(r.get("flushes", 0) for r in csnapd)
        commits = sum(r.get("commits", 0) for r in csnapd)
        acked = sum(r["queries"] for r in csnapd)
        out["acked_ops_per_fsync"] = round(acked / flushes, 2) if flushes else None
        out["ops_per_commit"] = round(acked / commits, 2) if commits else None
        out["ideal_write_bytes_per_copyout"] = 0
    else:
        out["copyouts"] = copyouts  # must be 0: these workloads copy nothing
    return out


async def stage_cost(cfg: Config, tmp: Path, out: dict[str, Any]) -> None:
    """csnapd and the ideal server, same client, same run (module docstring)."""
    cs = 4 * KIB
    srv = ServerProc(tmp / "cost", cs, 16 * GIB, 16 * GIB)
    srv.start()
    chunks = srv.origin_bytes // cs
    ideal = IdealProc(tmp / "ideal", cs, chunks, store_below=chunks // 2)
    ideal.start()
    rows: list[dict[str, Any]] = []
    try:
        await create_snapshots(srv, ["s1"])
        fresh = Fresh(0, chunks // 2)
        log(f"cost: copying out {cfg.cost_unique_chunks} chunks for the metadata workloads")
        unique = await prefill(srv, fresh, cfg.cost_unique_chunks)
        shared = (chunks // 2, chunks // 2 + 65536)
        ideal_fresh = Fresh(fresh.next, chunks // 2)
        for name in WORKLOADS:
            for conns in CONNECTIONS:
                pair: dict[str, list[dict[str, Any]]] = {"csnapd": [], "ideal": []}
                for rep in range(cfg.cost_reps):
                    order = (("csnapd", srv), ("ideal", ideal))
                    for who, server in order if rep % 2 == 0 else order[::-1]:
                        factory = {"rewrite_unique": rewrite_op(unique),
                                   "exception_read": exception_read_op(unique),
                                   "origin_read": origin_read_op(shared),
                                   "first_touch": first_touch_op(
                                       fresh if who == "csnapd" else ideal_fresh)}[name]
                        volume = "origin" if name in ("rewrite_unique", "first_touch") else "s1"
                        pair[who].append(await measure(
                            server, name, volume, conns, factory, cfg.cost_seconds,
                            srv.store if who == "csnapd" else None))
                row = _summary(name, conns, pair["csnapd"], pair["ideal"])
                rows.append(row)
                extra = ""
                if name == "first_touch":
                    extra = (f", {row.get('acked_ops_per_fsync')} ops/fsync, "
                             f"{row.get('write_bytes_per_copyout')} B/copy-out")
                log(f"  {name:<15} c={conns:<3} csnapd {row['csnapd_cpu_us_per_query']:>8.1f}"
                    f" us/q ({row['csnapd_queries_per_s']:.0f} q/s)  ideal "
                    f"{row['ideal_cpu_us_per_query']:>7.1f} us/q "
                    f"({row['ideal_queries_per_s']:.0f} q/s)  ratio {row['cpu_ratio']}{extra}")
    finally:
        ideal.stop()
        srv.stop()
        shutil.rmtree(srv.directory, ignore_errors=True)
        shutil.rmtree(ideal.directory, ignore_errors=True)
    out["cost"] = {
        "chunk_size": cs, "live_snapshots": 1, "chunks_per_query": 1,
        "unique_region_chunks": unique[1], "reps": cfg.cost_reps,
        "seconds_per_point": cfg.cost_seconds,
        "cpu_source": "/proc/PID/stat utime+stime of the server process over the point",
        "bytes_source": "/proc/PID/io write_bytes of csnapd over the point (what reaches the "
                        "block layer); allocated = growth of the store file's st_blocks "
                        "(new blocks only: a lower bound)",
        "fsync_source": "csnapd STATUS store.flushes (one per fdatasync of the store)",
        "ideal_server": "csnap_bench.ideal: uvloop + msgpack, same framing and client, an "
                        "immediate valid reply per request, one write per read, no metadata",
        "rows": rows,
    }
