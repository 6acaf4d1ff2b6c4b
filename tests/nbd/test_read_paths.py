"""The gateway's fast data paths in csnap_client.Volume, against a real csnapd.

csnap-nbd answers reads through ``Volume.read_cached`` (page cache only, no message),
``Volume.read_into`` (snapshot reads sharing one locked query, store addresses cached in
the read map, QUERY_MAP read-ahead) and writes through ``Volume.write_cached``. These
tests pin what those paths must never get wrong: a cached store address that a write has
moved, answers to reads in flight across a write, reads that share a query.
"""

from __future__ import annotations

import asyncio

import csnap_client
from csnap_client.volume import intersect_ranges, merge_ranges

from .conftest import snapshot


def _connect(srv, volume: str, **kw):
    return csnap_client.connect("127.0.0.1", srv.port, volume=volume, origin=srv.origin,
                                store=srv.store, **kw)


def test_range_helpers():
    assert merge_ranges([[5, 2], [0, 3], [2, 2], [9, 0], [7, 1]]) == [[0, 4], [5, 3]]
    assert merge_ranges([]) == []
    assert intersect_ranges([[0, 10]], [[2, 2], [8, 5]]) == [[2, 2], [8, 2]]
    assert intersect_ranges([[0, 2]], [[2, 2]]) == []


def test_cached_reads_and_writes_match_the_slow_paths(server):
    cs = server.chunk_size

    async def run() -> None:
        origin = await _connect(server, "origin")
        try:
            await origin.write(0, b"x" * (8 * cs))  # first write: asks the server
            assert origin.write_cached(cs + 5, b"yy")  # chunk known unique now: no message
            assert not origin.write_cached(100 * cs, b"z")  # never approved
            buf = bytearray(3 * cs)
            assert origin.read_cached(0, buf)
            assert bytes(buf) == await origin.read(0, 3 * cs)
            assert bytes(buf[cs + 5:cs + 7]) == b"yy"
            assert not origin.read_cached(origin.size - 1, bytearray(2))  # past the end
        finally:
            await origin.close()

    asyncio.run(run())


def test_snapshot_read_map_follows_writes_through_the_volume(server):
    """Store addresses learned by reads (shared by two snapshots) must give way to the
    new ones a write gets, even when the unique map evicts those (cache_runs=1)."""
    cs = server.chunk_size

    async def run() -> None:
        origin = await _connect(server, "origin")
        await origin.write(0, b"a" * (8 * cs))
        await origin.flush()
        await asyncio.to_thread(snapshot, server, "s1")
        await asyncio.to_thread(snapshot, server, "s2")
        await origin.write(0, b"b" * (8 * cs))  # copy-outs shared by s1 and s2
        s2 = await _connect(server, "s2", cache_runs=1)
        try:
            reads = await asyncio.gather(*(s2.read(c * cs, cs) for c in range(16)))
            assert reads == [b"a" * cs] * 8 + [b"\0" * cs] * 8
            assert len(s2.read_map), "reads should have cached store addresses"
            # the read map answers the next read without a message
            assert s2.read_cached(0, bytearray(cs))
            for c in (0, 2, 4):  # unshare three chunks from s1: non-adjacent runs
                await s2.write(c * cs, b"w" * 10)
            assert len(s2.store_map) <= 1  # evicted: the read map must not answer instead
            for c in range(8):
                want = b"w" * 10 + b"a" * (cs - 10) if c in (0, 2, 4) else b"a" * cs
                assert await s2.read(c * cs, cs) == want, c
                buf = bytearray(cs)
                if s2.read_cached(c * cs, buf):
                    assert bytes(buf) == want, c
            s1 = await _connect(server, "s1")
            try:
                assert await s1.read(0, 8 * cs) == b"a" * (8 * cs)
            finally:
                await s1.close()
        finally:
            await s2.close()
            await origin.close()

    asyncio.run(run())


def test_concurrent_snapshot_reads_share_locked_queries(server):
    """Many reads of chunks shared with the origin, started together, are answered right
    (one shared query round each time), including while the origin is rewritten."""
    cs = server.chunk_size

    async def run() -> None:
        origin = await _connect(server, "origin")
        for c in range(32):
            await origin.write(c * cs, bytes([c + 1]) * cs)
        await origin.flush()
        await asyncio.to_thread(snapshot, server, "s")
        snap = await _connect(server, "s")
        try:
            writes = [origin.write(c * cs, b"\xff" * cs) for c in range(0, 32, 3)]
            reads = [snap.read(c * cs + 7, cs) for c in range(31)]
            results = await asyncio.gather(*reads, *writes)
            for c in range(31):
                assert results[c] == bytes([c + 1]) * (cs - 7) + bytes([c + 2]) * 7, c
            assert await snap.read(0, 32 * cs) == b"".join(bytes([c + 1]) * cs
                                                           for c in range(32))
        finally:
            await snap.close()
            await origin.close()

    asyncio.run(run())
