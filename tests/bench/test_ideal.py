"""The ideal server answers every request the benchmark sends with a valid reply of the
right op, through the benchmark's own client (so csnapd and it are driven alike)."""

from __future__ import annotations

from pathlib import Path

import pytest

from csnap_bench.harness import run_closed_loop
from csnap_bench.ideal import IdealProc
from csnap_bench.workloads import (
    Fresh,
    close_all,
    connect_many,
    exception_read_op,
    first_touch_op,
    origin_read_op,
    rewrite_op,
)
from csnap_client.protocol import messages as m


@pytest.fixture
def ideal(tmp_path: Path):
    proc = IdealProc(tmp_path, 4096, 1 << 20, store_below=1 << 19)
    proc.start()
    yield proc
    proc.stop()


async def test_replies_are_valid_protocol(ideal):
    conn = await ideal.connect("origin")
    snap = await ideal.connect("s1")
    try:
        assert conn.info["chunk_size"] == 4096 and conn.info["snapshot"] is None
        assert snap.info["snapshot"]["name"] == "s1"
        replies = [await conn.call(m.query_write(0, [[5, 2]])),
                   await conn.call(m.ping(0)),
                   await snap.call(m.query_write(0, [[7, 1]])),
                   await snap.call(m.query_snapshot_read(0, [[3, 1], [(1 << 19) + 9, 2]]))]
        replies.append(await snap.call(m.finish_snapshot_read(0, replies[-1]["id"])))
        replies.append(await conn.call({"op": "NO_SUCH_OP", "id": 0}))
    finally:
        await close_all([conn, snap])
    ops = [r["op"] for r in replies]
    assert ops == ["WRITE_OK", "PONG", "SNAPSHOT_WRITE_OK", "SNAPSHOT_READ_OK", "FINISH_OK",
                   "ERROR"]
    read = replies[3]
    assert read["store"] == [[3, 1, 3]] and read["origin"] == [[(1 << 19) + 9, 2]]
    for reply in replies[:-1]:
        m.validate(reply)  # every reply is well formed by the protocol's own rules
    assert replies[-1]["code"] == 101


@pytest.mark.parametrize("name", ["rewrite", "exception", "origin", "first_touch"])
async def test_benchmark_workloads_run_against_it(ideal, name):
    factory = {"rewrite": rewrite_op((0, 4096)), "exception": exception_read_op((0, 4096)),
               "origin": origin_read_op((1 << 19, (1 << 19) + 4096)),
               "first_touch": first_touch_op(Fresh(0, 1 << 19))}[name]
    volume = "s1" if name in ("exception", "origin") else "origin"
    conns = await connect_many(ideal, 4, volume)
    try:
        res = await run_closed_loop(name, 4, factory(conns, 1), 5.0, 1, ideal.pid,
                                    max_ops=200)
    finally:
        await close_all(conns)
    assert res.ops == 200
