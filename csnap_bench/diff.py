"""Diff benchmarks (docs/performance.md): the change query against the exception count, and
csnap-diff's data throughput as a ratio to raw sequential reads of the same devices.

    python -m csnap_bench.diff query --exceptions 10000,100000,1000000
    python -m csnap_bench.diff throughput --size 1G

``query`` builds stores through the store layer (csnap_bench/scale.py: real metadata, no
data copies) whose snapshots ``keep`` and ``doomed`` each own half the exceptions, so the
two differ in every chunk that has an exception; it times QUERY_CHANGES paged through a
real csnapd (client side, all pages) and the same scan in-process.

``throughput`` writes a random origin, takes snapshot ``a``, overwrites half the chunks
(copy-outs), takes ``b``, overwrites a quarter more (so ``b`` is partly in the store and
partly still on the origin), then with cold caches (posix_fadvise DONTNEED after fsync)
times ``csnap-diff --from a --to b`` and a full ``csnap-diff --to b`` into /dev/null, and
raw sequential reads of the same devices, the same number of bytes, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import csnap_client
from csnap_client.units import parse_size
from csnap_diff.source import list_changes
from csnapd.store.diff import changed_chunks
from csnapd.store.paths import open_store

from .harness import BIN, ServerProc
from .scale import build


def _cold(*paths: Path) -> None:
    """Drop the files' pages from the page cache (written data is synced first)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def query_bench(exceptions: int, directory: Path) -> dict[str, Any]:
    """One store of ``exceptions`` exceptions: time the full change list keep -> doomed."""
    built = build(directory, exceptions, exceptions // 2)
    store = open_store(str(built.store), str(built.origin), readonly=True)
    try:
        slots = {e.name: e.slot for e in store.snaps.visible()}
        t0 = time.perf_counter()
        pos, chunks = 0, 0
        end = store.sb.origin_chunks
        while pos is not None:
            scan = changed_chunks(store, slots["doomed"], slots["keep"], pos, end, 65536)
            chunks += scan.chunks
            pos = scan.next
        inproc = time.perf_counter() - t0
    finally:
        store.close()
    srv = ServerProc(directory, built.chunk_size, 0, 0)
    srv.store, srv.origin = built.store, built.origin
    srv.start()
    try:
        async def remote() -> tuple[float, int, int]:
            vol = await csnap_client.connect("127.0.0.1", srv.port, "doomed",
                                             origin=str(built.origin), store=str(built.store),
                                             read_only=True)
            try:
                t = time.perf_counter()
                ranges = await list_changes(vol, "keep")
                return time.perf_counter() - t, sum(n for _, n in ranges), len(ranges)
            finally:
                await vol.close()
        seconds, remote_chunks, runs = asyncio.run(remote())
    finally:
        srv.stop()
    assert remote_chunks == chunks == exceptions, (remote_chunks, chunks, exceptions)
    return {"exceptions": exceptions, "changed_chunks": chunks, "runs": runs,
            "build_s": round(built.build_seconds, 1), "query_s": round(seconds, 3),
            "inprocess_s": round(inproc, 3),
            "chunks_per_s": round(chunks / seconds)}


def _raw_read(paths: list[tuple[Path, int]], block: int = 4 << 20) -> float:
    """Seconds to read ``bytes`` from the start of each path sequentially."""
    t0 = time.perf_counter()
    for path, nbytes in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            done = 0
            while done < nbytes:
                got = os.pread(fd, min(block, nbytes - done), done)
                if not got:
                    break
                done += len(got)
        finally:
            os.close(fd)
    return time.perf_counter() - t0


def throughput_bench(size: int, chunk_size: int, directory: Path) -> dict[str, Any]:
    """Diff data throughput vs raw sequential reads of the same devices, same run."""
    chunks = size // chunk_size
    srv = ServerProc(directory, chunk_size, size, size + size // 2 + (64 << 20))
    srv.start()
    rng = random.Random(5)
    env = dict(os.environ, CSNAP_SERVER=f"127.0.0.1:{srv.port}")

    async def write(picks: list[int]) -> None:
        async with await csnap_client.connect("127.0.0.1", srv.port, "origin",
                                              origin=str(srv.origin)) as vol:
            block = os.urandom(chunk_size * 64)
            runs = sorted(picks)
            for c in runs:
                off = (c % 64) * chunk_size
                await vol.write(c * chunk_size, block[off:off + chunk_size])

    async def fill() -> None:
        async with await csnap_client.connect("127.0.0.1", srv.port, "origin",
                                              origin=str(srv.origin)) as vol:
            step = 16 << 20
            for off in range(0, size, step):
                await vol.write(off, os.urandom(min(step, size - off)))

    def ctl(*args: str) -> None:
        subprocess.run([str(BIN / "csnapctl"), "--control", str(srv.control), *args],
                       check=True, capture_output=True)

    try:
        asyncio.run(fill())
        ctl("create", "a")
        asyncio.run(write(rng.sample(range(chunks), chunks // 2)))
        ctl("create", "b")
        asyncio.run(write(rng.sample(range(chunks), chunks // 4)))
        out: dict[str, Any] = {"size": size, "chunk_size": chunk_size}
        for label, extra in (("incremental", ["--from", "a"]), ("full", [])):
            _cold(srv.store, srv.origin)
            t0 = time.perf_counter()
            subprocess.run([str(BIN / "csnap-diff"), "--to", "b", *extra, "--output",
                            os.devnull, "--origin", str(srv.origin), "--store", str(srv.store)],
                           env=env, check=True, capture_output=True)
            seconds = time.perf_counter() - t0
            nbytes = size if not extra else chunks // 2 * chunk_size
            # raw: the same number of bytes, sequentially, half from each device
            _cold(srv.store, srv.origin)
            raw = _raw_read([(srv.origin, nbytes // 2), (srv.store, nbytes // 2)])
            out[label] = {"bytes": nbytes, "seconds": round(seconds, 2),
                          "MiB_s": round(nbytes / seconds / 2**20, 1),
                          "raw_MiB_s": round(nbytes / raw / 2**20, 1),
                          "ratio": round(raw / seconds, 2)}
        return out
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark and print its figures as JSON lines."""
    p = argparse.ArgumentParser(prog="python -m csnap_bench.diff", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("query", help="change query time vs exceptions")
    q.add_argument("--exceptions", default="10000,100000,1000000")
    t = sub.add_parser("throughput", help="diff data throughput vs raw reads")
    t.add_argument("--size", default="1G")
    t.add_argument("--chunk-size", default="64K")
    p.add_argument("--dir", default=None, help="where to put the files (default: a temp dir)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.what == "query":
            for i, n in enumerate(int(x) for x in args.exceptions.split(",")):
                print(json.dumps(query_bench(n, Path(tmp) / f"q{i}")), flush=True)
        else:
            print(json.dumps(throughput_bench(parse_size(args.size), parse_size(args.chunk_size),
                                              Path(tmp) / "t")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
