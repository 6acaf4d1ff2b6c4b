"""The workloads: what one benchmark client connection sends, and one measured point.

Every workload is an *op factory*: given the open connections and the chunks per message it
returns ``op(worker, seq) -> chunks done``, one closed-loop operation of one connection
(harness.run_closed_loop drives it). The same factories drive csnapd and the ideal server,
so both see exactly the same requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import csnap_client
from csnap_client.protocol import messages as m

from .harness import RawConn, Result, ServerProc, log, run_closed_loop

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30

OpFactory = Callable[[list[RawConn], int], Any]


class Served(Protocol):
    """Anything the driver can load: csnapd (ServerProc) or the ideal server (IdealProc)."""

    port: int

    @property
    def pid(self) -> int: ...

    async def connect(self, volume: str | int = "origin") -> RawConn: ...


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


async def connect_many(srv: Served, n: int, volume: str | int = "origin") -> list[RawConn]:
    """``n`` identified raw connections."""
    return list(await asyncio.gather(*(srv.connect(volume) for _ in range(n))))


async def close_all(conns: list[RawConn]) -> None:
    """DETACH, then close, as a well-behaved client does when it is done (docs/protocol.md):
    the server forgets the connection's grants, so later snapshot creates do not copy out
    what a finished benchmark client was approved to write."""
    async def detach(c: RawConn) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await asyncio.wait_for(c.call(m.detach(0)), 60)
    await asyncio.gather(*(detach(c) for c in conns if c.closed is None))
    for c in conns:
        c.close()


def show(res: Result) -> None:
    """One progress line for a measured point."""
    d = res.as_dict()
    log(f"  {res.name:<28} c={res.clients:<3} k={res.chunks_per_msg:<3} "
        f"{d['ops_per_s']:>10.0f} ops/s {d['chunks_per_s']:>10.0f} chunks/s "
        f"p50 {d['p50_ms']:.2f} ms p99 {d['p99_ms']:.2f} ms "
        f"srv {d['server_cpu']:.2f} cli {d['client_cpu']:.2f}")


async def point(srv: Served, seconds: float, name: str, volume: str | int, clients: int,
                k: int, op_factory: OpFactory, chunk_bytes: int = 0) -> Result:
    """One measured point: ``clients`` connections to ``volume``, ``k`` chunks per message."""
    conns = await connect_many(srv, clients, volume)
    try:
        res = await run_closed_loop(name, clients, op_factory(conns, k), seconds, k, srv.pid,
                                    chunk_bytes=chunk_bytes)
    finally:
        await close_all(conns)
    show(res)
    return res


def _expect(reply: dict[str, Any], op: str, what: str) -> None:
    if reply["op"] != op:
        raise RuntimeError(f"{what} failed: {reply}")


def first_touch_op(fresh: Fresh) -> OpFactory:
    """QUERY_WRITE of never-written origin chunks (each needs a copy-out)."""
    def factory(conns: list[RawConn], k: int) -> Any:
        async def op(w: int, seq: int) -> int:
            _expect(await conns[w].call(m.query_write(0, [[fresh.take(k), k]])), "WRITE_OK",
                    "first-touch write")
            return k
        return op
    return factory


def _picker(region: tuple[int, int], k: int, seed: int) -> Callable[[], int]:
    lo, hi = region
    rng = random.Random(seed)
    slots = max(1, (hi - lo - k) // k)
    return lambda: lo + rng.randrange(slots) * k


def rewrite_op(region: tuple[int, int]) -> OpFactory:
    """QUERY_WRITE of origin chunks already unique (metadata lookup only)."""
    def factory(conns: list[RawConn], k: int) -> Any:
        pick = _picker(region, k, k)

        async def op(w: int, seq: int) -> int:
            _expect(await conns[w].call(m.query_write(0, [[pick(), k]])), "WRITE_OK",
                    "rewrite")
            return k
        return op
    return factory


def exception_read_op(region: tuple[int, int]) -> OpFactory:
    """QUERY_SNAPSHOT_READ of chunks the snapshot has in the store: the reply must map them
    all to the store (a read that takes no lock)."""
    def factory(conns: list[RawConn], k: int) -> Any:
        pick = _picker(region, k, k + 2)

        async def op(w: int, seq: int) -> int:
            reply = await conns[w].call(m.query_snapshot_read(0, [[pick(), k]]))
            _expect(reply, "SNAPSHOT_READ_OK", "exception read")
            if reply["origin"] or not reply["store"]:
                raise RuntimeError(f"exception read did not hit the store: {reply}")
            return k
        return op
    return factory


def origin_read_op(region: tuple[int, int]) -> OpFactory:
    """QUERY_SNAPSHOT_READ of chunks the snapshot shares with the origin (a read lock), then
    FINISH_SNAPSHOT_READ to release it: one op is both round trips."""
    def factory(conns: list[RawConn], k: int) -> Any:
        pick = _picker(region, k, k + 3)

        async def op(w: int, seq: int) -> int:
            c = conns[w]
            reply = await c.call(m.query_snapshot_read(0, [[pick(), k]]))
            _expect(reply, "SNAPSHOT_READ_OK", "origin read")
            if not reply["origin"] or reply["store"]:
                raise RuntimeError(f"origin read did not take a read lock: {reply}")
            _expect(await c.call(m.finish_snapshot_read(0, reply["id"])), "FINISH_OK",
                    "finish")
            return k
        return op
    return factory


def snapshot_read_op(exc_region: tuple[int, int], origin_region: tuple[int, int]
                     ) -> OpFactory:
    """Alternately: a read of chunks the snapshot has in the store (exceptions), and a read
    of chunks it shares with the origin (read lock, then FINISH_SNAPSHOT_READ)."""
    def factory(conns: list[RawConn], k: int) -> Any:
        picks = (_picker(exc_region, k, k + 1), _picker(origin_region, k, k + 1))

        async def op(w: int, seq: int) -> int:
            c = conns[w]
            reply = await c.call(m.query_snapshot_read(0, [[picks[seq % 2](), k]]))
            _expect(reply, "SNAPSHOT_READ_OK", "snapshot read")
            if reply["origin"]:
                _expect(await c.call(m.finish_snapshot_read(0, reply["id"])), "FINISH_OK",
                        "finish")
            return k
        return op
    return factory


def snapshot_write_op(fresh: Fresh) -> OpFactory:
    """QUERY_WRITE on a snapshot connection for chunks it still shares (unsharing)."""
    def factory(conns: list[RawConn], k: int) -> Any:
        async def op(w: int, seq: int) -> int:
            _expect(await conns[w].call(m.query_write(0, [[fresh.take(k), k]])),
                    "SNAPSHOT_WRITE_OK", "snapshot write")
            return k
        return op
    return factory


def ping_op() -> OpFactory:
    """PING/PONG round trips."""
    def factory(conns: list[RawConn], k: int) -> Any:
        async def op(w: int, seq: int) -> int:
            await conns[w].call(m.ping(0))
            return 0
        return op
    return factory


async def status(srv: ServerProc) -> dict[str, Any]:
    """csnapd's STATUS over the control socket (keep it off timed paths)."""
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


async def prefill(srv: ServerProc, fresh: Fresh, chunks: int) -> tuple[int, int]:
    """Copy out at least ``chunks`` fresh origin chunks (4 connections, 64 chunks per
    message) so that they are unique; returns the region written so far."""
    if fresh.next < chunks:
        ops = -(-(chunks - fresh.next) // 64)
        conns = await connect_many(srv, 4)
        try:
            await run_closed_loop("prefill", 4, first_touch_op(fresh)(conns, 64), 3600, 64,
                                  None, max_ops=ops)
        finally:
            await close_all(conns)
    return (0, fresh.next)


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
    return {"write_size": size, "ops_per_s": round(n / el, 1),
            "mb_per_s": round(n * size / el / 1e6, 2),
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
